"""The `jax` backend: in-graph (vmappable, checkpointable) environments.

The gymnax 1.0.1 classic-control games and MinAtar (its binary planes stored as uint8),
through klrl.envs.gymnax_env, and the finite MDPs of klrl.tabular with one-hot observations
(klrl.envs.tabular_env). All reset in-graph from keys and emulate the pools' next-step
autoreset (klrl.envs.in_graph). No options.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from klrl.envs.base import Backend, EnvSpec
from klrl.envs.in_graph import InGraphEnv
from klrl.envs.tabular_env import TABULAR_ENVS, tabular_env, tabular_spec

CLASSIC = ("CartPole-v1", "Acrobot-v1", "MountainCar-v0")
MINATAR = ("Asterix-MinAtar", "Breakout-MinAtar", "Freeway-MinAtar", "Seaquest-MinAtar",
           "SpaceInvaders-MinAtar")
TABULAR = tuple(TABULAR_ENVS)
NAMES = CLASSIC + MINATAR + TABULAR


@functools.lru_cache(maxsize=None)
def gymnax_parts(name: str):
    """(spec, env, params) of the gymnax environment `name` (one env object per process)."""
    import gymnax

    env, params = gymnax.make(name)
    spec = EnvSpec(name=name, obs_shape=tuple(env.observation_space(params).shape),
                   obs_dtype=jnp.uint8 if name in MINATAR else jnp.float32,
                   num_actions=int(env.num_actions), max_episode_steps=int(params.max_steps_in_episode))
    return spec, env, params


def jax_spec(name: str, options: None = None) -> EnvSpec:
    """The spec of a served name (a tabular MDP's from its arrays, a gymnax game's from gymnax)."""
    return tabular_spec(name) if name in TABULAR else gymnax_parts(name)[0]


def make_jax_env(name: str, members: int, envs: int, options: None = None) -> InGraphEnv:
    """[members, envs] copies of `name`, in-graph."""
    if name in TABULAR:
        return tabular_env(name, members, envs)
    from klrl.envs.gymnax_env import gymnax_env

    return gymnax_env(*gymnax_parts(name), members, envs)


JAX = Backend("jax", InGraphEnv.traits, lambda: NAMES, jax_spec, make_jax_env)

__all__ = ["CLASSIC", "JAX", "MINATAR", "NAMES", "TABULAR", "gymnax_parts", "jax_spec", "make_jax_env"]
