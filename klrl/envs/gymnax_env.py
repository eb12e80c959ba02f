"""gymnax backend of the `VecEnv` interface (gymnax 1.0: six-value `step`)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from klrl.envs.base import EnvSpec, EnvStep, EpisodeStats


class GymnaxState(NamedTuple):
    inner: Any              # the gymnax env state pytree, batched
    stats: EpisodeStats


class GymnaxVecEnv:
    """A batch of gymnax environments with any leading shape, stepped in one vmap.

    gymnax 1.0's `step` returns `obs, state, reward, terminated, truncated, info` and already
    auto-resets (`obs` is post-reset, `info["final_observation"]` the pre-reset observation).
    This adapter only relabels those values into `EnvStep`, casts observations to the storage
    dtype, and keeps running episode returns.
    """

    def __init__(self, name: str, spec: EnvSpec, env: Any, params: Any):
        self.name = name
        self.spec = spec
        self._env = env
        self._params = params

    def _cast(self, obs: jax.Array) -> jax.Array:
        return obs.astype(self.spec.obs_dtype)

    def _flat(self, fn, *xs, batch_shape):
        """Apply a per-env function over a flattened batch, restore the leading shape."""
        n = int(np.prod(batch_shape)) if batch_shape else 1
        flat = [jax.tree.map(lambda x: x.reshape((n,) + x.shape[len(batch_shape):]), x) for x in xs]
        out = jax.vmap(fn)(*flat)
        return jax.tree.map(lambda x: x.reshape(batch_shape + x.shape[1:]), out)

    def reset(self, keys: jax.Array) -> tuple[GymnaxState, jax.Array]:
        batch_shape = keys.shape[:-1]
        obs, inner = self._flat(lambda k: self._env.reset(k, self._params), keys, batch_shape=batch_shape)
        stats = EpisodeStats(ret=jnp.zeros(batch_shape, jnp.float32), length=jnp.zeros(batch_shape, jnp.int32))
        return GymnaxState(inner, stats), self._cast(obs)

    def step(self, state: GymnaxState, actions: jax.Array, keys: jax.Array) -> tuple[GymnaxState, EnvStep]:
        batch_shape = actions.shape

        def one(k, s, a):
            obs, s2, reward, terminated, truncated, info = self._env.step(k, s, a, self._params)
            return obs, s2, reward, terminated, truncated, info["final_observation"]

        obs, inner, reward, terminated, truncated, final_obs = self._flat(
            one, keys, state.inner, actions, batch_shape=batch_shape)
        reward = reward.astype(jnp.float32)
        terminated = terminated.astype(bool)
        truncated = truncated.astype(bool) & ~terminated
        done = terminated | truncated
        ep_ret = state.stats.ret + reward
        ep_len = state.stats.length + 1
        stats = EpisodeStats(ret=jnp.where(done, 0.0, ep_ret), length=jnp.where(done, 0, ep_len))
        out = EnvStep(obs=self._cast(obs), next_obs=self._cast(final_obs), reward=reward,
                      terminated=terminated, truncated=truncated,
                      episode_return=ep_ret, episode_length=ep_len)
        return GymnaxState(inner, stats), out
