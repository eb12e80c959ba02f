"""A finite MDP of `klrl.tabular` as an in-graph environment behind the `Env` protocol.

Observations are one-hot state vectors [S] (float32); every episode starts in state 0 (the
root of `tree_mdp`, the head of `chain_mdp`); a transition samples s' ~ P(·|s, a) (exact for
the deterministic MDPs), pays r(s, a), terminates when s' is terminal and is truncated at
`max_episode_steps`. Finished environments auto-reset on the next step (klrl.envs.in_graph).

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
import jax
import jax.numpy as jnp
import numpy as np

from klrl import rng
from klrl.envs.base import EnvSpec
from klrl.envs.in_graph import InGraphEnv, OneStep

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


def tabular_spec(name: str, mdp=None, max_episode_steps: int | None = None) -> EnvSpec:
    """The spec of MDP `name` (one-hot float32 observations [S], A actions, its episode cap)."""
    mdp = tabular_mdp(name) if mdp is None else mdp
    S, A = mdp.r.shape
    cap = _episode_cap(name) if max_episode_steps is None else max_episode_steps
    return EnvSpec(name=name, obs_shape=(int(S),), obs_dtype=jnp.float32, num_actions=int(A),
                   max_episode_steps=int(cap))


def tabular_env(name: str, members: int, envs: int, mdp=None, max_episode_steps: int | None = None) -> InGraphEnv:
    """[members, envs] copies of a finite MDP with one-hot observations (in-graph)."""
    mdp = tabular_mdp(name) if mdp is None else mdp
    spec = tabular_spec(name, mdp, max_episode_steps)
    # numpy here, jnp inside the trace: a closed-over jax.Array becomes a hoisted argument of the
    # program, which an ahead-of-time compiled chunk (`lower().compile()`) is then called without.
    P_np, r_np = np.asarray(mdp.P, np.float32), np.asarray(mdp.r, np.float32)
    terminal_np = np.asarray(mdp.terminal, bool)
    S, A = r_np.shape
    cap = spec.max_episode_steps
    one_hot = lambda s: jax.nn.one_hot(s, S, dtype=jnp.float32)  # noqa: E731

    def reset_one(key):
        s = jnp.zeros((), jnp.int32)
        return (s, jnp.zeros((), jnp.int32)), one_hot(s)

    def step_one(key, inner, action) -> OneStep:
        s, t = inner
        P, r, terminal = jnp.asarray(P_np), jnp.asarray(r_np), jnp.asarray(terminal_np)
        # log(0) = -inf excludes impossible successors; deterministic rows are exact.
        s_next = jax.random.categorical(rng.wrap(key), jnp.log(P[s, action])).astype(jnp.int32)
        terminated = terminal[s_next]
        truncated = (t + 1 >= cap) & ~terminated
        done = terminated | truncated
        s_reset = jnp.where(done, 0, s_next)
        return OneStep((s_reset, jnp.where(done, 0, t + 1)), one_hot(s_reset), one_hot(s_next),
                       r[s, action], terminated, truncated)

    return InGraphEnv(spec, members, envs, reset_one, step_one)


__all__ = ["TABULAR_ENVS", "tabular_env", "tabular_mdp", "tabular_spec"]
