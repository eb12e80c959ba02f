"""A finite MDP of `klrl.tabular` as an in-graph environment behind the `VecEnv` interface.

Observations are one-hot state vectors [S] (float32); every episode starts in state 0 (the
root of `tree_mdp`, the head of `chain_mdp`); a transition samples s' ~ P(·|s, a) (exact for
the deterministic MDPs), pays r(s, a), terminates when s' is terminal and is truncated at
`max_episode_steps`. Finished environments auto-reset, as the gymnax adapter does.

The point is testing: the deep agents run on an environment whose exact answer is known
(`klrl.tabular.qsharp` computes it from the same `MDP` arrays, `tabular_mdp(name)`).

Registered ids (`TABULAR_ENVS`), all built from a fixed PRNG key so they are reproducible:
- `QSharpTree-v0`: `tree_mdp(depth=3, num_actions=3, leaf_rewards_only=True)` from
  PRNGKey(0): 13 decision nodes, 27 leaves with uniform [0, 1] outcome rewards, 3 steps
  per episode (the outcome-reward setting of LLM post-training, in miniature);
- `QSharpChain-v0`: `chain_mdp(length=5, num_actions=2)` from PRNGKey(0).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from klrl.envs.base import EnvSpec, EnvStep, EpisodeStats

# id -> (constructor name, keyword arguments, seed)
TABULAR_ENVS: dict[str, tuple[str, dict, int]] = {
    "QSharpTree-v0": ("tree", dict(depth=3, num_actions=3, leaf_rewards_only=True), 0),
    "QSharpChain-v0": ("chain", dict(length=5, num_actions=2), 0),
}


@functools.lru_cache(maxsize=None)
def tabular_mdp(name: str):
    """The float32 `klrl.tabular.MDP` behind environment `name` (numpy arrays)."""
    from klrl.tabular import chain_mdp, tree_mdp

    kind, kwargs, seed = TABULAR_ENVS[name]
    build = tree_mdp if kind == "tree" else chain_mdp
    with jax.default_device(jax.devices("cpu")[0]):
        mdp = build(jax.random.PRNGKey(seed), dtype=jnp.float32, **kwargs)
    return type(mdp)(*(np.asarray(x) for x in mdp))


def _episode_cap(name: str) -> int:
    kind, kwargs, _ = TABULAR_ENVS[name]
    return kwargs["depth"] if kind == "tree" else kwargs["length"]


class TabularState(NamedTuple):
    s: jax.Array        # int32 current state
    t: jax.Array        # int32 steps taken in the current episode
    stats: EpisodeStats


class TabularVecEnv:
    """A batch (any leading shape) of copies of one finite MDP with one-hot observations."""

    def __init__(self, name: str, mdp=None, max_episode_steps: int | None = None):
        mdp = tabular_mdp(name) if mdp is None else mdp
        self.name = name
        self._P = jnp.asarray(mdp.P, jnp.float32)
        self._r = jnp.asarray(mdp.r, jnp.float32)
        self._terminal = jnp.asarray(mdp.terminal, bool)
        S, A = self._r.shape
        cap = _episode_cap(name) if max_episode_steps is None else max_episode_steps
        self.spec = EnvSpec(name=name, obs_shape=(S,), obs_dtype=jnp.float32, num_actions=A,
                            max_episode_steps=int(cap), pixels=False)

    def _obs(self, s: jax.Array) -> jax.Array:
        return jax.nn.one_hot(s, self.spec.obs_shape[0], dtype=jnp.float32)

    def reset(self, keys: jax.Array) -> tuple[TabularState, jax.Array]:
        batch = keys.shape[:-1]
        s = jnp.zeros(batch, jnp.int32)
        stats = EpisodeStats(ret=jnp.zeros(batch, jnp.float32), length=jnp.zeros(batch, jnp.int32))
        return TabularState(s, jnp.zeros(batch, jnp.int32), stats), self._obs(s)

    def step(self, state: TabularState, actions: jax.Array, keys: jax.Array) -> tuple[TabularState, EnvStep]:
        s, a = state.s, actions.astype(jnp.int32)
        probs = self._P[s, a]                                            # [*batch, S]
        # log(0) = -inf excludes impossible successors; deterministic rows are exact.
        flat_keys = keys.reshape((-1,) + keys.shape[-1:])
        flat_logp = jnp.log(probs).reshape((-1, probs.shape[-1]))
        s_next = jax.vmap(jax.random.categorical)(flat_keys, flat_logp).reshape(s.shape).astype(jnp.int32)
        reward = self._r[s, a]
        terminated = self._terminal[s_next]
        t = state.t + 1
        truncated = (t >= self.spec.max_episode_steps) & ~terminated
        done = terminated | truncated
        ep_ret = state.stats.ret + reward
        ep_len = state.stats.length + 1
        s_reset = jnp.where(done, 0, s_next)
        new = TabularState(s_reset, jnp.where(done, 0, t),
                           EpisodeStats(jnp.where(done, 0.0, ep_ret), jnp.where(done, 0, ep_len)))
        out = EnvStep(obs=self._obs(s_reset), next_obs=self._obs(s_next), reward=reward,
                      terminated=terminated, truncated=truncated, episode_return=ep_ret,
                      episode_length=ep_len)
        return new, out


__all__ = ["TABULAR_ENVS", "TabularState", "TabularVecEnv", "tabular_mdp"]
