"""A CPU stand-in for C++ emulator pools (envpool, ALE's vector env), for testing the engine.

Why: the trainer must work with pools that live on the host, take no PRNG keys, reset only
by a host call, auto-reset on the NEXT step, cannot be vmapped and cannot be checkpointed.
`NumpyPool` is such a pool in pure numpy (CartPole-v1 and the finite MDPs of
`klrl.envs.tabular_env`), and `PoolEnv` puts it behind the `klrl.envs.base.Env` protocol
exactly as an envpool backend would, so every code path the engine takes for a real pool
can be exercised on CPU without Atari.

Semantics (those of `klrl.envs.base`, i.e. envpool's):
- `NumpyPool.reset(seeds)` starts every environment, seeding one `numpy.random.Generator`
  per environment (`default_rng(seed)`); all later randomness of that environment (its
  start states, its transitions) comes from that generator only, so a trajectory depends
  on its seed and its actions alone.
- `NumpyPool.step(actions)` steps ALL environments once (envpool's synchronous mode,
  `batch_size == num_envs`: `send(actions, env_id=arange(N))` followed by `recv()`) and
  returns the results in env-id order. `PoolEnv` flattens [members, envs] row-major, so
  environment (m, e) is env id `m * envs + e`.
- Next-step autoreset: a step that ends an episode (terminated or truncated) returns the
  observation the episode ended in; the next step of that environment ignores its action,
  starts a new episode and returns its first observation with reward 0, terminated =
  truncated = False, valid = False. Every other step has valid = True.
- `terminated` is a true terminal state; `truncated` the time limit (`max_episode_steps`
  valid steps), reported only when the step did not also terminate.
- `reward == raw_reward` (float32, no clipping); `episode_return` / `episode_length` are the
  running raw return and number of valid steps of the current episode, so on the done step
  they are the totals of the episode that just ended (0 on an autoreset step).

CartPole-v1 is the classic cart-pole (Barto, Sutton & Anderson 1983) with gym's constants
and Euler integration; it is computed in float64 (as envpool does) and observed in float32.

`PoolEnv` (the `Env` protocol through klrl.envs.host_pool.HostPoolEnv: `in_graph_reset =
False`, `checkpointable = False`):
- `reset(keys)` is a HOST call with concrete keys (uint32 [M, E, 2], or typed PRNG keys of
  that batch shape). Environment (m, e) gets the seed `(k0 << 32) | k1` from its key words
  `(k0, k1) = keys[m, e]`: an injective map, so distinct keys give distinct generators. It
  first waits for every pending host callback (`jax.effects_barrier`), so a reset never
  interleaves with steps of a program still running.
- `step(state, actions, keys)` is traceable (jit, scan, while); it ignores `keys` and calls
  the pool through `jax.experimental.io_callback(..., ordered=True)`: the pool is stateful,
  so its calls must run once each, in program order, and never be removed as dead code or
  duplicated. `state` is a `PoolState(instance, steps)` of int32 scalars. `instance` names
  the pool (a process-wide registry, as an emulator's handle is its address), so one traced
  program can step several pools: under `shard_map` each device shard passes its own pool's
  state (klrl.sharding). `steps` is the number of pool steps since the last reset; it threads
  the steps of one program into a chain, and the host checks it (a count that does not match
  the pool's means a stale state was replayed, which a pool cannot do, and raises).
- Not vmappable: one pool steps all its environments in one call, so a batch axis over
  pools has no meaning. `step` passes its arguments through the host pools' identity guard
  (klrl.envs.host_pool.vmap_guard, a `jax.custom_batching.custom_vmap`) whose batching rule
  raises `PoolVmapError` with a one-line message, before shape checks or the callback (whose
  own rule would only say "Cannot `vmap` ordered IO callback."). Build ONE
  `PoolEnv(name, members, envs)` instead.
- Not checkpointable: the environment states live in the host process, outside every
  pytree; nothing of them can be saved. A resumed run must call `reset` again (new
  episodes, fresh seeds) and start the token from the `state` it returns.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from klrl.envs.base import Backend, EnvSpec, EnvStep
from klrl.envs.host_pool import HostPoolEnv
from klrl.envs.tabular_env import TABULAR_ENVS, _episode_cap, tabular_mdp, tabular_spec

CARTPOLE = "CartPole-v1"
POOL_ENVS: tuple[str, ...] = (CARTPOLE,) + tuple(TABULAR_ENVS)

# Cart-pole physics (gym's CartPole-v1 constants).
GRAVITY = 9.8
MASS_CART = 1.0
MASS_POLE = 0.1
TOTAL_MASS = MASS_CART + MASS_POLE
HALF_LENGTH = 0.5                     # half the pole's length
POLE_MASS_LENGTH = MASS_POLE * HALF_LENGTH
FORCE_MAG = 10.0
TAU = 0.02                            # seconds per step
THETA_THRESHOLD = 12 * 2 * math.pi / 360
X_THRESHOLD = 2.4
CARTPOLE_MAX_STEPS = 500
CARTPOLE_INIT_BOUND = 0.05


def cartpole_step(state: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One Euler step of cart-pole for a batch: state float [N, 4] = (x, x_dot, theta,
    theta_dot), actions [N] in {0 (push left), 1 (push right)} -> (next state float64 [N, 4],
    terminated bool [N]: |x| > 2.4 or |theta| > 12 degrees after the step)."""
    state = np.asarray(state, np.float64)
    x, x_dot, theta, theta_dot = state.T
    force = np.where(np.asarray(actions) == 1, FORCE_MAG, -FORCE_MAG)
    cos, sin = np.cos(theta), np.sin(theta)
    temp = (force + POLE_MASS_LENGTH * theta_dot ** 2 * sin) / TOTAL_MASS
    theta_acc = (GRAVITY * sin - cos * temp) / (
        HALF_LENGTH * (4.0 / 3.0 - MASS_POLE * cos ** 2 / TOTAL_MASS))
    x_acc = temp - POLE_MASS_LENGTH * theta_acc * cos / TOTAL_MASS
    nxt = np.stack([x + TAU * x_dot, x_dot + TAU * x_acc,
                    theta + TAU * theta_dot, theta_dot + TAU * theta_acc], axis=-1)
    terminated = (np.abs(nxt[:, 0]) > X_THRESHOLD) | (np.abs(nxt[:, 2]) > THETA_THRESHOLD)
    return nxt, terminated


class NumpyPool:
    """A host-side batch of `num_envs` environments `name` (one of `POOL_ENVS`) with
    envpool's synchronous semantics (see the module docstring).

    `mdp` / `max_episode_steps` override the finite MDP and the time limit (tests: a
    stochastic MDP, a short cap). Attributes for inspection (and, in tests, for setting a
    physical state directly): `state` (CartPole: float64 [N, 4]; tabular: int64 [N] state
    ids), `t` (valid steps of the current episode), `steps` (pool steps since reset).
    """

    def __init__(self, name: str, num_envs: int, *, mdp=None, max_episode_steps: int | None = None):
        if name not in POOL_ENVS:
            raise ValueError(f"pool env: got {name!r}; allowed {', '.join(POOL_ENVS)}")
        if num_envs < 1:
            raise ValueError(f"pool env: num_envs must be >= 1, got {num_envs}")
        self.name = name
        self.num_envs = int(num_envs)
        self.tabular = name != CARTPOLE
        if self.tabular:
            mdp = tabular_mdp(name) if mdp is None else mdp
            self._r = np.asarray(mdp.r, np.float32)
            self._terminal = np.asarray(mdp.terminal, bool)
            # Cumulative successor probabilities for inverse-CDF sampling (float64).
            self._cdf = np.cumsum(np.asarray(mdp.P, np.float64), axis=-1)
            S, A = self._r.shape
            self.obs_shape: tuple[int, ...] = (S,)
            self.num_actions = int(A)
            cap = _episode_cap(name)
        else:
            self.obs_shape = (4,)
            self.num_actions = 2
            cap = CARTPOLE_MAX_STEPS
        self.max_episode_steps = int(cap if max_episode_steps is None else max_episode_steps)
        self._rngs: list[np.random.Generator] | None = None
        self.state: np.ndarray | None = None
        self.steps = 0

    # -- episodes -------------------------------------------------------------------------
    def _start(self, i: int) -> None:
        """Begin a new episode in environment i (its start state from its own generator)."""
        if self.tabular:
            self.state[i] = 0
        else:
            self.state[i] = self._rngs[i].uniform(-CARTPOLE_INIT_BOUND, CARTPOLE_INIT_BOUND, size=4)
        self.t[i] = 0
        self._ret[i] = 0.0
        self._len[i] = 0

    def _obs(self) -> np.ndarray:
        if self.tabular:
            return np.eye(self.obs_shape[0], dtype=np.float32)[self.state]
        return self.state.astype(np.float32)

    def reset(self, seeds) -> np.ndarray:
        """Seed and start every environment -> first observations float32 [N, *obs_shape]."""
        seeds = [int(s) for s in np.asarray(seeds, dtype=object).reshape(-1)]
        if len(seeds) != self.num_envs:
            raise ValueError(f"NumpyPool.reset: {len(seeds)} seeds for {self.num_envs} envs")
        N = self.num_envs
        self._rngs = [np.random.default_rng(s) for s in seeds]
        self.state = np.zeros(N, np.int64) if self.tabular else np.zeros((N, 4), np.float64)
        self.t = np.zeros(N, np.int64)
        self._ret = np.zeros(N, np.float64)
        self._len = np.zeros(N, np.int64)
        self._needs_reset = np.zeros(N, bool)
        for i in range(N):
            self._start(i)
        self.steps = 0
        return self._obs()

    def step(self, actions) -> EnvStep:
        """Step every environment once (actions int [N]) -> `EnvStep` of numpy arrays [N]."""
        if self._rngs is None:
            raise RuntimeError("NumpyPool.step called before reset")
        a = np.asarray(actions)
        if a.shape != (self.num_envs,) or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"NumpyPool.step: actions must be int [{self.num_envs}], "
                             f"got {a.dtype} {a.shape}")
        if a.size and (a.min() < 0 or a.max() >= self.num_actions):
            raise ValueError(f"NumpyPool.step: actions must lie in [0, {self.num_actions}), "
                             f"got [{a.min()}, {a.max()}]")
        N = self.num_envs
        resetting = self._needs_reset
        live = ~resetting
        reward = np.zeros(N, np.float32)
        terminated = np.zeros(N, bool)
        idx = np.flatnonzero(live)
        if idx.size:
            if self.tabular:
                s, act = self.state[idx], a[idx]
                u = np.array([self._rngs[i].random() for i in idx])
                cdf = self._cdf[s, act]                                     # [n, S]
                nxt = (cdf <= (u * cdf[:, -1])[:, None]).sum(-1)           # first index with cdf > u
                nxt = np.minimum(nxt, self.obs_shape[0] - 1)
                reward[idx] = self._r[s, act]
                terminated[idx] = self._terminal[nxt]
                self.state[idx] = nxt
            else:
                nxt, term = cartpole_step(self.state[idx], a[idx])
                self.state[idx] = nxt
                reward[idx] = 1.0
                terminated[idx] = term
            self.t[idx] += 1
            self._ret[idx] += reward[idx]
            self._len[idx] += 1
        truncated = live & (self.t >= self.max_episode_steps) & ~terminated
        for i in np.flatnonzero(resetting):
            self._start(i)
        self._needs_reset = terminated | truncated
        self.steps += 1
        return EnvStep(obs=self._obs(), reward=reward, raw_reward=reward.copy(),
                       terminated=terminated, truncated=truncated, valid=live.copy(),
                       episode_return=self._ret.astype(np.float32),
                       episode_length=self._len.astype(np.int32), episode_end=terminated | truncated)


class PoolState(NamedTuple):
    """The traced state of a `PoolEnv`: which pool (its registry id) and its steps since reset."""

    instance: jax.Array   # int32 scalar
    steps: jax.Array      # int32 scalar


_POOLS: dict[int, "PoolEnv"] = {}     # registry id -> pool (this process's pools)
_IDS = itertools.count()


class PoolEnv(HostPoolEnv):
    """`NumpyPool` behind the `Env` protocol for [members, envs] (see the module docstring)."""

    def __init__(self, name: str, members: int, envs: int, *, mdp=None,
                 max_episode_steps: int | None = None):
        super().__init__(pool_spec(name, mdp, max_episode_steps), members, envs, label=f"PoolEnv({name!r})",
                         factory="PoolEnv(name, members, envs)")
        self.instance = next(_IDS)
        _POOLS[self.instance] = self
        self.pool = NumpyPool(name, self.members * self.envs, mdp=mdp, max_episode_steps=max_episode_steps)

    def reset(self, keys) -> tuple[PoolState, jax.Array]:
        """Host call: keys uint32 [M, E, 2] -> (PoolState(this pool, 0), obs float32 [M, E, *obs_shape])."""
        obs = self.pool.reset(self.host_seeds(keys))
        state = PoolState(jnp.int32(self.instance), jnp.int32(0))
        return state, jnp.asarray(self.unflatten(obs))

    @staticmethod
    def _host_step(instance, steps, actions) -> tuple[np.ndarray, ...]:
        env = _POOLS[int(instance)]
        pool, steps = env.pool, int(steps)
        if steps != pool.steps:
            raise RuntimeError(f"PoolEnv({env.spec.name!r}): stale state token {steps}, the pool "
                               f"has taken {pool.steps} steps since reset (a pool cannot "
                               f"replay or restore states; checkpointable=False)")
        a = np.asarray(actions)
        if a.shape != env.lead:
            raise RuntimeError(f"PoolEnv({env.spec.name!r}): pool {int(instance)} serves {list(env.lead)} envs, "
                               f"got actions {list(a.shape)}")
        out = pool.step(a.reshape(-1))
        return (np.int32(pool.steps),) + tuple(env.unflatten(x) for x in out)

    def step(self, state: PoolState, actions: jax.Array, keys: jax.Array) -> tuple[PoolState, EnvStep]:
        """Step the pool `state.instance` once (actions int32 [M, E]; it must serve the same
        [M, E] and spec as this one); traceable, not vmappable; `keys` is ignored (it passes
        the vmap guard only)."""
        state, actions = self.guard(state, actions, keys)
        lead = self.lead
        f32 = lambda shape=lead: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
        b = jax.ShapeDtypeStruct(lead, jnp.bool_)
        result = (jax.ShapeDtypeStruct((), jnp.int32), f32(lead + self.spec.obs_shape), f32(), f32(),
                  b, b, b, f32(), jax.ShapeDtypeStruct(lead, jnp.int32), b)
        steps, *fields = io_callback(self._host_step, result, jnp.asarray(state.instance, jnp.int32),
                                     jnp.asarray(state.steps, jnp.int32), actions.astype(jnp.int32), ordered=True)
        return PoolState(state.instance, steps), EnvStep(*fields)


def pool_spec(name: str, mdp=None, max_episode_steps: int | None = None) -> EnvSpec:
    """The spec of pool env `name` without building a pool (the tabular MDPs' is the in-graph one)."""
    if name not in POOL_ENVS:
        raise ValueError(f"pool env: got {name!r}; allowed {', '.join(POOL_ENVS)}")
    if name != CARTPOLE:
        return tabular_spec(name, mdp, max_episode_steps)
    cap = CARTPOLE_MAX_STEPS if max_episode_steps is None else max_episode_steps
    return EnvSpec(name=name, obs_shape=(4,), obs_dtype=jnp.float32, num_actions=2, max_episode_steps=int(cap))


POOL = Backend("pool", PoolEnv.traits, lambda: POOL_ENVS, lambda name, options: pool_spec(name),
               lambda name, members, envs, options: PoolEnv(name, members, envs))


__all__ = ["CARTPOLE", "POOL", "POOL_ENVS", "NumpyPool", "PoolEnv", "PoolState", "cartpole_step", "pool_spec"]
