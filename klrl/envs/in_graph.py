"""In-graph backends (gymnax, tabular MDPs): pure, vmappable, checkpointable, next-step autoreset.

A backend describes ONE environment with two pure functions, `reset_one(key)` and
`step_one(key, inner, action)`; the latter resets a finished episode in the same call
(gymnax 1.0 does) and returns the observation the episode ended in separately. `InGraphEnv`
maps them over a flattened [M, E] batch and turns that same-step reset into the pools'
next-step autoreset (klrl.envs.base): the step that ends an episode returns its final
observation and remembers the new episode's first one; the next step ignores its action and
returns that first observation with `valid = False`. So every backend, in-graph or host pool,
gives the trainer the same stream, and the replay stores each observation once.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from klrl.envs.base import EnvSpec, EnvStep, EpisodeStats, Traits


class OneStep(NamedTuple):
    """What `step_one` returns for a single environment (same-step reset)."""

    inner: Any               # state to continue from (already reset when the episode ended)
    obs: jax.Array           # observation of `inner` (a new episode's first when done)
    final_obs: jax.Array     # observation the transition reached (pre-reset)
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array


class InGraphState(NamedTuple):
    inner: Any               # backend state, leaves [M, E, ...]
    pending: jax.Array       # bool [M, E]: the previous step ended an episode; this one resets
    first_obs: jax.Array     # [M, E, *obs]: the new episode's first observation (where pending)
    stats: EpisodeStats


def _where(mask: jax.Array, a: Any, b: Any) -> Any:
    """Per-env select over pytrees whose leaves lead with mask's shape."""
    return jax.tree.map(lambda x, y: jnp.where(_expand(mask, x), x, y), a, b)


class InGraphEnv:
    """[M, E] copies of one environment given by `reset_one` / `step_one` (see module docstring)."""

    traits = Traits(in_graph_reset=True, checkpointable=True)

    def __init__(self, spec: EnvSpec, members: int, envs: int,
                 reset_one: Callable[[jax.Array], tuple[Any, jax.Array]],
                 step_one: Callable[[jax.Array, Any, jax.Array], OneStep]):
        self.spec, self.members, self.envs = spec, members, envs
        self._reset_one, self._step_one = reset_one, step_one

    def _cast(self, obs: jax.Array) -> jax.Array:
        return obs.astype(self.spec.obs_dtype)

    @staticmethod
    def _flat(fn, *xs):
        """Apply a per-env function over [M, E]-leading inputs (flattened into one vmap)."""
        lead = jax.tree.leaves(xs[0])[0].shape[:2]
        flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), xs)
        out = jax.vmap(fn)(*flat)
        return jax.tree.map(lambda x: x.reshape(lead + x.shape[1:]), out)

    def reset(self, keys: jax.Array) -> tuple[InGraphState, jax.Array]:
        inner, obs = self._flat(self._reset_one, keys)
        lead = keys.shape[:2]
        obs = self._cast(obs)
        stats = EpisodeStats(ret=jnp.zeros(lead, jnp.float32), length=jnp.zeros(lead, jnp.int32))
        return InGraphState(inner, jnp.zeros(lead, bool), obs, stats), obs

    def step(self, state: InGraphState, actions: jax.Array, keys: jax.Array) -> tuple[InGraphState, EnvStep]:
        out = self._flat(self._step_one, keys, state.inner, actions)
        pending = state.pending
        reward = jnp.where(pending, 0.0, out.reward.astype(jnp.float32))
        terminated = out.terminated.astype(bool) & ~pending
        truncated = out.truncated.astype(bool) & ~terminated & ~pending
        done = terminated | truncated
        # A pending env does not advance: it keeps its (already reset) state and shows the new
        # episode's first observation; the step just computed for it is discarded.
        inner = _where(pending, state.inner, out.inner)
        obs = jnp.where(_expand(pending, out.obs), state.first_obs, self._cast(out.final_obs))
        ep_ret = state.stats.ret + reward
        ep_len = state.stats.length + (~pending).astype(jnp.int32)
        stats = EpisodeStats(ret=jnp.where(done, 0.0, ep_ret), length=jnp.where(done, 0, ep_len))
        new = InGraphState(inner, done, jnp.where(_expand(done, out.obs), self._cast(out.obs), state.first_obs), stats)
        return new, EnvStep(obs=obs, reward=reward, raw_reward=reward, terminated=terminated, truncated=truncated,
                            valid=~pending, episode_return=ep_ret, episode_length=ep_len, episode_end=done)


def _expand(mask: jax.Array, x: jax.Array) -> jax.Array:
    """mask [M, E] with trailing singleton axes to broadcast against x [M, E, ...]."""
    return mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
