"""Atari 2600 games (the Arcade Learning Environment) behind the `klrl.envs.base.Env` protocol.

Two backends, one semantics:
- `ale`: ale-py 0.12.1's C++ vector env (`ale_py.vector_env.AtariVectorEnv`, extra `atari`),
- `envpool`: envpool 1.2.5's Atari pool (extra `envpool`, ~300 MB installed).
Both are stepped through their XLA interfaces (typed FFI calls registered with `jax.ffi`, run
inside the compiled program; `envs.xla()` -> `handle, xla_reset, xla_step` for ale-py,
`env.xla()` -> `handle, recv, send, step` for envpool; the io_callback path of PoolEnv is not
needed). The handle, a uint8[8] copy of the C++ pool's address, is threaded through the env
state: each step consumes the previous step's handle and returns a new one, which orders the
steps of a program as a chain; the calls are declared side-effecting, so XLA never drops or
merges them.

Layout. ONE pool of members × envs environments (synchronous: batch_size == num_envs, so
results come back in env-id order), reshaped row-major to [M, E]: environment (m, e) is env
id m * E + e. Observations are ONE 84×84 grayscale frame, max-pooled over the last two of the
4 skipped frames, uint8 with a trailing channel axis `(84, 84, 1)`; the pool's own frame
stack is set to 1 and the engine stacks `EnvSpec.frame_stack = 4` frames itself (zero
padding at episode starts, klrl.replay.push_frame).

Options (`AtariOptions`, the backends' own config section): the protocol, a preset of
`PRESETS`; a cap overriding the preset's; the pools' worker threads. The registry's `ALE` and
`ENVPOOL` backends (klrl.envs.base.Backend) take them in place of any Atari argument of the
generic env functions.

Game names (`env.name`): CamelCase ROM names as Dopamine and envpool's task ids write them,
without any `-v5` suffix (the protocol is the preset's, not gymnasium's v5 defaults):
`Pong`, `Breakout`, `MsPacman`, `SpaceInvaders`, ... The list is the installed ROM set of
the backend (ale-py 0.12.1: 108 ROMs; envpool-assets 0.3.0: 104, without Combat, Joust,
MazeCraze and Warlords), read from the package directories without importing either package.

Step semantics (those of `klrl.envs.base`; both pools run in NEXT_STEP autoreset mode):
- A step that ends the GAME (game over, or the preset's cap of `max_episode_steps` agent
  steps, i.e. 4× as many frames) returns the game's last frame; the next step of that
  environment is the pool's autoreset step: its action is ignored, it returns the new game's
  first frame, and here it has `valid = False`, reward 0, terminated = truncated = False.
- `terminated` = game over; with a life-loss-terminal preset also a lost life (the number of
  lives dropped and is still > 0, as Dopamine and envpool define it). A life loss does NOT
  end the game: the pools run with `episodic_life = False` (ale-py's episodic_life restarts
  the whole game at a life loss, envpool's continues it after a reset step of no-ops and
  FIRE; neither is what Dopamine's runner does), so the step after a life loss is an ordinary
  valid step of the same game, whose action is taken. The life-loss flag is computed here,
  from the pool's `lives` counter, identically for both backends.
- `truncated` = the episode cap was reached and the game did not end otherwise.
- `raw_reward` = the game's score change (float32); `reward` = sign(raw_reward) for learning
  (the pools' own clipping is off).
- Episode statistics are per GAME, never per life: `episode_return` / `episode_length` are the
  running raw score and number of valid steps of the current game at every step (0 on the
  autoreset step), so on the step that ends a game they are that game's totals. On a
  life-loss terminal step (presets `atari100k`, `fast`) they are the totals SO FAR of a game
  that goes on. The step's `episode_end` (klrl.envs.base) marks the steps that end a game
  (also kept in the env state as `game_end`, which makes the next step the autoreset one), so
  the engine averages `episode_return` per game, not per life (the same as where `done` for
  the presets whose life loss is not terminal).

Seeds. `reset(keys)` is a host call (`in_graph_reset = False`): environment (m, e) is seeded
with `seeds_from_keys(keys, bits=31)[m, e]` (the 64-bit seed of `klrl.envs.pool` folded to a
non-negative C `int`: both pools take 32-bit signed seeds). ale-py re-seeds every environment
at each reset; envpool only takes seeds when the pool is built, so its pool is built at the
FIRST reset and a later reset restarts every game without re-seeding (an XLA program is bound
to one envpool object: its address is baked into the compiled call). A reset first waits for
every pending computation (the pool must not be stepped and reset at the same time).

The host-pool glue (seeds, [M, E] layout, vmap refusal with `PoolVmapError`, the wait before a
reset) is klrl.envs.host_pool.HostPoolEnv's. Not checkpointable (the emulator states live in
C++; a resumed run re-resets), and a stale state cannot be detected: the handle is only an
address, so replaying an old state steps the pool from where it is.

Known differences between the backends (same preset): envpool always plays one more no-op
frame at a game start than ale-py (its count is 1 + U{0..noop_max-1}, ale-py's U{0..noop_max-1},
both minus one when FIRE is pressed), and presses FIRE after the no-ops where ale-py presses it
before them. The emulators agree (envpool 1.2.5 bundles ALE 0.11.2; same ROMs; identical
rewards and lives step for step from the same start frame), but one start frame matters: with
no-op starts off (`dopamine`, `machado`, `atari100k`), random play in Breakout lasts 178 steps
on ale and 205 on envpool (scores 1.1 vs 1.7); with random no-op starts (`fast`) the backends
agree (tests/test_atari_backends_slow.py). ale-py is the faithful one for Dopamine's protocol,
which has no start no-ops.
"""

from __future__ import annotations

import collections.abc
import difflib
import functools
import importlib.util
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from klrl.envs.base import Backend, EnvSpec, EnvStep
from klrl.envs.host_pool import HostPoolEnv, wait_for_pending_programs
from klrl.errors import ConfigError
from klrl.sections import Section, choice, ranged

ATARI_BACKENDS = ("ale", "envpool")
FRAME = (84, 84, 1)          # one grayscale frame, trailing channel axis
SEED_BITS = 31               # the pools' seeds are C ints; negative means "do not re-seed" to ale-py
EXTRAS = {"ale": ("atari", ("ale_py", "gymnasium")), "envpool": ("envpool", ("envpool", "envpool_assets"))}


class AtariPreset(NamedTuple):
    """An Atari evaluation protocol (pool settings; the agent side clips rewards to their sign)."""

    name: str
    repeat_action_probability: float  # sticky actions
    full_action_space: bool            # all 18 actions, or the game's minimal set
    life_loss_terminal: bool           # `terminated` at a life loss (the game goes on)
    noop_max: int                      # no-op frames at a game start: U{0..noop_max-1} (ale-py); >= 1
    fire_reset: bool                   # press FIRE at a game start (games that have it)
    max_episode_steps: int             # cap in agent steps (frames = frame_skip ×)
    frame_skip: int = 4                # frames per agent step (max-pool over the last two)
    frame_stack: int = 4               # frames the engine stacks into one observation
    source: str = ""


PRESETS: dict[str, AtariPreset] = {
    # Dopamine's Atari protocol, as the M-DQN paper (Vieillard et al. 2020) ran it: Dopamine's
    # `create_atari_environment(sticky_actions=True)` (repeat_action_probability 0.25, the
    # minimal action set) + `AtariPreprocessing(frame_skip=4, terminal_on_life_loss=False,
    # screen_size=84)` + the runner's `max_steps_per_episode=27000` (108,000 frames); no no-op
    # starts, no FIRE at reset. (envpool needs noop_max >= 1 for "off": it then plays 1 no-op.)
    "dopamine": AtariPreset("dopamine", 0.25, False, False, 1, False, 27_000,
                            source="Dopamine / M-DQN (Vieillard et al. 2020)"),
    # Machado et al. 2018 ("Revisiting the Arcade Learning Environment"), the recommended
    # settings: sticky actions 0.25, the full 18-action set, no life-loss signal, no no-op
    # starts; the cap as in Dopamine (108,000 frames).
    "machado": AtariPreset("machado", 0.25, True, False, 1, False, 27_000,
                           source="Machado et al. 2018"),
    # Atari 100k as Dopamine's lab runs it (dopamine/labs/atari_100k): no sticky actions,
    # terminal on life loss, the 27,000-step cap, minimal action set, no no-ops, no FIRE.
    "atari100k": AtariPreset("atari100k", 0.0, False, True, 1, False, 27_000,
                             source="Dopamine's Atari-100k lab (Kaiser et al. 2020 benchmark)"),
    # PQN-style fast setting (Gallici et al. 2024, envpool's defaults): no sticky actions,
    # minimal set, life loss terminal, up to 30 no-ops and FIRE at a game start, 27,000-step
    # cap. Unlike envpool's `episodic_life`, FIRE is not pressed again after a lost life.
    "fast": AtariPreset("fast", 0.0, False, True, 30, True, 27_000,
                        source="PQN (Gallici et al. 2024) / envpool defaults"),
}


DEFAULT_PRESET = "dopamine"


@dataclass(frozen=True)
class AtariOptions(Section):
    """[env.atari]: the Atari backends' own keys (frozen and hashable: a spec cache key)."""

    SECTION: ClassVar[str] = "env.atari"
    preset: str = choice(DEFAULT_PRESET, PRESETS, doc="the protocol (klrl.envs.atari.PRESETS)")
    max_episode_steps: int = ranged(0, lo=0, doc="cap in agent steps; 0: the preset's")
    num_threads: int = ranged(0, lo=0, doc="the pool's worker threads; 0: one per core")

    @property
    def protocol(self) -> AtariPreset:
        """The preset, with this cap where one is set."""
        p = PRESETS[self.preset]
        return p._replace(max_episode_steps=self.max_episode_steps) if self.max_episode_steps else p


def preset_options(preset: str) -> AtariOptions:
    """The options of protocol `preset` (its key is `env.preset` in today's [env] table)."""
    if preset not in PRESETS:
        raise ConfigError(f"env.preset: got {preset!r}; allowed {', '.join(PRESETS)}")
    return AtariOptions(preset=preset)


# ---- names, extras, validation (no import of ale_py / envpool) ----------------------------------

def _package_dir(module: str) -> str | None:
    """The directory of an installed top-level package, without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


@functools.lru_cache(maxsize=None)
def missing_packages(backend: str) -> tuple[str, ...]:
    """The packages of `backend`'s extra that are not installed (empty when it is usable)."""
    return tuple(m for m in EXTRAS[backend][1] if importlib.util.find_spec(m) is None)


def camel(rom: str) -> str:
    """ALE ROM id -> game name: `ms_pacman` -> `MsPacman` (as envpool's task ids, less `-v5`)."""
    return "".join(part.capitalize() for part in rom.split("_"))


@functools.lru_cache(maxsize=None)
def installed_roms(backend: str) -> dict[str, str]:
    """Game name -> ROM id for every ROM the backend's package ships ({} if not installed)."""
    if missing_packages(backend):
        return {}
    base = _package_dir("ale_py" if backend == "ale" else "envpool_assets")
    rom_dir = os.path.join(base, "roms") if backend == "ale" else os.path.join(base, "atari", "roms")
    try:
        roms = sorted(f[:-4] for f in os.listdir(rom_dir) if f.endswith(".bin"))
    except OSError:
        return {}
    return {camel(r): r for r in roms}


class GameList(collections.abc.Sequence):
    """The game names of one Atari backend, read on first use (BACKEND_ENVS's entry)."""

    def __init__(self, backend: str):
        self.backend = backend

    def _names(self) -> tuple[str, ...]:
        return tuple(installed_roms(self.backend))

    def __getitem__(self, i):
        return self._names()[i]

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, name) -> bool:
        return name in installed_roms(self.backend)

    def __iter__(self):
        return iter(self._names())

    def __repr__(self) -> str:
        return f"GameList({self.backend!r}: {len(self)} games)"


def _normal(name: str) -> str:
    return re.sub(r"-v\d+$", "", str(name)).replace("_", "").replace("-", "").lower()


def check(name: str, backend: str, options: AtariOptions | None = None, *,
          missing: tuple[str, ...] | None = None) -> None:
    """ConfigError (one line) unless the backend's extra is installed and it ships the game
    (`options`, already checked by their section, take no part). Nothing is built. `missing`:
    the extra's packages to report as not installed (default: `missing_packages(backend)`)."""
    missing = missing_packages(backend) if missing is None else missing
    if missing:
        extra = EXTRAS[backend][0]
        raise ConfigError(f"env.backend: got {backend!r}, which needs {', '.join(missing)} (not installed); "
                          f"install with pip install -e '.[{extra}]'")
    games = installed_roms(backend)
    if name not in games:
        exact = [g for g in games if _normal(g) == _normal(name)]
        close = exact or difflib.get_close_matches(str(name), list(games), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else "no close match"
        raise ConfigError(f"env.name: got {name!r}; {hint} (backend {backend}: {len(games)} installed "
                          f"Atari games, CamelCase ROM names as Dopamine's: Pong, Breakout, MsPacman, ...)")


@functools.lru_cache(maxsize=None)
def _minimal_actions(name: str, backend: str) -> int:
    rom = installed_roms(backend)[name]
    if backend == "ale":
        import ale_py
        from ale_py import roms

        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
        ale = ale_py.ALEInterface()
        ale.loadROM(roms.get_rom_path(rom))
        return len(ale.getMinimalActionSet())
    import envpool

    return int(envpool.make_spec(f"{name}-v5", full_action_space=False).action_space.n)


def atari_spec(name: str, backend: str, options: AtariOptions) -> EnvSpec:
    """The static facts of game `name` under `options` (loads the ROM once per process to
    count the minimal action set; builds no pool)."""
    p = options.protocol
    num_actions = 18 if p.full_action_space else _minimal_actions(name, backend)
    return EnvSpec(name=name, obs_shape=FRAME, obs_dtype=jnp.uint8, num_actions=num_actions,
                   max_episode_steps=p.max_episode_steps, frame_stack=p.frame_stack)


# ---- the two pools (flat: N = members × envs environments) ----------------------------------------

class _AlePool:
    """ale-py's AtariVectorEnv, reset on the host, stepped through `xla_step`."""

    def __init__(self, rom: str, num_envs: int, p: AtariPreset, num_threads: int):
        from ale_py.vector_env import AtariVectorEnv

        self.env = AtariVectorEnv(
            rom, num_envs, batch_size=num_envs, num_threads=num_threads, autoreset_mode="NextStep",
            max_num_frames_per_episode=p.max_episode_steps * p.frame_skip,
            repeat_action_probability=p.repeat_action_probability, full_action_space=p.full_action_space,
            img_height=FRAME[0], img_width=FRAME[1], grayscale=True, stack_num=1, frameskip=p.frame_skip,
            maxpool=True, noop_max=p.noop_max, episodic_life=False, life_loss_info=False,
            reward_clipping=False, use_fire_reset=p.fire_reset)
        self.num_actions = int(self.env.single_action_space.n)
        handle, _xla_reset, self._xla_step = self.env.xla()
        self.handle = np.asarray(handle)

    def reset(self, seeds: np.ndarray):
        obs, info = self.env.reset(seed=np.asarray(seeds, np.int64))
        return self.handle, np.asarray(obs)[:, 0], np.asarray(info["lives"], np.int32)

    def step(self, handle, actions):
        handle, (obs, reward, terminated, truncated, info) = self._xla_step(handle, actions)
        # ale-py: terminated = game over (life_loss_info off); truncated = cap and not game over
        return handle, obs[:, 0], reward, terminated, truncated & ~terminated, info["lives"]


class _EnvpoolPool:
    """envpool's Atari pool (gymnasium API, sync mode), built at the first reset (seeds are
    construction arguments), stepped through its XLA `step` (send + recv)."""

    def __init__(self, name: str, num_envs: int, p: AtariPreset, num_threads: int):
        self.task = f"{name}-v5"
        self.num_envs = num_envs
        self.kwargs = dict(
            env_type="gymnasium", num_envs=num_envs, batch_size=num_envs, num_threads=num_threads,
            max_episode_steps=p.max_episode_steps, repeat_action_probability=p.repeat_action_probability,
            full_action_space=p.full_action_space, img_height=FRAME[0], img_width=FRAME[1], gray_scale=True,
            stack_num=1, frame_skip=p.frame_skip, noop_max=max(1, p.noop_max), episodic_life=False,
            zero_discount_on_life_loss=False, reward_clip=False, use_fire_reset=p.fire_reset)
        self.pool = None
        self.seeds: list[int] | None = None

    def reset(self, seeds: np.ndarray):
        if self.pool is None:
            import envpool

            self.seeds = [int(s) for s in seeds]
            self.pool = envpool.make(self.task, seed=self.seeds, **self.kwargs)
            handle, _recv, _send, self._xla_step = self.pool.xla()
            self.handle = np.asarray(handle)
        obs, info = self.pool.reset()
        return self.handle, np.asarray(obs)[:, 0], np.asarray(info["lives"], np.int32)

    def step(self, handle, actions):
        if self.pool is None:
            raise RuntimeError(f"envpool {self.task}: step before the first reset (the pool is built "
                               f"by reset, which takes the seeds)")
        handle, (obs, reward, terminated, truncated, info) = self._xla_step(handle, actions)
        game_over = info["terminated"].astype(bool)   # envpool's gymnasium `terminated` is done & ~trunc
        done = terminated | truncated
        return handle, obs[:, 0], reward, game_over, done & ~game_over, info["lives"]


# ---- the Env --------------------------------------------------------------------------------

def make_pool(name: str, backend: str, num_envs: int, preset: AtariPreset, num_threads: int) -> Any:
    """The emulator pool of game `name` on `backend` (AtariEnv's default `pool_factory`)."""
    if backend == "ale":
        return _AlePool(installed_roms(backend)[name], num_envs, preset, num_threads)
    return _EnvpoolPool(name, num_envs, preset, num_threads)


class AtariState(NamedTuple):
    """The traced env state, every field but `handle` of shape [M, E]."""

    handle: jax.Array    # uint8[8]: the pool's address, threaded from step to step
    game_end: jax.Array  # bool: the last step ended a game (so the next one is its autoreset step)
    lives: jax.Array     # int32: lives after the last step
    ret: jax.Array       # float32: raw score of the current game so far
    length: jax.Array    # int32: valid steps of the current game so far


class AtariEnv(HostPoolEnv):
    """Game `name` for [members, envs] on `backend` ("ale" or "envpool") under `options`
    (default: AtariOptions(); see the module docstring). `pool_factory(name, backend, num_envs,
    preset, num_threads)` builds the emulator pool (default `make_pool`)."""

    seed_bits = SEED_BITS

    def __init__(self, name: str, members: int, envs: int, *, backend: str = "ale",
                 options: AtariOptions | None = None, pool_factory: Callable[..., Any] | None = None):
        if backend not in ATARI_BACKENDS:
            raise ConfigError(f"env.backend: got {backend!r}; allowed {', '.join(ATARI_BACKENDS)}")
        check(name, backend)
        options = AtariOptions() if options is None else options
        super().__init__(atari_spec(name, backend, options), members, envs,
                         label=f"AtariEnv({name!r}, backend {backend})",
                         factory=f"klrl.envs.backend({backend!r}).make(name, members, envs)")
        self.backend, self.preset = backend, options.protocol
        N = self.members * self.envs
        self.pool: Any = (pool_factory or make_pool)(name, backend, N, self.preset, options.num_threads)
        if backend == "ale":
            assert self.pool.num_actions == self.spec.num_actions, (self.pool.num_actions, self.spec)

    def barrier(self) -> None:
        """FFI calls are not JAX effects: wait for every live array too."""
        wait_for_pending_programs()

    def reset(self, keys) -> tuple[AtariState, jax.Array]:
        """Host call: keys uint32 [M, E, 2] -> (state, first frames uint8 [M, E, 84, 84, 1])."""
        handle, obs, lives = self.pool.reset(np.asarray(self.host_seeds(keys), np.int64))
        zeros = jnp.zeros(self.lead, jnp.int32)
        state = AtariState(handle=jnp.asarray(handle), game_end=jnp.zeros(self.lead, bool),
                           lives=jnp.asarray(self.unflatten(lives)), ret=jnp.zeros(self.lead, jnp.float32),
                           length=zeros)
        return state, jnp.asarray(self.unflatten(obs, FRAME))

    def step(self, state: AtariState, actions: jax.Array, keys: Any = None) -> tuple[AtariState, EnvStep]:
        """Step every environment once (actions int32 [M, E]); traceable, not vmappable; `keys`
        is ignored (it passes the vmap guard only)."""
        state, actions = self.guard(state, actions, keys)
        handle, obs, reward, game_over, cap, lives = self.pool.step(
            state.handle, actions.reshape(-1).astype(jnp.int32))
        shape = lambda x: self.unflatten(x, ())  # noqa: E731
        game_over, cap, lives = shape(game_over).astype(bool), shape(cap).astype(bool), shape(lives).astype(jnp.int32)
        valid = ~state.game_end                      # the step after a game's end is the pool's autoreset
        raw = jnp.where(valid, shape(reward).astype(jnp.float32), 0.0)
        game_over = game_over & valid
        cap = cap & valid & ~game_over
        terminated = game_over
        if self.preset.life_loss_terminal:
            terminated = terminated | (valid & (lives < state.lives) & (lives > 0))
        ret = jnp.where(valid, state.ret + raw, 0.0)
        length = jnp.where(valid, state.length + 1, 0)
        new = AtariState(handle=handle, game_end=game_over | cap, lives=lives, ret=ret, length=length)
        return new, EnvStep(obs=self.unflatten(obs, FRAME), reward=jnp.sign(raw), raw_reward=raw,
                            terminated=terminated, truncated=cap, valid=valid, episode_return=ret,
                            episode_length=length, episode_end=game_over | cap)


def _backend(name: str) -> Backend:
    """The registry entry of Atari backend `name` (its games: the installed ROMs, read lazily)."""
    return Backend(name, AtariEnv.traits, functools.partial(GameList, name),
                   lambda game, options: atari_spec(game, name, options),
                   lambda game, members, envs, options: AtariEnv(game, members, envs, backend=name, options=options),
                   options=AtariOptions, check_name=lambda game, options: check(game, name, options))


ALE, ENVPOOL = _backend("ale"), _backend("envpool")

__all__ = ["ALE", "ATARI_BACKENDS", "DEFAULT_PRESET", "ENVPOOL", "AtariEnv", "AtariOptions", "AtariPreset",
           "AtariState", "GameList", "PRESETS", "atari_spec", "camel", "check", "installed_roms",
           "make_pool", "missing_packages", "preset_options"]
