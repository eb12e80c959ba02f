"""klrl.rng: `uniform_at` gives exactly the chosen elements of `jax.random.uniform`'s draw."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klrl import rng

SHAPES = [(1,), (2, 128, 4), (3, 5, 7), (70001,)]   # the last one > 2^16 elements


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


def test_threefry_takes_python_ints_and_arrays_and_is_jaxs_hash():
    """The public hash against JAX's own (jax.extend.random.threefry_2x32), for Python ints up
    to 2^32 − 1 and for broadcasting arrays."""
    from jax.extend.random import threefry_2x32

    for k0, k1, x0, x1 in [(0, 0, 0, 0), (0xFFFFFFFF, 1, 0, 0xFFFFFFFF), (7, 0xFFFFFFFF, 0xFFFFFFFF, 12)]:
        want = threefry_2x32(jnp.array([k0, k1], jnp.uint32), jnp.array([x0, x1], jnp.uint32))
        got = rng.threefry2x32(k0, k1, x0, x1)
        assert got[0].dtype == jnp.uint32 and _same(jnp.stack(got), want)
    x1 = jnp.arange(6, dtype=jnp.uint32).reshape(2, 3)
    y0, y1 = rng.threefry2x32(jnp.uint32(5), jnp.uint32(9), 0, x1)
    want = threefry_2x32(jnp.array([5, 9], jnp.uint32), jnp.concatenate([jnp.zeros(6, jnp.uint32), x1.ravel()]))
    assert _same(jnp.concatenate([y0.ravel(), y1.ravel()]), want)


@pytest.mark.parametrize("shape", SHAPES)
def test_every_element_equals_jax_under_jit_and_vmap(shape):
    n = int(np.prod(shape))
    index = jnp.arange(n).reshape(shape)
    both = jax.jit(jax.vmap(lambda k: (rng.uniform_at(k, shape, index), jax.random.uniform(k, shape))))
    ours, theirs = both(_keys())
    assert _same(ours, theirs)
    assert float(ours.min()) >= 0.0 and float(ours.max()) < 1.0


def test_chosen_elements_equal_jax_in_any_order_and_shape():
    shape = (2, 128, 4)
    index = jnp.asarray(np.random.default_rng(1).integers(0, 1024, (17, 3)), jnp.int32)
    for key in _keys():
        flat = np.asarray(jax.random.uniform(key, shape)).reshape(-1)
        assert _same(jax.jit(rng.uniform_at, static_argnums=1)(key, shape, index), flat[np.asarray(index)])


def test_typed_keys_equal_jax():
    shape, index = (2, 128, 4), jnp.arange(0, 1024, 4)
    for key in (jax.random.wrap_key_data(jax.random.fold_in(jax.random.PRNGKey(9), 2)), jax.random.key(123)):
        flat = jax.random.uniform(key, shape).reshape(-1)
        assert _same(rng.uniform_at(key, shape, index), flat[index])


def test_other_prng_impl_falls_back_to_jax():
    # rbg key data is uint32 [4]: the threefry formula would give other bits (or fail).
    key, index = jax.random.key(3, impl="rbg"), jnp.array([0, 7, 14])
    assert _same(rng.uniform_at(key, (5, 3), index), jax.random.uniform(key, (5, 3)).reshape(-1)[index])


def test_x64_falls_back_to_jax(x64):
    # Under x64 JAX's default draw is float64 from 64-bit bits: not this module's float32s.
    key, index = jax.random.PRNGKey(4), jnp.array([5, 0, 2])
    theirs = jax.random.uniform(key, (6,))[index]
    assert theirs.dtype == jnp.float64 and _same(rng.uniform_at(key, (6,), index), theirs)


def test_non_partitionable_flag_falls_back_to_jax():
    key, shape, index = jax.random.PRNGKey(7), (4, 33), jnp.arange(0, 132, 5)
    partitionable = jax.random.uniform(key, shape).reshape(-1)[index]
    with jax.threefry_partitionable(False):
        theirs = jax.random.uniform(key, shape).reshape(-1)[index]
        assert _same(rng.uniform_at(key, shape, index), theirs)
        assert _same(jax.jit(lambda k: rng.uniform_at(k, shape, index))(key), theirs)
    assert not _same(theirs, partitionable)   # the flag changes the bits, so this checks something


def test_compiled_cpu_program_has_no_while_loop():
    key, index = jax.random.PRNGKey(0), jnp.arange(256)
    ours = jax.jit(lambda k: rng.uniform_at(k, (2, 128, 4), index)).lower(key).compile().as_text()
    theirs = jax.jit(lambda k: jax.random.uniform(k, (2, 128, 4))).lower(key).compile().as_text()
    # An HLO while instruction ("= ... while(...)"), not the word in source-location metadata.
    loop = re.compile(r"\swhile\(")
    assert not loop.search(ours)
    # One reason this module exists: JAX's own CPU lowering of threefry is a loop.
    if jax.default_backend() == "cpu":
        assert loop.search(theirs)


@pytest.mark.parametrize("num", [1, 2, 5, 33])
def test_split_equals_jax_under_jit_and_vmap(num):
    keys = _keys()
    assert _same(jax.jit(jax.vmap(lambda k: rng.split(k, num)))(keys),
                 jax.vmap(lambda k: jax.random.split(k, num))(keys))
    assert _same(rng.split(keys[3]), jax.random.split(keys[3]))


@pytest.mark.parametrize("data", [0, 1, 7, 2**31 - 1, 2**32 - 1])
def test_fold_in_equals_jax_for_python_and_traced_data(data):
    keys = _keys()
    theirs = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, data)
    assert _same(jax.vmap(rng.fold_in, in_axes=(0, None))(keys, data), theirs)
    traced = jax.jit(jax.vmap(rng.fold_in, in_axes=(0, None)))(keys, jnp.uint32(data))
    assert _same(traced, theirs)


def test_split_and_fold_in_fall_back_for_other_keys_and_the_flag_off():
    typed = jax.random.key(5, impl="rbg")
    assert _same(jax.random.key_data(rng.split(typed, 3)), jax.random.key_data(jax.random.split(typed, 3)))
    assert _same(jax.random.key_data(rng.fold_in(typed, 4)), jax.random.key_data(jax.random.fold_in(typed, 4)))
    key = jax.random.PRNGKey(11)
    with jax.threefry_partitionable(False):
        theirs = jax.random.split(key, 4)
        assert _same(rng.split(key, 4), theirs)
        assert _same(rng.fold_in(key, 9), jax.random.fold_in(key, 9))
    assert not _same(theirs, jax.random.split(key, 4))   # the flag matters, so this checks something


def test_typed_threefry_keys_get_typed_keys_back():
    key = jax.random.key(8)
    assert jax.dtypes.issubdtype(rng.split(key).dtype, jax.dtypes.prng_key)
    assert _same(jax.random.key_data(rng.split(key, 3)), jax.random.key_data(jax.random.split(key, 3)))
    assert _same(jax.random.key_data(rng.fold_in(key, 2)), jax.random.key_data(jax.random.fold_in(key, 2)))


def test_split_and_fold_in_equal_jax_under_x64(x64):
    key = jax.random.PRNGKey(13)
    assert _same(rng.split(key, 5), jax.random.split(key, 5))
    assert _same(rng.fold_in(key, 7), jax.random.fold_in(key, 7))


# ---- wrap: typed keys of rng.THREEFRY draw JAX's own numbers ---------------------------------

def _draws(key):
    """Every kind of draw a library makes from a key (bits of 8/16/32 bits, floats, ints, keys)."""
    unwrap = lambda k: k if k.dtype == jnp.uint32 else jax.random.key_data(k)  # noqa: E731
    return (jax.random.uniform(key, (3, 5)), jax.random.normal(key, (4,)), jax.random.randint(key, (6,), 0, 9),
            jax.random.categorical(key, jnp.arange(6.0)), jax.random.bernoulli(key, 0.3, (7,)),
            jax.random.bits(key, (5,), jnp.uint8), jax.random.bits(key, (5,), jnp.uint16),
            jax.random.permutation(key, 10), jax.random.choice(key, 20, (3,), replace=False),
            unwrap(jax.random.split(key, 3)), unwrap(jax.random.fold_in(key, 7)))


def _all_same(a, b) -> bool:
    return all(_same(x, y) for x, y in zip(a, b, strict=True))


def test_wrapped_keys_draw_what_raw_keys_draw_under_jit_and_vmap():
    keys = _keys()
    assert jax.random.key_impl(rng.wrap(keys[0])) == rng.THREEFRY
    ours = jax.jit(jax.vmap(lambda k: _draws(rng.wrap(k))))(keys)
    assert _all_same(ours, jax.jit(jax.vmap(_draws))(keys))
    # A batch of keys wraps at once; draws in a library's own nested vmap agree too.
    wrapped = rng.wrap(keys.reshape(2, 8, 2))
    assert wrapped.shape == (2, 8)
    assert _same(jax.vmap(jax.vmap(lambda k: jax.random.uniform(k, (3,))))(wrapped),
                 jax.vmap(jax.vmap(lambda k: jax.random.uniform(k, (3,))))(keys.reshape(2, 8, 2)))


def test_wrapped_keys_agree_with_the_flag_off_and_under_x64(x64):
    keys = _keys()[:4]
    # Jitted both ways (one compile each, not one per eager op).
    ours = jax.jit(jax.vmap(lambda k: _draws(rng.wrap(k))))(keys)
    assert _all_same(ours, jax.jit(jax.vmap(_draws))(keys))
    assert ours[0].dtype == jnp.float64        # 64-bit draws came from 64-bit bits
    with jax.threefry_partitionable(False):
        off = jax.jit(jax.vmap(lambda k: _draws(rng.wrap(k))))(keys)
        assert _all_same(off, jax.jit(jax.vmap(_draws))(keys))
    assert not _same(off[0], ours[0])         # the flag changes the bits, so this checks something


def test_wrap_leaves_other_keys_alone():
    typed = jax.random.key(1)
    assert rng.wrap(typed) is typed
    not_a_key = jnp.zeros((3,), jnp.uint32)
    assert rng.wrap(not_a_key) is not_a_key


def test_wrapped_draw_compiles_without_a_while_loop():
    key = jax.random.PRNGKey(0)
    hlo = jax.jit(lambda k: jax.random.uniform(rng.wrap(k), (8, 10))).lower(key).compile().as_text()
    assert not re.search(r"\swhile\(", hlo)
