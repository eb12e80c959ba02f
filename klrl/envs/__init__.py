"""Environment adapters behind one small batched interface (`klrl.envs.base.VecEnv`).

`ENVS` lists the environment ids the trainer accepts; `make_env(name)` builds the adapter.
All are gymnax 1.0.1 environments (in-graph, jit/vmap-able). The MinAtar games gymnax 1.0.1
ships are Asterix, Breakout, Freeway, Seaquest and SpaceInvaders; their binary observation
planes are stored as uint8.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from klrl.envs.base import EnvSpec, EnvStep, EpisodeStats, VecEnv
from klrl.errors import ConfigError

CLASSIC = ("CartPole-v1", "Acrobot-v1", "MountainCar-v0")
MINATAR = ("Asterix-MinAtar", "Breakout-MinAtar", "Freeway-MinAtar", "Seaquest-MinAtar",
           "SpaceInvaders-MinAtar")
# qsharp: small finite MDPs of klrl.tabular with one-hot observations (exact answers known).
from klrl.envs.tabular_env import TABULAR_ENVS  # noqa: E402

TABULAR = tuple(TABULAR_ENVS)
ENVS: tuple[str, ...] = CLASSIC + MINATAR + TABULAR

__all__ = ["ENVS", "EnvSpec", "EnvStep", "EpisodeStats", "VecEnv", "make_env"]


@functools.lru_cache(maxsize=None)
def make_env(name: str) -> VecEnv:
    """The batched adapter for environment `name` (one of `ENVS`)."""
    if name not in ENVS:
        raise ConfigError(f"env: got {name!r}; allowed {', '.join(ENVS)}")
    if name in TABULAR:
        from klrl.envs.tabular_env import TabularVecEnv

        return TabularVecEnv(name)
    import gymnax

    from klrl.envs.gymnax_env import GymnaxVecEnv

    env, params = gymnax.make(name)
    obs_shape = tuple(env.observation_space(params).shape)
    pixels = name in MINATAR
    spec = EnvSpec(name=name, obs_shape=obs_shape,
                   obs_dtype=jnp.uint8 if pixels else jnp.float32,
                   num_actions=int(env.num_actions),
                   max_episode_steps=int(params.max_steps_in_episode), pixels=pixels)
    return GymnaxVecEnv(name, spec, env, params)
