"""Seeds x hyperparameter grid -> one population: stacked hparams, member keys, member table.

A population is the unit of work: every member is one training run
with its own hyperparameters and its own key, and the whole population is vmapped inside one
jitted program. The member axis M is the leading axis of every per-member array.

Member keys: `key_m = fold_in(PRNGKey(seed_m), grid_index_m)`. Two
members differ in seed or in grid point, so no two members of a population share a key; the
same (seed, grid point) gives the same key in every run. The engine splits each member key
into its init / exploration / sampling / eval streams.

Swept hyperparameters an agent does not use (e.g. `alpha` for DQN in a sweep over agents)
are collapsed for that agent: its members take the base value and their column is left
empty in the results, so no compute is spent on duplicate members.

Placing a population on devices (and hosts) is klrl.sharding's job.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
import numpy as np

from klrl.config import Experiment
from klrl.errors import ConfigError

@dataclass(frozen=True)
class Member:
    """One row of the member table."""

    member: int                         # run-wide id (unique across agents)
    seed: int
    grid_index: int                     # index of the grid point within this agent's grid
    agent: str
    swept: dict[str, float | None]      # swept hparam name -> value (None: unused by agent)


@dataclass(frozen=True)
class Population:
    """One compiled population: one agent, grid x seeds members."""

    agent: str
    members: tuple[Member, ...]
    hparams: dict[str, np.ndarray]      # name -> float32 [M] (every HPARAMS entry)
    keys: np.ndarray                    # uint32 [M, 2]
    columns: tuple[str, ...]            # swept hparam names (same for every population of a run)

    @property
    def size(self) -> int:
        return len(self.members)


def member_keys(seeds, grid_indices) -> np.ndarray:
    """uint32 [M, 2]: fold_in(PRNGKey(seed_m), grid_index_m) for every member."""
    import jax

    seeds = np.asarray(seeds, dtype=np.uint32)
    grid = np.asarray(grid_indices, dtype=np.uint32)
    fn = jax.vmap(lambda s, g: jax.random.fold_in(jax.random.PRNGKey(s), g))
    return np.asarray(jax.device_get(fn(seeds, grid)), dtype=np.uint32)


def agent_grid(exp: Experiment, agent: str) -> list[dict[str, float]]:
    """The grid points (swept hparam -> value) for one agent, product in config order,
    restricted to the hparams the agent uses."""
    uses = exp.hparams_used(agent)
    swept = {n: v for n, v in exp.swept_hparams().items() if n in uses}
    names = list(swept)
    return [dict(zip(names, combo)) for combo in itertools.product(*(swept[n] for n in names))]


def build_population(exp: Experiment, agent: str, first_member: int = 0) -> Population:
    """Stack one agent's grid x seeds into a population (grid point outer, seed inner)."""
    grid = agent_grid(exp, agent)
    if not grid or not exp.seeds:
        raise ConfigError(f"sweep: got an empty grid for agent {agent!r}; allowed at least one member")
    columns = tuple(exp.swept_hparams())
    base = exp.hparam_base()
    members, rows = [], []
    for g, point in enumerate(grid):
        for seed in exp.seeds:
            swept = {c: point.get(c) for c in columns}
            members.append(Member(first_member + len(members), int(seed), g, agent, swept))
            rows.append({**base, **point})
    hparams = {n: np.asarray([r[n] for r in rows], dtype=np.float32) for n in base}
    keys = member_keys([m.seed for m in members], [m.grid_index for m in members])
    return Population(agent, tuple(members), hparams, keys, columns)


def build_populations(exp: Experiment) -> list[Population]:
    """One population per agent (in config order), with run-wide member ids."""
    # A swept hyperparameter that no agent of the experiment reads would silently collapse to
    # one grid point (e.g. agent.alpha with dqn): refuse it before anything runs.
    used = set().union(*(exp.hparams_used(a) for a in exp.agents))
    for name in exp.swept_hparams():
        if name not in used:
            raise ConfigError(f"sweep.{exp.schema.key_of(name)}: got a sweep that none of the agents "
                              f"({', '.join(exp.agents)}) uses with these settings; allowed "
                              f"{', '.join(sorted(exp.schema.key_of(n) for n in used))}")
    pops, nxt = [], 0
    for agent in exp.agents:
        pop = build_population(exp, agent, first_member=nxt)
        pops.append(pop)
        nxt += pop.size
    return pops
