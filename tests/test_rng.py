"""klrl.rng: the straight-line threefry gives exactly jax.random's bits, and no `while` loop."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klrl import rng

SHAPES = [(), (1,), (2, 128, 4), (3, 5, 7), (70001,)]   # the last one > 2^16 elements


def _keys() -> jax.Array:
    """uint32 [K, 2]: edge keys, fold_in'd and split keys, and random ones."""
    edge = np.array([[0, 0], [0xFFFFFFFF, 0xFFFFFFFF], [0, 0xFFFFFFFF], [0xFFFFFFFF, 0], [0, 1]],
                    np.uint32)
    folded = np.stack([np.asarray(jax.random.fold_in(jax.random.PRNGKey(s), g))
                       for s, g in [(0, 0), (1, 3), (2**31 - 1, 7)]])
    split = np.asarray(jax.random.split(jax.random.PRNGKey(42), 3))
    drawn = np.random.default_rng(0).integers(0, 2**32, (5, 2), dtype=np.uint32)
    return jnp.asarray(np.concatenate([edge, folded, split, drawn]))


def _same(a, b) -> bool:
    """Bit-for-bit equality (float32 compared as its uint32 pattern)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype == np.float32:
        a, b = a.view(np.uint32), b.view(np.uint32)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


@pytest.mark.parametrize("shape", SHAPES)
def test_vmapped_jitted_bits_and_uniform_equal_jax(shape):
    both = jax.jit(jax.vmap(lambda k: (rng.uniform(k, shape), jax.random.uniform(k, shape),
                                       rng.bits(k, shape), jax.random.bits(k, shape))))
    ours_u, jax_u, ours_b, jax_b = both(_keys())
    assert _same(ours_u, jax_u)
    assert _same(ours_b, jax_b)
    assert ours_u.dtype == jnp.float32 and float(ours_u.min()) >= 0.0 and float(ours_u.max()) < 1.0


def test_single_key_and_typed_keys_equal_jax():
    raw = jax.random.fold_in(jax.random.PRNGKey(9), 2)
    f = jax.jit(lambda k: (rng.uniform(k, (2, 128, 4)), jax.random.uniform(k, (2, 128, 4))))
    assert _same(*f(raw))
    typed = jax.random.wrap_key_data(raw)
    assert _same(*f(typed))
    assert _same(*f(jax.random.key(123)))


def test_other_prng_impl_falls_back_to_jax():
    # rbg key data is uint32 [4]: the threefry formula would give other bits (or fail).
    key = jax.random.key(3, impl="rbg")
    assert _same(rng.uniform(key, (5, 3)), jax.random.uniform(key, (5, 3)))


def test_x64_falls_back_to_jax(x64):
    # Under x64 JAX's default draw is float64 from 64-bit bits: not this module's float32s.
    key = jax.random.PRNGKey(4)
    ours, theirs = rng.uniform(key, (6,)), jax.random.uniform(key, (6,))
    assert theirs.dtype == jnp.float64 and _same(ours, theirs)
    assert _same(rng.bits(key, (6,)), jax.random.bits(key, (6,)))


def test_non_partitionable_flag_falls_back_to_jax():
    key, shape = jax.random.PRNGKey(7), (4, 33)
    partitionable = jax.random.uniform(key, shape)
    with jax.threefry_partitionable(False):
        ours, theirs = rng.uniform(key, shape), jax.random.uniform(key, shape)
        assert _same(jax.jit(lambda k: rng.uniform(k, shape))(key), theirs)
    assert not _same(theirs, partitionable)   # the flag changes the bits, so this checks something
    assert _same(ours, theirs)


def test_compiled_cpu_program_has_no_while_loop():
    key = jax.random.PRNGKey(0)
    ours = jax.jit(lambda k: rng.uniform(k, (8, 2, 128, 4))).lower(key).compile().as_text()
    theirs = jax.jit(lambda k: jax.random.uniform(k, (8, 2, 128, 4))).lower(key).compile().as_text()
    # An HLO while instruction ("= ... while(...)"), not the word in source-location metadata.
    loop = re.compile(r"\swhile\(")
    assert not loop.search(ours)
    # The reason this module exists: JAX's own CPU lowering of threefry is a loop.
    if jax.default_backend() == "cpu":
        assert loop.search(theirs)
