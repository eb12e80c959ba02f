"""The environment protocol the trainer sees: one backend instance serves [M, E] environments.

Backends differ in who resets and whether they can be traced, vmapped or checkpointed; they
agree on ONE step semantics, the one C++ emulator pools (envpool, ALE's vector env) have:

- Next-step autoreset. A step that ends an episode (`terminated` or `truncated`) returns the
  observation the episode ended in. The NEXT step of that environment ignores its action,
  starts a new episode and returns its first observation with reward 0, terminated =
  truncated = False and `valid = False`: it is not a transition and must not be learned
  from. Every other step has `valid = True`. In-graph backends (gymnax, tabular) emulate
  this, so the replay stores each observation once (the next observation of slot t is the
  observation stored at t + 1) whatever the backend.
- `terminated` is a true end of the MDP (bootstrap with discount 0); `truncated` a time
  limit (NOT termination: the learner bootstraps through it with γ).
- `reward` is what the agent learns from (e.g. clipped on Atari), `raw_reward` what is
  reported; `episode_return` / `episode_length` are the raw totals of the reported episode
  where `episode_end` (= `done`, except on Atari with a life-loss-terminal preset, where
  learning sees a terminal at every lost life but scores are per game).

Capabilities are declared, never probed (`Traits`, declared once by each Env class and read
through its `Backend` without building anything):
- `in_graph_reset`: True for gymnax/tabular (reset is a pure function of keys, inside the
  compiled program); False for host pools, whose `reset` is a host call with concrete keys
  (the seeds are derived from them) made once before the program starts.
- `checkpointable`: whether the env state can be saved and restored (pools: no; a resumed
  run re-resets them, see klrl.runner).

A `Backend` is the declaration of one `env.backend`: the names it serves, its traits, its
own options (a config section, or none), the spec of a name computed without building an
env (cached), and the factory of its Env. klrl.envs keeps them in its `BACKENDS` registry.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, NamedTuple, Protocol, Sequence

import jax

from klrl.errors import ConfigError


class EnvSpec(NamedTuple):
    """Static facts about an environment (hashable; used to build shapes)."""

    name: str
    obs_shape: tuple[int, ...]  # ONE frame as the backend returns it
    obs_dtype: Any              # storage dtype (uint8 for binary MinAtar planes and pixels)
    num_actions: int
    max_episode_steps: int      # time limit (truncation), also the cap of evaluation episodes
    frame_stack: int = 1        # frames the agent stacks along the last axis (Atari: 4)


def stacked_shape(spec: EnvSpec) -> tuple[int, ...]:
    """The agent's observation shape: `frame_stack` frames concatenated on the last axis."""
    return spec.obs_shape[:-1] + (spec.obs_shape[-1] * spec.frame_stack,)


class EnvStep(NamedTuple):
    """One batched step, every field with the batch's leading shape [M, E]."""

    obs: jax.Array             # observation after the step (a new episode's first on an autoreset step)
    reward: jax.Array          # float32, for learning
    raw_reward: jax.Array      # float32, reported
    terminated: jax.Array      # bool: true terminal state, discount 0
    truncated: jax.Array       # bool: time limit, bootstrap through it
    valid: jax.Array           # bool: False on an autoreset step (not a transition)
    episode_return: jax.Array  # float32: raw return of the episode so far (its total where episode_end)
    episode_length: jax.Array  # int32: its length in valid steps (likewise)
    episode_end: jax.Array     # bool: the episode whose statistics are reported ended here. `done`
                               # everywhere but Atari's life-loss presets, whose `terminated` marks
                               # a lost life while the game (the reported episode) goes on

    @property
    def done(self) -> jax.Array:
        return self.terminated | self.truncated


class EpisodeStats(NamedTuple):
    """Running totals of the current episode of each environment (part of an in-graph env state)."""

    ret: jax.Array     # float32
    length: jax.Array  # int32


class Traits(NamedTuple):
    """A backend's declared capabilities (see the module docstring)."""

    in_graph_reset: bool
    checkpointable: bool


class Env(Protocol):
    """What the trainer needs from an environment backend built for [members, envs]."""

    traits: ClassVar[Traits]
    spec: EnvSpec
    members: int
    envs: int

    def reset(self, keys: jax.Array) -> tuple[Any, jax.Array]:
        """keys uint32 [M, E, 2] -> (state, obs [M, E, *obs_shape]); host call when not in_graph_reset."""

    def step(self, state: Any, actions: jax.Array, keys: jax.Array) -> tuple[Any, EnvStep]:
        """Step every environment once (actions int32 [M, E]); pools ignore `keys`."""


@dataclass(frozen=True)
class Backend:
    """One environment backend, declared (reading it builds and imports nothing).

    name: its `env.backend` value; traits: its Env class's `Traits`;
    list_names() -> the names it serves (a sequence, possibly read lazily);
    compute_spec(name, options) -> EnvSpec without building an env (called through `spec`,
      which caches it per (backend, name, options): an Atari ROM is read once per process);
    build(name, members, envs, options) -> its Env for [members, envs];
    options: its config section class (a frozen, hashable `klrl.sections.Section` holding
      the backend's own keys), or None when it has none; `options=None` below means that
      section's defaults;
    check_name(name, options): its own name check (an installed extra, close matches) in
      place of the plain "one of names()" check.
    """

    name: str
    traits: Traits
    list_names: Callable[[], Sequence[str]]
    compute_spec: Callable[[str, Any], EnvSpec]
    build: Callable[[str, int, int, Any], Any]
    options: type | None = None
    check_name: Callable[[str, Any], None] | None = None

    def names(self) -> Sequence[str]:
        return self.list_names()

    def resolve(self, options: Any = None) -> Any:
        """`options`, or the defaults of this backend's options section (None: it has none)."""
        if self.options is None:
            if options is not None:
                raise TypeError(f"backend {self.name} takes no options, got {options!r}")
            return None
        if options is None:
            return self.options()
        if not isinstance(options, self.options):
            raise TypeError(f"backend {self.name}: options must be a {self.options.__name__}, "
                            f"got {type(options).__name__}")
        return options

    def check(self, name: str, options: Any = None) -> None:
        """ConfigError (one line) unless this backend serves `name` (with `options`)."""
        options = self.resolve(options)
        if self.check_name is not None:
            self.check_name(name, options)
        elif name not in self.names():
            raise ConfigError(f"env.name: got {name!r}; allowed one of {', '.join(self.names())}"
                              f" (backend {self.name})")

    def spec(self, name: str, options: Any = None) -> EnvSpec:
        """The static facts of `name`, without building an env (cached per (name, options))."""
        options = self.resolve(options)
        self.check(name, options)
        return _cached_spec(self, name, options)

    def make(self, name: str, members: int, envs: int, options: Any = None) -> Env:
        """The Env `name` for [members, envs] (checked first: bad input builds nothing)."""
        options = self.resolve(options)
        self.check(name, options)
        return self.build(name, members, envs, options)


@functools.lru_cache(maxsize=None)
def _cached_spec(backend: Backend, name: str, options: Any) -> EnvSpec:
    return backend.compute_spec(name, options)
