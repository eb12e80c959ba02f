"""The `tokens` backend: token MDPs (klrl.stargraph.env), in-graph like `jax` (vmappable,
checkpointable, next-step autoreset). Its names come from klrl.stargraph.registry; specs and envs
from klrl.stargraph.env, imported on first use (it builds on klrl.envs).
No options."""

from __future__ import annotations

from klrl.envs.base import Backend
from klrl.envs.in_graph import InGraphEnv
from klrl.stargraph.registry import STAR_GRAPH_ENVS


def _names():
    return tuple(STAR_GRAPH_ENVS)


def _spec(name: str, options: None = None):
    from klrl.stargraph.env import registered_spec

    return registered_spec(name)


def _make(name: str, members: int, envs: int, options: None = None):
    from klrl.stargraph.env import registered_env

    return registered_env(name, members, envs)


TOKENS = Backend("tokens", InGraphEnv.traits, _names, _spec, _make)

__all__ = ["TOKENS"]
