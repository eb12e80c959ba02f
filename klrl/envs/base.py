"""The environment interface the learner sees: batched transitions, not an env object.

A `VecEnv` steps a whole batch of environments with any leading shape (the trainer uses
[M, E]: members x envs per member) in one call. The gymnax adapter implements it with a
flattened `vmap`; an envpool Atari pool (one C++ object of M*E envs stepped through its XLA
interface, which cannot be vmapped) can implement the same two functions by reshaping the
[M, E] actions to [M*E] and back. Nothing in the learner vmaps over environments.

Conventions (docs/ALGORITHMS.md, docs/ECOSYSTEM.md):
- `terminated` is a true end of the MDP (bootstrap with discount 0); `truncated` is a time
  limit (NOT termination: the learner bootstraps through it with γ).
- Environments auto-reset: `EnvStep.obs` is the observation to act on next (the first
  observation of a new episode after a reset), `EnvStep.next_obs` is the observation that
  the transition actually led to (pre-reset), which is what the target bootstraps from.
- The adapter tracks running episode returns: `episode_return` / `episode_length` hold the
  totals of the episode that ended at this step (meaningful where `done`).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import jax


class EnvSpec(NamedTuple):
    """Static facts about an environment (hashable; used to build shapes)."""

    name: str
    obs_shape: tuple[int, ...]
    obs_dtype: Any            # storage dtype of observations (uint8 for binary MinAtar planes)
    num_actions: int
    max_episode_steps: int    # time limit (truncation), also the cap of evaluation episodes
    pixels: bool              # image observations [H, W, C] (CNN) vs vectors (MLP)


class EnvStep(NamedTuple):
    """One batched transition, every field with the batch's leading shape."""

    obs: jax.Array             # next observation to act on (post auto-reset)
    next_obs: jax.Array        # observation reached by the transition (pre-reset)
    reward: jax.Array          # float32
    terminated: jax.Array      # bool: true terminal state, discount 0
    truncated: jax.Array       # bool: time limit, bootstrap through it
    episode_return: jax.Array  # float32: return of the episode that just ended (where done)
    episode_length: jax.Array  # int32: its length (where done)

    @property
    def done(self) -> jax.Array:
        return self.terminated | self.truncated


class EpisodeStats(NamedTuple):
    """Running totals of the current episode of each environment (part of the env state)."""

    ret: jax.Array     # float32
    length: jax.Array  # int32


class VecEnv(Protocol):
    """What the trainer needs from an environment backend."""

    spec: EnvSpec

    def reset(self, keys: jax.Array) -> tuple[Any, jax.Array]:
        """keys uint32 [*batch, 2] -> (state, obs [*batch, *obs_shape])."""

    def step(self, state: Any, actions: jax.Array, keys: jax.Array) -> tuple[Any, EnvStep]:
        """Step every environment once, auto-resetting finished ones."""
