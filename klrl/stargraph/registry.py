"""The registered token MDPs: env name -> the task and the fixed dataset its episodes are drawn
from (served by the `tokens` backend, klrl.envs.token_backend; built by klrl.stargraph.env).
Kept apart from the env so that the backend can list its names without importing klrl.envs."""

from __future__ import annotations

from typing import NamedTuple

from klrl.stargraph.graphs import StarGraphTask


class TokenEnvSource(NamedTuple):
    """A registered token MDP: its task and the dataset its episodes are drawn from."""

    task: StarGraphTask
    split: str = "posttrain"
    size: int = 200_000
    seed: int = 0


STAR_GRAPH_ENVS: dict[str, TokenEnvSource] = {
    "StarGraph-d2-l5-n50": TokenEnvSource(StarGraphTask(2, 5, 50)),
    "StarGraph-d5-l5-n50": TokenEnvSource(StarGraphTask(5, 5, 50)),
    "StarGraph-d3-l8-n50": TokenEnvSource(StarGraphTask(3, 8, 50)),
    "StarGraph-d2-l3-n8": TokenEnvSource(StarGraphTask(2, 3, 8), size=1_000),   # tests
}


__all__ = ["STAR_GRAPH_ENVS", "TokenEnvSource"]
