"""gymnax backend (gymnax 1.0: six-value `step`) as an in-graph env with next-step autoreset."""

from __future__ import annotations

from typing import Any

import jax

from klrl import rng
from klrl.envs.base import EnvSpec
from klrl.envs.in_graph import InGraphEnv, OneStep


def gymnax_env(spec: EnvSpec, env: Any, params: Any, members: int, envs: int) -> InGraphEnv:
    """[members, envs] copies of a gymnax environment.

    gymnax 1.0's `step` returns `obs, state, reward, terminated, truncated, info` and already
    resets (`obs` is post-reset, `info["final_observation"]` the observation reached), which
    is exactly `OneStep`.
    """

    def reset_one(key: jax.Array):
        obs, inner = env.reset(rng.wrap(key), params)
        return inner, obs

    def step_one(key: jax.Array, inner: Any, action: jax.Array) -> OneStep:
        obs, inner, reward, terminated, truncated, info = env.step(rng.wrap(key), inner, action, params)
        return OneStep(inner, obs, info["final_observation"], reward, terminated, truncated)

    return InGraphEnv(spec, members, envs, reset_one, step_one)
