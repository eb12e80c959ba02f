"""Environment backends behind one protocol (`klrl.envs.base.Env`), built for [members, envs].

Backends are a registry, `BACKENDS` (`env.backend` -> `klrl.envs.base.Backend`): each
declares the names it serves, its traits, its own options (a config section, or none), the
spec of a name computed without building anything (cached per process) and its factory.
`backend(name)` looks one up; `register_backend(b)` adds one (a test's, a user's) and
`unregister_backend(name)` removes it again (the built-in ones stay). A backend reads the Atari
`preset` exactly when its options section is `AtariOptions` (`takes_preset`).
- `jax` (klrl.envs.jax_backend): in-graph, vmappable, checkpointable: the gymnax 1.0.1
  classic-control and MinAtar games (MinAtar's binary planes stored as uint8) and the tabular
  MDPs of klrl.tabular with one-hot observations (`QSharpTree-v0`, `QSharpChain-v0`).
- `pool` (klrl.envs.pool): a numpy environment pool behind a host callback with envpool's
  semantics (host reset, no keys, next-step autoreset, refuses vmap, not checkpointable):
  CartPole-v1 and the tabular MDPs. It exists to test the engine the way an emulator pool
  will drive it.
- `ale` / `envpool` (klrl.envs.atari): Atari 2600 games through ale-py's vector env (extra
  `atari`) or envpool (extra `envpool`), both stepped through their XLA interfaces inside the
  program (host reset, next-step autoreset, refuse vmap, not checkpointable). Their options
  are `klrl.envs.atari.AtariOptions` (the protocol, a preset of `PRESETS`; default
  "dopamine"). Games are named in CamelCase (`Pong`, `Breakout`, `MsPacman`); the list is
  the backend's installed ROM set, read on first use (klrl never imports ale_py or envpool
  before an Atari env is asked for).
- `tokens` (klrl.envs.token_backend, klrl.stargraph.env): token MDPs, in-graph like `jax`: the star-graph task
  G(d, ℓ, N) (`StarGraph-d2-l5-n50`, …), state = the token prefix, action = the next token,
  terminal exact-match reward (docs/stargraph.md).
The host pools share klrl.envs.host_pool.HostPoolEnv.

Addressing by strings, as the [env] table does (`check_env`, `env_spec`, `make_env` with the
Atari `preset`), goes through the registry: `options_from(cfg.env)` gives the backend's
options of an [env] section.
"""

from __future__ import annotations

from typing import Any

from klrl.envs import atari as _atari
from klrl.envs.atari import ATARI_BACKENDS, DEFAULT_PRESET
from klrl.envs.base import Backend, Env, EnvSpec, EnvStep, EpisodeStats, Traits, stacked_shape
from klrl.envs.jax_backend import JAX, MINATAR, TABULAR
from klrl.envs.pool import POOL
from klrl.envs.token_backend import TOKENS
from klrl.errors import ConfigError

BACKENDS: dict[str, Backend] = {b.name: b for b in (JAX, POOL, _atari.ALE, _atari.ENVPOOL, TOKENS)}
_BUILT_IN = frozenset(BACKENDS)
PRESETS = tuple(_atari.PRESETS)
BACKEND_ENVS = {name: b.names() for name, b in BACKENDS.items()}   # Atari's: the installed ROMs, lazily
TRAITS: dict[str, Traits] = {name: b.traits for name, b in BACKENDS.items()}

__all__ = ["ATARI_BACKENDS", "BACKENDS", "BACKEND_ENVS", "DEFAULT_PRESET", "MINATAR", "PRESETS", "TABULAR",
           "TRAITS", "Backend", "Env", "EnvSpec", "EnvStep", "EpisodeStats", "Traits", "backend", "check_env",
           "env_spec", "make_env", "options_from", "register_backend", "stacked_shape", "takes_preset",
           "unregister_backend"]


def backend(name: str) -> Backend:
    """The registered backend `name` (ConfigError, one line, naming the allowed ones)."""
    if name not in BACKENDS:
        raise ConfigError(f"env.backend: got {name!r}; allowed {', '.join(BACKENDS)}")
    return BACKENDS[name]


def register_backend(b: Backend) -> Backend:
    """Add `b` to the registry under `b.name` (a name already taken is a ConfigError)."""
    if b.name in BACKENDS:
        raise ConfigError(f"env.backend: got {b.name!r}, already registered; allowed a new name")
    BACKENDS[b.name] = b
    BACKEND_ENVS[b.name] = b.names()
    TRAITS[b.name] = b.traits
    return b


def unregister_backend(name: str) -> None:
    """Remove a backend added by `register_backend` (the built-in ones stay)."""
    if name not in _BUILT_IN:
        for registry in (BACKENDS, BACKEND_ENVS, TRAITS):
            registry.pop(name, None)


def takes_preset(name: str) -> bool:
    """Whether backend `name` reads the Atari `preset` (its options are `AtariOptions`)."""
    b = BACKENDS.get(name)
    return b is not None and b.options is _atari.AtariOptions


def options_from(env: Any) -> Any:
    """The options of `env.backend` from an [env] section (anything with `backend` and
    `preset`): the Atari backends' from its key `env.preset`; None for the others."""
    return _atari.preset_options(env.preset) if takes_preset(env.backend) else None


def _addressed(name: str, backend_name: str, preset: str) -> tuple[Backend, Any]:
    """(backend, options) of the string address (name, backend, preset): the name is checked
    before the preset, which only the Atari backends read."""
    b = backend(backend_name)
    if not takes_preset(backend_name):
        return b, None
    b.check(name)
    return b, _atari.preset_options(preset)


def check_env(name: str, backend: str = "jax", preset: str = DEFAULT_PRESET) -> None:
    """ConfigError (one line) unless `backend` is known and serves `name`. `preset` (an Atari
    protocol, klrl.envs.atari.PRESETS) is checked for the Atari backends and ignored by the
    others; for those, a missing extra or an unknown game (with its close matches) is named."""
    b, options = _addressed(name, backend, preset)
    b.check(name, options)


def env_spec(name: str, backend: str = "jax", preset: str = DEFAULT_PRESET) -> EnvSpec:
    """The static facts of an environment, without building a batch of it (`preset`: Atari only)."""
    b, options = _addressed(name, backend, preset)
    return b.spec(name, options)


def make_env(name: str, members: int, envs: int, backend: str = "jax", preset: str = DEFAULT_PRESET) -> Env:
    """The `backend` environment `name` for [members, envs] (one pool of members·envs for `pool`,
    `ale` and `envpool`; `preset` is the Atari protocol, ignored by the other backends)."""
    b, options = _addressed(name, backend, preset)
    return b.make(name, members, envs, options)
