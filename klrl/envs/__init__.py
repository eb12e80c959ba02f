"""Environment backends behind one protocol (`klrl.envs.base.Env`), built for [members, envs].

Backends (`env.backend`):
- `jax`: in-graph, vmappable, checkpointable: the gymnax 1.0.1 classic-control and MinAtar
  games (MinAtar's binary planes stored as uint8) and the tabular MDPs of klrl.tabular with
  one-hot observations (`QSharpTree-v0`, `QSharpChain-v0`).
- `pool`: a numpy environment pool behind a host callback with envpool's semantics (host
  reset, no keys, next-step autoreset, refuses vmap, not checkpointable): CartPole-v1 and the
  tabular MDPs. It exists to test the engine the way an emulator pool will drive it.
- `ale` / `envpool`: Atari 2600 games through ale-py's vector env (extra `atari`) or envpool
  (extra `envpool`), both stepped through their XLA interfaces inside the program (host reset,
  next-step autoreset, refuse vmap, not checkpointable); the protocol is a preset of
  `klrl.envs.atari.PRESETS` (`preset=`, default "dopamine"). Games are named in CamelCase
  (`Pong`, `Breakout`, `MsPacman`); the list is the backend's installed ROM set, read on
  first use (klrl never imports ale_py or envpool before an Atari env is asked for).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax.numpy as jnp

from klrl.envs import atari as _atari
from klrl.envs.base import Env, EnvSpec, EnvStep, EpisodeStats, stacked_shape
from klrl.envs.tabular_env import TABULAR_ENVS
from klrl.errors import ConfigError

CLASSIC = ("CartPole-v1", "Acrobot-v1", "MountainCar-v0")
MINATAR = ("Asterix-MinAtar", "Breakout-MinAtar", "Freeway-MinAtar", "Seaquest-MinAtar",
           "SpaceInvaders-MinAtar")
TABULAR = tuple(TABULAR_ENVS)
ATARI_BACKENDS = _atari.BACKENDS
PRESETS = tuple(_atari.PRESETS)
DEFAULT_PRESET = "dopamine"
BACKEND_ENVS: dict[str, tuple[str, ...] | _atari.GameList] = {
    "jax": CLASSIC + MINATAR + TABULAR,
    "pool": ("CartPole-v1",) + TABULAR,
    **{b: _atari.GameList(b) for b in ATARI_BACKENDS},   # the installed ROMs, listed lazily
}
BACKENDS = tuple(BACKEND_ENVS)


class Traits(NamedTuple):
    """A backend's declared capabilities (the same as its Env instances' attributes)."""

    in_graph_reset: bool
    checkpointable: bool


TRAITS: dict[str, Traits] = {"jax": Traits(True, True), "pool": Traits(False, False),
                             "ale": Traits(False, False), "envpool": Traits(False, False)}
ENVS: tuple[str, ...] = BACKEND_ENVS["jax"]

__all__ = ["ATARI_BACKENDS", "BACKENDS", "BACKEND_ENVS", "DEFAULT_PRESET", "ENVS", "PRESETS", "TRAITS", "Traits",
           "Env", "EnvSpec", "EnvStep", "EpisodeStats", "check_env", "env_spec", "make_env", "stacked_shape"]


def check_env(name: str, backend: str = "jax", preset: str = DEFAULT_PRESET) -> None:
    """ConfigError (one line) unless `backend` is known and serves `name`. `preset` (an Atari
    protocol, klrl.envs.atari.PRESETS) is checked for the Atari backends and ignored by the
    others; for those, a missing extra or an unknown game (with its close matches) is named."""
    if backend not in BACKEND_ENVS:
        raise ConfigError(f"env.backend: got {backend!r}; allowed {', '.join(BACKENDS)}")
    if backend in ATARI_BACKENDS:
        _atari.check(name, backend, preset)
        return
    if name not in BACKEND_ENVS[backend]:
        raise ConfigError(f"env.name: got {name!r}; allowed one of {', '.join(BACKEND_ENVS[backend])}"
                          f" (backend {backend})")


@functools.lru_cache(maxsize=None)
def _gymnax(name: str):
    import gymnax

    env, params = gymnax.make(name)
    spec = EnvSpec(name=name, obs_shape=tuple(env.observation_space(params).shape),
                   obs_dtype=jnp.uint8 if name in MINATAR else jnp.float32,
                   num_actions=int(env.num_actions), max_episode_steps=int(params.max_steps_in_episode))
    return spec, env, params


def env_spec(name: str, backend: str = "jax", preset: str = DEFAULT_PRESET) -> EnvSpec:
    """The static facts of an environment, without building a batch of it (`preset`: Atari only)."""
    check_env(name, backend, preset)
    if backend in ATARI_BACKENDS:
        return _atari.atari_spec(name, backend, preset)
    if name in TABULAR:
        return make_env(name, 1, 1, "jax").spec   # the pool serves the same MDPs with the same spec
    return _gymnax(name)[0]


def make_env(name: str, members: int, envs: int, backend: str = "jax", preset: str = DEFAULT_PRESET) -> Env:
    """The `backend` environment `name` for [members, envs] (one pool of members·envs for `pool`,
    `ale` and `envpool`; `preset` is the Atari protocol, ignored by the other backends)."""
    check_env(name, backend, preset)
    if backend in ATARI_BACKENDS:
        return _atari.AtariEnv(name, members, envs, backend=backend, preset=preset)
    if backend == "pool":
        from klrl.envs.pool import PoolEnv

        return PoolEnv(name, members, envs)
    if name in TABULAR:
        from klrl.envs.tabular_env import tabular_env

        return tabular_env(name, members, envs)
    from klrl.envs.gymnax_env import gymnax_env

    return gymnax_env(*_gymnax(name), members, envs)
