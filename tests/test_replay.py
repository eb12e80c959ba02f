"""klrl.replay: ring semantics (wraparound) in both modes, shared sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klrl import replay as rb

EXAMPLE = {"x": jnp.zeros((2,), jnp.float32), "a": jnp.zeros((), jnp.int32)}


def _items(t, members, n):
    """Item value encodes (member, step, slot): 100·member + 10·t + slot."""
    a = 100 * jnp.arange(members)[:, None] + 10 * t + jnp.arange(n)[None, :]
    return {"x": jnp.stack([a, -a], -1).astype(jnp.float32), "a": a.astype(jnp.int32)}


@pytest.mark.parametrize("capacity", [8, 7])  # 8: slice-update path (8 % 2 == 0); 7: scatter path
def test_per_member_wraparound(capacity):
    M, n = 3, 2
    s = rb.init(EXAMPLE, capacity, members=M, mode="per-member")
    assert s.data["a"].shape == (M, capacity)
    written = [[] for _ in range(M)]
    for t in range(6):
        s = rb.add(s, _items(t, M, n), "per-member")
        for m in range(M):
            written[m] += [100 * m + 10 * t + j for j in range(n)]
    assert int(s.size) == capacity and int(s.pos) == (6 * n) % capacity
    for m in range(M):
        expect = np.zeros(capacity, int)
        for i, v in enumerate(written[m]):       # ring: item i lives in slot i mod C
            expect[i % capacity] = v
        np.testing.assert_array_equal(np.asarray(s.data["a"][m]), expect)
        np.testing.assert_array_equal(np.asarray(s.data["x"][m, :, 1]), -expect)


def test_size_grows_until_full():
    s = rb.init(EXAMPLE, 10, members=2, mode="per-member")
    sizes = []
    for t in range(7):
        s = rb.add(s, _items(t, 2, 2), "per-member")
        sizes.append(int(s.size))
    assert sizes == [2, 4, 6, 8, 10, 10, 10]


@pytest.mark.parametrize("capacity", [12, 10])
def test_shared_mode_all_members_write_one_buffer(capacity):
    M, n = 3, 2
    s = rb.init(EXAMPLE, capacity, members=M, mode="shared")
    assert s.data["a"].shape == (capacity,)
    flat = []
    for t in range(4):
        s = rb.add(s, _items(t, M, n), "shared")
        flat += [100 * m + 10 * t + j for m in range(M) for j in range(n)]  # member-major order
    expect = np.zeros(capacity, int)
    for i, v in enumerate(flat):
        expect[i % capacity] = v
    np.testing.assert_array_equal(np.asarray(s.data["a"]), expect)
    assert int(s.size) == capacity and int(s.pos) == len(flat) % capacity


def test_sampling_shared_indices_identical_per_member_distinct():
    M, B = 4, 16
    s = rb.init(EXAMPLE, 50, members=M, mode="per-member")
    for t in range(5):
        s = rb.add(s, _items(t, M, 5), "per-member")
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(M))
    batch, idx = rb.sample(s, keys, B, "per-member")
    assert idx.shape == (M, B) and batch["a"].shape == (M, B)
    assert int(idx.max()) < int(s.size) and int(idx.min()) >= 0
    # Each member reads from its own buffer at its own indices.
    np.testing.assert_array_equal(np.asarray(batch["a"]),
                                  np.take_along_axis(np.asarray(s.data["a"]), np.asarray(idx), 1))
    assert len({tuple(np.asarray(r)) for r in idx}) == M   # members draw different indices

    sh = rb.init(EXAMPLE, 50, members=M, mode="shared")
    for t in range(3):
        sh = rb.add(sh, _items(t, M, 5), "shared")
    batch, idx = rb.sample(sh, jax.random.PRNGKey(3), B, "shared")
    assert idx.shape == (B,) and batch["a"].shape == (B,)   # one batch, the same for every member
    assert int(idx.max()) < int(sh.size)
    np.testing.assert_array_equal(np.asarray(batch["a"]), np.asarray(sh.data["a"])[np.asarray(idx)])


def test_sample_indices_cover_range_uniformly():
    idx = rb.sample_indices(jax.random.PRNGKey(0), jnp.int32(5), 20000)
    counts = np.bincount(np.asarray(idx), minlength=5)
    assert counts.shape == (5,) and counts.min() > 3600 and counts.max() < 4400


def test_too_many_items_for_capacity_rejected():
    s = rb.init(EXAMPLE, 3, members=1, mode="per-member")
    with pytest.raises(ValueError, match="buffer_size"):
        rb.add(s, _items(0, 1, 4), "per-member")
