"""Uniform floats from a straight-line threefry-2x32: the bits `jax.random.uniform` returns.

Threefry-2x32 (Salmon, Moraes, Dror & Shaw 2011, "Parallel random numbers: as easy as 1, 2, 3",
SC'11) hashes a 64-bit counter (x0, x1) under a 64-bit key (k0, k1) in 20 rounds of

    x0 <- x0 + x1;  x1 <- rotl32(x1, R[r mod 8]) XOR x0,   R = (13, 15, 26, 6, 17, 29, 16, 24)

with the key injected before round 0 and after every 4 rounds (s = 1..5):

    x0 <- x0 + ks[s mod 3];  x1 <- x1 + ks[(s + 1) mod 3] + s,   ks = (k0, k1, k0 ^ k1 ^ 0x1BD11BDA)

(all arithmetic mod 2^32). Under `jax_threefry_partitionable` (JAX's default), the 32 random
bits of element i of a shape (flat row-major index i) are `y0 ^ y1` where
(y0, y1) = threefry2x32(key, (hi32(i), lo32(i))), and a uniform float32 in [0, 1) takes the 23
high bits as its mantissa: bitcast((bits >> 9) | 0x3F800000) - 1.

Why not just `jax.random.uniform`: on CPU, JAX lowers threefry as a rolled 5-iteration `while`
loop of small kernels, which costs a visible share of a small vmapped update (the replay's
candidate draw, docs/performance.md). Written out as plain jnp ops, the 20 rounds are one
straight-line program that XLA fuses, with the same bits.

Fallback: when the same bits are not guaranteed by this formula, `uniform` returns
`jax.random.uniform(key, shape)` itself: `jax_threefry_partitionable` set to False (a user
flag; the non-partitionable layout splits counters differently), `jax_enable_x64` (then JAX's
default is float64 from 64-bit draws), a key of another PRNG implementation (typed or via
`jax_default_prng_impl`) or not a raw uint32 [2] key, or 2^32 elements or more.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)
PARITY = 0x1BD11BDA


def _rotl(x: jax.Array, r: int) -> jax.Array:
    """32-bit rotate left by a constant r in 1..31."""
    return lax.shift_left(x, jnp.uint32(r)) | lax.shift_right_logical(x, jnp.uint32(32 - r))


def threefry2x32(k0: jax.Array, k1: jax.Array, x0: jax.Array, x1: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32, 20 rounds (module docstring), unrolled; uint32 scalars/arrays broadcast."""
    ks = (k0, k1, k0 ^ k1 ^ jnp.uint32(PARITY))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for s in range(1, 6):                                # 5 blocks of 4 rounds each
        for r in range(4):
            x0 = x0 + x1
            x1 = _rotl(x1, ROTATIONS[(4 * (s - 1) + r) % 8]) ^ x0
        x0 = x0 + ks[s % 3]
        x1 = x1 + ks[(s + 1) % 3] + jnp.uint32(s)
    return x0, x1


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


def bits(key: jax.Array, shape: Sequence[int] = ()) -> jax.Array:
    """uint32 `shape`: the same as `jax.random.bits(key, shape)` (fallback: module docstring)."""
    shape = tuple(shape)
    raw = _supported(key, shape)
    if raw is None:
        return jax.random.bits(key, shape)
    # Flat indices < 2^32 (checked above), so the counter's high word is 0.
    lo = lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    y0, y1 = threefry2x32(raw[0], raw[1], jnp.zeros_like(lo), lo)
    return y0 ^ y1


def uniform(key: jax.Array, shape: Sequence[int] = ()) -> jax.Array:
    """float32 `shape` in [0, 1): exactly `jax.random.uniform(key, shape)` (module docstring)."""
    shape = tuple(shape)
    if _supported(key, shape) is None:
        return jax.random.uniform(key, shape)
    mantissa = lax.shift_right_logical(bits(key, shape), jnp.uint32(9)) | jnp.uint32(0x3F800000)
    return lax.bitcast_convert_type(mantissa, jnp.float32) - jnp.float32(1.0)


__all__ = ["PARITY", "ROTATIONS", "bits", "threefry2x32", "uniform"]
