"""What every host-pool backend shares: seeds from keys, the vmap refusal, the [M, E] layout.

A host pool (the numpy pool of klrl.envs.pool, ale-py's and envpool's emulator pools of
klrl.envs.atari) is ONE batch of N = members × envs environments living in the host process.
`HostPoolEnv` is the part of the `klrl.envs.base.Env` protocol they all implement the same way:

- Layout: environment (m, e) is pool env id m · E + e (row-major); flat [N] results come back
  as [M, E] (`unflatten`).
- Reset is a host call with concrete keys (`Traits(in_graph_reset=False)`): `host_seeds(keys)`
  turns the keys [M, E, 2] into one seed per environment (`seeds_from_keys`, with the pool's
  `seed_bits`), checks their batch shape and first waits for every program that may still
  step the pool (`barrier`): a pool must never be reset and stepped at the same time.
- Step is traceable but not vmappable: `guard(state, actions, keys)` passes the step's
  arguments through `vmap_guard`, whose batching rule raises `PoolVmapError` (one line)
  before any shape check or host call, then checks that the actions are [M, E].
- Not checkpointable (`Traits(checkpointable=False)`): the environment states live outside
  every pytree; a resumed run resets the pool again.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from klrl.envs.base import EnvSpec, Traits
from klrl.errors import ConfigError


class PoolVmapError(ValueError):
    """A pool-backed environment was put under `jax.vmap`."""


def seeds_from_keys(keys, *, bits: int = 64, caller: str = "PoolEnv.reset") -> np.ndarray:
    """Concrete keys (uint32 [..., 2] or typed PRNG keys) -> one seed per key, as Python ints in
    an object array of the keys' batch shape.

    bits = 64 (default): the seed is `(k0 << 32) | k1`, an injective map (distinct keys give
    distinct seeds). bits < 64: that 64-bit value is mixed by splitmix64's finalizer (a
    bijection of 64-bit words) and its top `bits` bits are kept, for pools whose seeds are
    C `int`s (ALE's vector env, envpool: bits = 31, so every seed is in [0, 2**31)). That map
    is not injective: two distinct keys share a seed with probability 2**-bits.
    `caller` names the host call in the error raised for traced keys."""
    if isinstance(keys, jax.core.Tracer):
        raise TypeError(f"{caller} is a host call (in_graph_reset=False): call it outside "
                        "jit/scan/vmap with concrete keys")
    if isinstance(keys, jax.Array) and jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
        keys = jax.random.key_data(keys)
    k = np.asarray(keys)
    if k.ndim < 1 or k.shape[-1] != 2 or not np.issubdtype(k.dtype, np.integer):
        raise ValueError(f"{caller}: keys must be uint32 [..., 2], got {k.dtype} {k.shape}")
    if not 1 <= bits <= 64:
        raise ValueError(f"seeds_from_keys: bits must be in [1, 64], got {bits}")
    k = k.astype(np.uint32).astype(np.uint64)
    seeds = (k[..., 0] << np.uint64(32)) | k[..., 1]
    if bits < 64:
        seeds = _splitmix64_mix(seeds) >> np.uint64(64 - bits)
    return np.vectorize(int, otypes=[object])(seeds) if seeds.size else seeds.astype(object)


def _splitmix64_mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's output function on uint64 words (Steele, Lea & Flood 2014; a bijection)."""
    x = np.asarray(x, np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def vmap_guard(message: str):
    """An identity on `(state, actions, keys)` (any pytrees) whose batching rule raises
    `PoolVmapError(message)`: a host pool steps all its environments in one call, so a batch
    axis over pools has no meaning. The refusal comes before any shape check or callback (an
    ordered io_callback would only say "Cannot `vmap` ordered IO callback.", and an XLA FFI
    call with vmap_method="broadcast_all" would silently step the pool once per batch element)."""

    @jax.custom_batching.custom_vmap
    def guard(state, actions, keys):
        return state, actions, keys

    @guard.def_vmap
    def _refuse(axis_size, in_batched, state, actions, keys):
        raise PoolVmapError(message)

    return guard


def wait_for_pending_programs() -> None:
    """Block until every dispatched computation has finished. XLA FFI calls are not JAX
    effects, so `effects_barrier` alone does not wait for them: wait on every live array as
    well (errors of earlier programs are theirs to report)."""
    jax.effects_barrier()
    for a in jax.live_arrays():
        try:
            a.block_until_ready()
        except Exception:  # noqa: BLE001
            pass


class HostPoolEnv:
    """Base of the host-pool backends (see the module docstring). A subclass calls
    `super().__init__(spec, members, envs, label, factory)` (`label` names the env and
    `factory` the call to use instead of a vmap, both in the vmap refusal), sets `seed_bits`
    to what its pool accepts and overrides `barrier` when its steps are not JAX effects."""

    traits: ClassVar[Traits] = Traits(in_graph_reset=False, checkpointable=False)
    seed_bits: ClassVar[int] = 64

    def __init__(self, spec: EnvSpec, members: int, envs: int, label: str, factory: str):
        for field, v in (("members", members), ("envs", envs)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{field}: got {v!r}; allowed an integer >= 1")
        self.spec, self.members, self.envs = spec, int(members), int(envs)
        self._guard = vmap_guard(f"{label} cannot be vmapped: a host pool steps all its environments in one "
                                 f"call; build one {factory} for the whole [members, envs] batch instead of "
                                 f"vmapping over members or envs")

    @property
    def lead(self) -> tuple[int, int]:
        return (self.members, self.envs)

    def barrier(self) -> None:
        """Wait for every program that may still step the pool (its steps are JAX effects)."""
        jax.effects_barrier()

    def host_seeds(self, keys) -> np.ndarray:
        """The host side of `reset`: concrete keys [M, E, 2] -> seeds as Python ints, flat [M·E]
        in env-id order, once no pending program can step the pool any more."""
        caller = f"{type(self).__name__}.reset"
        seeds = seeds_from_keys(keys, bits=self.seed_bits, caller=caller)
        if seeds.shape != self.lead:
            raise ValueError(f"{caller}: keys must have batch shape {list(self.lead)}, got {list(seeds.shape)}")
        self.barrier()
        return seeds.reshape(-1)

    def guard(self, state: Any, actions: Any, keys: Any) -> tuple[Any, jax.Array]:
        """The traced side of `step`: refuse a vmap (PoolVmapError), then -> (state, actions
        [M, E]) with the actions' shape checked (`keys` only passes the guard: pools take none)."""
        state, actions, keys = self._guard(state, actions, keys)
        actions = jnp.asarray(actions)
        if actions.shape != self.lead:
            raise ValueError(f"{type(self).__name__}.step: actions must have shape {list(self.lead)}, "
                             f"got {list(actions.shape)}")
        return state, actions

    def unflatten(self, x, tail: tuple[int, ...] | None = None):
        """A flat [M·E, ...] pool result as [M, E, *tail] (default tail: x's trailing axes;
        numpy stays numpy, traced stays traced)."""
        shape = self.lead + (tuple(x.shape[1:]) if tail is None else tuple(tail))
        return x.reshape(shape) if isinstance(x, np.ndarray) else jnp.reshape(x, shape)


__all__ = ["HostPoolEnv", "PoolVmapError", "seeds_from_keys", "vmap_guard", "wait_for_pending_programs"]
