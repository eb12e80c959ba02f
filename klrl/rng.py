"""JAX's own random numbers for raw threefry keys, from a straight-line threefry-2x32.

- `uniform_at(key, shape, index)`: `jax.random.uniform(key, shape).reshape(-1)[index]` bit for
  bit, hashing only the counters in `index`. The replay uses it to look at the first of its
  candidate slots per batch element and to draw the others only for the rare elements whose
  first candidate is not usable (klrl.replay).
- `split(key, num)` and `fold_in(key, data)`: `jax.random.split` / `jax.random.fold_in`, bit for
  bit, for the keys the trainer derives at every vector step and update.
- `THREEFRY` and `wrap(key)`: a JAX PRNG implementation (jax.extend.random) that is JAX's
  threefry with the hash below, and raw keys wrapped as its typed keys. Every jax.random
  function given a wrapped key, in klrl or in a library (gymnax's resets), returns what it
  returns for the raw key. Actors, in-graph envs and the losses that sample (IQN's
  fractions) draw through it.

Threefry-2x32 (Salmon, Moraes, Dror & Shaw 2011, "Parallel random numbers: as easy as 1, 2, 3",
SC'11) hashes a 64-bit counter (x0, x1) under a 64-bit key (k0, k1) in 20 rounds of

    x0 <- x0 + x1;  x1 <- rotl32(x1, R[r mod 8]) XOR x0,   R = (13, 15, 26, 6, 17, 29, 16, 24)

with the key injected before round 0 and after every 4 rounds (s = 1..5):

    x0 <- x0 + ks[s mod 3];  x1 <- x1 + ks[(s + 1) mod 3] + s,   ks = (k0, k1, k0 ^ k1 ^ 0x1BD11BDA)

(all arithmetic mod 2^32). Under `jax_threefry_partitionable` (JAX's default), the 32 random
bits of element i of a shape (flat row-major index i) are `y0 ^ y1` where
(y0, y1) = threefry2x32(key, (hi32(i), lo32(i))), and a uniform float32 in [0, 1) takes the 23
high bits as its mantissa: bitcast((bits >> 9) | 0x3F800000) - 1.

Why a second threefry: JAX hashes every counter of a shape at once, and on CPU lowers the
hash as a rolled 5-iteration `while` loop of small kernels (one loop per draw: five per vector
step of an ε-greedy gymnax run). Here each element's counter is
an input (so any subset can be hashed), and the 20 rounds are plain jnp ops that XLA fuses.

Fallback: where this formula does not give JAX's bits, each function returns JAX's own
(`uniform_at` indexes JAX's whole draw; THREEFRY calls JAX's threefry): `jax_threefry_partitionable`
set to False (a user flag; the non-partitionable layout splits counters differently) and 2^32
elements or more; for `split`, `fold_in` and `uniform_at` a key of another PRNG implementation
(typed or via `jax_default_prng_impl`) or not a raw uint32 [2] key (`wrap` returns such keys
unchanged); for `uniform_at` also `jax_enable_x64` (then JAX's default draw is float64 from
64-bit bits; THREEFRY gives those bits itself). Typed threefry keys get typed keys back from
`split` / `fold_in`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.extend
import jax.numpy as jnp
from jax import lax

ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)
PARITY = 0x1BD11BDA


def _rotl(x: jax.Array, r: int) -> jax.Array:
    """32-bit rotate left by a constant r in 1..31."""
    return lax.shift_left(x, jnp.uint32(r)) | lax.shift_right_logical(x, jnp.uint32(32 - r))


def threefry2x32(k0, k1, x0, x1) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32, 20 rounds (module docstring), unrolled. Arguments are uint32 values
    (Python ints in [0, 2^32) or arrays, converted to uint32) that broadcast together."""
    return _rounds(*(jnp.asarray(v, jnp.uint32) for v in (k0, k1, x0, x1)))


# Jitted so its ~120 ops are traced once per input shape, not at every draw: under vmap that
# per-draw tracing was a large share of lowering a trainer (tiny DQN 1.2 s -> 0.85 s). The
# compiled program is the same (XLA inlines the call).
@jax.jit
def _rounds(k0: jax.Array, k1: jax.Array, x0: jax.Array, x1: jax.Array) -> tuple[jax.Array, jax.Array]:
    ks = (k0, k1, k0 ^ k1 ^ jnp.uint32(PARITY))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for s in range(1, 6):                                # 5 blocks of 4 rounds each
        for r in range(4):
            x0 = x0 + x1
            x1 = _rotl(x1, ROTATIONS[(4 * (s - 1) + r) % 8]) ^ x0
        x0 = x0 + ks[s % 3]
        x1 = x1 + ks[(s + 1) % 3] + jnp.uint32(s)
    return x0, x1


def _typed(key: jax.Array) -> bool:
    """A typed key array (jax.random.key): split/fold_in return JAX's typed keys for it."""
    return jnp.issubdtype(key.dtype, jax.dtypes.prng_key)


def _raw_threefry_key(key: jax.Array) -> jax.Array | None:
    """uint32 [2] key data when `key` is a threefry key, else None (another PRNG impl)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if str(jax.random.key_impl(key)) != "threefry2x32":
            return None
        return jax.random.key_data(key)
    # Not a raw threefry key: JAX says what is wrong with it, or draws its own way.
    if (jax.config.jax_default_prng_impl != "threefry2x32" or key.shape != (2,)
            or key.dtype != jnp.uint32):
        return None
    return key


def _supported(key: jax.Array, shape: tuple[int, ...]) -> jax.Array | None:
    """The raw key when this module reproduces JAX's bits for (key, shape), else None."""
    if (not jax.config.jax_threefry_partitionable or jax.config.jax_enable_x64
            or math.prod(shape) >= 2**32):
        return None
    return _raw_threefry_key(key)


def _to_unit_float(b: jax.Array) -> jax.Array:
    """uint32 bits -> float32 in [0, 1): the 23 high bits as the mantissa of [1, 2), minus 1."""
    mantissa = lax.shift_right_logical(b, jnp.uint32(9)) | jnp.uint32(0x3F800000)
    return lax.bitcast_convert_type(mantissa, jnp.float32) - jnp.float32(1.0)


def uniform_at(key: jax.Array, shape: Sequence[int], index: jax.Array) -> jax.Array:
    """float32 like `index`: `jax.random.uniform(key, shape).reshape(-1)[index]`, hashing only
    the counters in `index` (int, each in [0, prod(shape)); an index outside gives some
    uniform float, never an error)."""
    shape = tuple(shape)
    raw = _supported(key, shape)
    if raw is None:
        flat = jax.random.uniform(key, shape).reshape(-1)
        return flat[jnp.clip(index, 0, flat.shape[0] - 1)]
    lo = index.astype(jnp.uint32)
    y0, y1 = threefry2x32(raw[0], raw[1], jnp.zeros_like(lo), lo)
    return _to_unit_float(y0 ^ y1)


def _hash_counters(key: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """(y0, y1) of `shape`: the hash under key data [2] of each element's counter (0, flat
    row-major index), the layout of split and random bits under the partitionable flag."""
    index = lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    return threefry2x32(key[0], key[1], jnp.zeros(shape, jnp.uint32), index)


def _jax_threefry(key: jax.Array) -> jax.Array:
    """`key` (uint32 [2]) as a typed key of JAX's own threefry implementation."""
    return jax.random.wrap_key_data(key, impl="threefry2x32")


def _partitionable(shape: tuple[int, ...] = ()) -> bool:
    """Whether the counters of `shape` are (0, flat index): JAX's default layout, under 2^32 elements."""
    return bool(jax.config.jax_threefry_partitionable) and math.prod(shape) < 2**32


def _split_data(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """uint32 [*shape, 2]: JAX's threefry split of key data [2] into `shape` subkeys."""
    if not _partitionable(shape):
        return jax.random.key_data(jax.random.split(_jax_threefry(key), shape))
    y0, y1 = _hash_counters(key, shape)
    return jnp.stack([y0, y1], axis=-1)


def _fold_in_data(key: jax.Array, data: jax.Array) -> jax.Array:
    """uint32 [2]: JAX's threefry fold_in of uint32 `data` into key data [2]."""
    if not _partitionable():
        return jax.random.key_data(jax.random.fold_in(_jax_threefry(key), data))
    y0, y1 = threefry2x32(key[0], key[1], jnp.uint32(0), jnp.asarray(data, jnp.uint32))
    return jnp.stack([y0, y1])


def _random_bits(key: jax.Array, bit_width: int, shape: tuple[int, ...]) -> jax.Array:
    """uint{bit_width} of `shape`: JAX's threefry random bits from key data [2]. With
    (y0, y1) the hash of each element's counter: 32 bits are y0 ^ y1, 8 and 16 its low
    bits, 64 bits y0·2^32 + y1."""
    dtype = jnp.dtype(f"uint{bit_width}")
    if not _partitionable(shape):
        return jax.random.bits(_jax_threefry(key), shape, dtype)
    y0, y1 = _hash_counters(key, shape)
    if bit_width == 64:
        return lax.shift_left(y0.astype(dtype), dtype.type(32)) | y1.astype(dtype)
    return (y0 ^ y1).astype(dtype)


def _seed(seed: jax.Array) -> jax.Array:
    return jax.random.key_data(jax.random.key(seed, impl="threefry2x32"))


# JAX's threefry-2x32 generator with the hash written out (module docstring): keys of this
# implementation give every jax.random function JAX's own threefry numbers.
THREEFRY = jax.extend.random.define_prng_impl(
    key_shape=(2,), seed=_seed, split=_split_data, random_bits=_random_bits, fold_in=_fold_in_data,
    name="klrl_threefry2x32", tag="kfry")


def wrap(key: jax.Array) -> jax.Array:
    """`key` as a typed key of THREEFRY when it is raw threefry key data (uint32 [..., 2] with
    JAX's default implementation threefry), so that any jax.random call on it, inside klrl or a
    library (gymnax's reset and autoreset), draws JAX's numbers for `key` without the rolled
    hash loop. Any other key is returned as it is."""
    if (_typed(key) or key.dtype != jnp.uint32 or key.shape[-1:] != (2,)
            or jax.config.jax_default_prng_impl != "threefry2x32"):
        return key
    return jax.random.wrap_key_data(key, impl=THREEFRY)


def fold_in(key: jax.Array, data: int | jax.Array) -> jax.Array:
    """uint32 [2]: exactly `jax.random.fold_in(key, data)` for a raw threefry key (under
    `jax_threefry_partitionable`, the hash of the counter (0, data)). Other keys: JAX's own."""
    if _typed(key) or _raw_threefry_key(key) is None:
        return jax.random.fold_in(key, data)
    return _fold_in_data(key, data)


def split(key: jax.Array, num: int = 2) -> jax.Array:
    """uint32 [num, 2]: exactly `jax.random.split(key, num)` for a raw threefry key (under
    `jax_threefry_partitionable`, subkey i is the hash of the counter (0, i), the same as
    fold_in(key, i)). Other keys: JAX's own."""
    if _typed(key) or _raw_threefry_key(key) is None:
        return jax.random.split(key, num)
    return _split_data(key, (num,))


__all__ = ["PARITY", "ROTATIONS", "THREEFRY", "fold_in", "split", "threefry2x32", "uniform_at", "wrap"]
