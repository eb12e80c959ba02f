"""klrl.replay against a brute-force reference built from the full Python history.

A numpy stream of episodes following next-step autoreset (klrl.envs.base) is fed to `add`;
every sampled slot is mapped back to its global step and checked against stacks rebuilt by
walking back to the episode start, for both modes and both stores, with a ring small enough
to wrap several times.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klrl import replay as rb
from klrl.envs.base import EnvStep

M, E = 2, 3
FRAME = (2, 3)      # one frame; stacking concatenates on the last axis
T = 8               # time slots per column in every config below
STEPS = 60          # adds per stream: the ring wraps 7 times
B = 1024
SNAPSHOTS = (1, 2, 3, 4, 5, 8, 9, 13, 21, 34, 47, 60)   # numbers of adds at which we sample
CONFIGS = [("frames", 3), ("frames", 1), ("transitions", 1)]


# ----------------------------------------------------------------------------- reference stream


def _stream(seed: int, steps: int = STEPS) -> dict[str, np.ndarray]:
    """Random episodes under next-step autoreset, indexed [t, m, e].

    frames/first have steps + 1 entries (o_0 .. o_steps); the rest `steps` entries. Every
    frame is nonzero and identifiable: [0, 0] = t + 1, [0, 1] = column + 1.
    """
    rng = np.random.default_rng(seed)
    frames = rng.integers(1, 256, (steps + 1, M, E) + FRAME).astype(np.uint8)
    frames[..., 0, 0] = (np.arange(steps + 1) + 1)[:, None, None]
    frames[..., 0, 1] = (np.arange(M * E).reshape(M, E) + 1)[None]
    first = np.zeros((steps + 1, M, E), bool)
    first[0] = True
    valid = np.zeros((steps, M, E), bool)
    term = np.zeros((steps, M, E), bool)
    trunc = np.zeros((steps, M, E), bool)
    reward = np.zeros((steps, M, E), np.float32)
    action = rng.integers(0, 5, (steps, M, E)).astype(np.int32)
    for m in range(M):
        for e in range(E):
            left, pending = int(rng.integers(1, 5)), False   # episode lengths 1..4 incl. 1
            for t in range(steps):
                if pending:      # autoreset step: not a transition, next obs starts an episode
                    first[t + 1, m, e], pending, left = True, False, int(rng.integers(1, 5))
                    continue
                valid[t, m, e] = True
                reward[t, m, e] = rng.normal()
                left -= 1
                if left == 0:    # episode ends here; its final obs is o_{t+1}
                    pending = True
                    if rng.random() < 0.5:
                        term[t, m, e] = True
                    else:
                        trunc[t, m, e] = True
    return dict(frames=frames, first=first, valid=valid, terminated=term, truncated=trunc,
                reward=reward, action=action)


def _brute_stack(s: dict, t: int, m: int, e: int, k: int) -> np.ndarray:
    """The k-frame stack at step t: walk back to the episode start, zeros before it."""
    start = t
    while not s["first"][start, m, e]:
        start -= 1
    parts = [s["frames"][j, m, e] if j >= start else np.zeros(FRAME, np.uint8)
             for j in range(t - k + 1, t + 1)]
    return np.concatenate(parts, axis=-1)


def _env_step(s: dict, t: int) -> EnvStep:
    z = np.zeros((M, E), np.float32)
    return EnvStep(obs=jnp.asarray(s["frames"][t + 1]), reward=jnp.asarray(s["reward"][t]),
                   raw_reward=jnp.asarray(s["reward"][t]),
                   terminated=jnp.asarray(s["terminated"][t]),
                   truncated=jnp.asarray(s["truncated"][t]), valid=jnp.asarray(s["valid"][t]),
                   episode_return=jnp.asarray(z), episode_length=jnp.asarray(z, jnp.int32),
                   episode_end=jnp.asarray(s["terminated"][t] | s["truncated"][t]))


def _make(store: str, k: int, mode: str, **kw) -> rb.Replay:
    columns = E if mode == "per-member" else M * E
    # capacity not a multiple of the columns: rounded down to T slots.
    return rb.make_replay(store, obs_shape=FRAME, obs_dtype=jnp.uint8, frame_stack=k,
                          members=M, envs=E, capacity=T * columns + 2, mode=mode, **kw)


@functools.lru_cache(maxsize=None)
def _run(store: str, k: int, mode: str):
    """Feed one stream; sample B per member at every snapshot. Cached across tests."""
    s = _stream(seed=PARAMS.index((store, k, mode)))
    rp = _make(store, k, mode)
    add, sample = jax.jit(rp.add), jax.jit(rp.sample, static_argnums=2)
    state = rp.init()
    shots = []
    key = jax.random.PRNGKey(0)
    for t in range(STEPS):
        state = add(state, jnp.asarray(s["frames"][t]), jnp.asarray(s["first"][t]),
                    jnp.asarray(s["action"][t]), _env_step(s, t))
        n = t + 1
        if n in SNAPSHOTS:
            draws = []
            for _ in range(8 if n == STEPS else 1):   # more draws at the end: uniformity test
                key, sub = jax.random.split(key)
                keys = jax.random.split(sub, M) if mode == "per-member" else sub
                draws.append(jax.tree.map(np.asarray, sample(state, keys, B)))
            shots.append((n, int(state.pos), int(state.size), draws))
    stacks = np.stack([np.stack([np.stack([_brute_stack(s, t, m, e, k) for e in range(E)])
                                 for m in range(M)]) for t in range(STEPS + 1)])
    return s, stacks, shots


def _global(mode: str, idx, pos: int, n: int):
    """(time_index, column) -> (age, global step t, member m, env e), all [M*B] or [B]."""
    ti, col = (np.asarray(a) for a in idx)
    if mode == "per-member":
        m = np.broadcast_to(np.arange(M)[:, None], ti.shape)
        e = col
    else:
        m, e = col // E, col % E
    age = (pos - 1 - ti) % T
    return age, n - 1 - age, m, e


PARAMS = [(st, k, mode) for st, k in CONFIGS for mode in rb.MODES]


# ----------------------------------------------------------------------------- tests


def test_reference_stream_follows_next_step_autoreset():
    s = _stream(0)
    done = s["terminated"] | s["truncated"]
    np.testing.assert_array_equal(s["first"][1:], ~s["valid"])     # autoreset step -> first obs
    np.testing.assert_array_equal(~s["valid"][1:], done[:-1])       # done step -> autoreset step
    assert (s["first"][:-1] & done).any()                           # length-1 episodes occur


@pytest.mark.parametrize("store,k,mode", PARAMS)
def test_samples_match_bruteforce_reference(store, k, mode):
    s, stacks, shots = _run(store, k, mode)
    lo = 1 if store == "frames" else 0      # allowed ages: [lo, hi]
    for n, pos, size, draws in shots:
        assert pos == n % T and size == min(n, T)
        hi = size - k if store == "frames" else size - 1
        drawn = set()
        for batch, idx in draws:
            lead = (M, B) if mode == "per-member" else (B,)
            assert batch.obs.shape == lead + rb.stacked_shape(FRAME, k)
            assert batch.next_obs.shape == batch.obs.shape and batch.weight.shape == lead
            assert batch.action.dtype == np.int32 and batch.terminated.dtype == np.float32
            if hi < lo:          # not enough data for one window yet
                assert not batch.weight.any()
                continue
            age, t, m, e = _global(mode, idx, pos, n)
            assert age.min() >= lo and age.max() <= hi, (n, age.min(), age.max())  # never straddles
            np.testing.assert_array_equal(batch.weight, s["valid"][t, m, e].astype(np.float32))
            np.testing.assert_array_equal(batch.obs, stacks[t, m, e])
            np.testing.assert_array_equal(batch.action, s["action"][t, m, e])
            np.testing.assert_array_equal(batch.reward, s["reward"][t, m, e])
            np.testing.assert_array_equal(batch.terminated, s["terminated"][t, m, e])
            ok = batch.weight == 1
            np.testing.assert_array_equal(batch.next_obs[ok], stacks[t + 1, m, e][ok])
            drawn |= set(zip(t[ok], m[ok], e[ok]))
            if mode == "per-member":   # members draw independently
                assert not (np.array_equal(idx[0][0], idx[0][1])
                            and np.array_equal(idx[1][0], idx[1][1]))
        if hi >= lo:             # coverage: every valid in-range slot was drawn
            expect = {(t, m, ee) for t in range(n - 1 - hi, n - lo) for m in range(M)
                      for ee in range(E) if s["valid"][t, m, ee]}
            assert drawn == expect, (n, expect - drawn, drawn - expect)


@pytest.mark.parametrize("store,k,mode", [("frames", 3, "shared"), ("transitions", 1, "per-member")])
def test_sampling_uniform_over_valid_slots(store, k, mode):
    s, _, shots = _run(store, k, mode)
    n, pos, _, draws = shots[-1]
    counts: dict = {}
    zero = 0
    for batch, idx in draws:
        _, t, m, e = _global(mode, idx, pos, n)
        ok = batch.weight == 1
        zero += (~ok).sum()
        for key in zip(t[ok], m[ok], e[ok]):
            counts[key] = counts.get(key, 0) + 1
    c = np.array(list(counts.values()))
    assert abs(c.max() / c.mean() - 1) < 0.4 and abs(c.min() / c.mean() - 1) < 0.4
    assert zero < 0.05 * sum(d[0].weight.size for d in draws)   # first-valid of 4: rare misses


@pytest.mark.parametrize("k", [3, 1])
def test_acting_stack_matches_replay(k):
    """push_frame along the stream equals the brute-force stacks, hence every sampled obs."""
    s, stacks, shots = _run("frames", k, "per-member")
    push = jax.jit(functools.partial(rb.push_frame, k=k))
    stack = rb.init_stack(FRAME, jnp.uint8, k, (M, E))
    acting = []
    for t in range(STEPS + 1):
        stack = push(stack, jnp.asarray(s["frames"][t]), jnp.asarray(s["first"][t]))
        acting.append(np.asarray(stack))
    acting = np.stack(acting)
    np.testing.assert_array_equal(acting, stacks)
    for n, pos, _, draws in shots:
        for batch, idx in draws:
            age, t, m, e = _global("per-member", idx, pos, n)
            if batch.weight.any():
                ok = batch.weight == 1
                np.testing.assert_array_equal(batch.obs[ok], acting[t, m, e][ok])
                np.testing.assert_array_equal(batch.next_obs[ok], acting[t + 1, m, e][ok])


def test_push_frame_zeroes_older_frames_on_first():
    stack = jnp.arange(1, 13, dtype=jnp.int32).reshape(2, 6)     # 2 envs, k=3 frames of 2
    frame = jnp.array([[20, 21], [30, 31]], jnp.int32)
    out = rb.push_frame(stack, frame, jnp.array([False, True]), 3)
    np.testing.assert_array_equal(out, [[3, 4, 5, 6, 20, 21], [0, 0, 0, 0, 30, 31]])
    np.testing.assert_array_equal(rb.push_frame(stack[:, :2], frame, jnp.array([False, True]), 1),
                                  frame)
    assert rb.stacked_shape((84, 84, 1), 4) == (84, 84, 4)
    assert rb.init_stack((84, 84, 1), jnp.uint8, 4, (2, 3)).shape == (2, 3, 84, 84, 4)


@pytest.mark.parametrize("store,k", [("frames", 3), ("transitions", 1)])
@pytest.mark.parametrize("mode", rb.MODES)
def test_add_is_one_dynamic_update_slice_per_leaf(store, k, mode):
    rp = _make(store, k, mode)
    s = _stream(0, steps=2)
    jaxpr = str(jax.make_jaxpr(rp.add)(rp.init(), jnp.asarray(s["frames"][0]),
                                       jnp.asarray(s["first"][0]), jnp.asarray(s["action"][0]),
                                       _env_step(s, 0)))
    assert "scatter" not in jaxpr
    assert jaxpr.count("dynamic_update_slice") == len(rp.init().data)


def test_add_and_sample_inside_jitted_scan():
    """The trainer's usage: add + sample in lax.scan under jit gives the loop's state."""
    rp = _make("frames", 3, "per-member")
    s = _stream(1, steps=20)
    xs = (jnp.asarray(s["frames"][:-1]), jnp.asarray(s["first"][:-1]), jnp.asarray(s["action"]),
          jax.tree.map(lambda *a: jnp.stack(a), *[_env_step(s, t) for t in range(20)]))

    @jax.jit
    def run(state, key):
        def body(st, x):
            st = rp.add(st, *x)
            batch, _ = rp.sample(st, jax.random.split(jax.random.fold_in(key, st.pos), M), 16)
            return st, batch.weight.sum()
        return jax.lax.scan(body, state, xs)

    state, w = run(rp.init(), jax.random.PRNGKey(0))
    ref = rp.init()
    for t in range(20):
        ref = rp.add(ref, *jax.tree.map(lambda a: a[t], xs))
    jax.tree.map(np.testing.assert_array_equal, state, ref)
    assert float(w[:3].sum()) == 0 and float(w[-1]) > 0    # no window before k + 1 adds


def test_bytes_per_transition():
    kw = dict(obs_dtype=jnp.uint8, members=2, envs=4, capacity=4000)
    fr = rb.make_replay("frames", obs_shape=(84, 84, 1), frame_stack=4, mode="per-member", **kw)
    # frame 84*84 uint8 + first (1) + action int32 (4) + reward f32 (4) + terminated (1) + valid (1)
    assert fr.bytes_per_transition == 84 * 84 + 11
    tr = rb.make_replay("transitions", obs_shape=(84, 84, 4), frame_stack=1, mode="shared", **kw)
    # obs and next_obs, each a stacked 84*84*4, + action + reward + terminated + valid
    assert tr.bytes_per_transition == 2 * 84 * 84 * 4 + 10
    # The allocated state matches: per-member M*T*E slots (T = 1000), shared T*M*E (T = 500).
    for rp, slots in [(fr, 2 * 1000 * 4), (tr, 500 * 8)]:
        shapes = jax.eval_shape(rp.init)
        nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes.data))
        assert nbytes == rp.bytes_per_transition * slots


def test_bad_input_rejected():
    kw = dict(obs_shape=FRAME, obs_dtype=jnp.uint8, members=M, envs=E)
    with pytest.raises(ValueError, match="replay_mode"):
        rb.make_replay("frames", frame_stack=1, capacity=100, mode="both", **kw)
    with pytest.raises(ValueError, match="replay_store"):
        rb.make_replay("episodes", frame_stack=1, capacity=100, mode="shared", **kw)
    with pytest.raises(ValueError, match="frame_stack"):
        rb.make_replay("transitions", frame_stack=4, capacity=1000, mode="shared", **kw)
    # k = 4 needs T >= 6: per-member 6*E = 18 ok, 17 not; shared needs 6*M*E = 36.
    rb.make_replay("frames", frame_stack=4, capacity=18, mode="per-member", **kw)
    with pytest.raises(ValueError, match=r"buffer_size.*capacity >= 18"):
        rb.make_replay("frames", frame_stack=4, capacity=17, mode="per-member", **kw)
    with pytest.raises(ValueError, match=r"buffer_size.*capacity >= 36"):
        rb.make_replay("frames", frame_stack=4, capacity=35, mode="shared", **kw)


def _draw_everything(key, valid, first, pos, lo, n, batch_size, K):
    """The specification of the draw: all K candidates u = uniform(key, [2, B, K]), the first
    usable one, else the last with weight 0 (what `_draw` returned before it became lazy).
    Returns (age, col, weight) [B] and whether each candidate is usable [B, K]."""
    Tn, C = valid.shape
    u = jax.random.uniform(key, (2, batch_size, K))
    age = lo + jnp.clip((u[0] * n).astype(jnp.int32), 0, jnp.maximum(n - 1, 0))
    col = jnp.clip((u[1] * C).astype(jnp.int32), 0, C - 1)
    ok = valid[(pos - 1 - age) % Tn, col] & (n > 0)
    if first is not None:
        ok = ok & ~first[(pos - age) % Tn, col]
    pick = jnp.where(ok.any(-1), jnp.argmax(ok, -1), K - 1)
    take = lambda x: jnp.take_along_axis(x, pick[:, None], -1)[:, 0]   # noqa: E731
    return take(age), take(col), ok.any(-1).astype(jnp.float32), ok


@pytest.mark.parametrize("with_first", [True, False])
def test_lazy_draw_equals_drawing_every_candidate(with_first):
    # Invalid fractions from none to all: the lazy path (few unusable candidate 0s) and the
    # full path (many) must both give exactly the specification's slots and weights.
    G, Tn, C, Bn, K = 3, 50, 7, 64, 4            # spare = max(8, 64 // 8) = 8
    draw = jax.jit(rb._draw, static_argnums=(6, 7))
    spec = jax.jit(jax.vmap(_draw_everything, in_axes=(0, 0, 0 if with_first else None) + (None,) * 5),
                   static_argnums=(6, 7))
    gen = np.random.default_rng(0)
    lazy_used = full_used = 0
    for trial, bad in enumerate([0.0, 0.01, 0.03, 0.06, 0.2, 0.5, 1.0] * 3):
        valid = jnp.asarray(gen.random((G, Tn, C)) >= bad)
        first = jnp.asarray(gen.random((G, Tn, C)) < bad / 4) if with_first else None
        keys = jax.random.split(jax.random.PRNGKey(trial), G)
        pos, lo, n = jnp.int32(trial % Tn), jnp.int32(1), jnp.int32(Tn - 3 if trial % 7 else 0)
        age, ti, col, w = draw(keys, valid, first, pos, lo, n, Bn, K)
        want_age, want_col, want_w, usable = spec(keys, valid, first, pos, lo, n, Bn, K)
        np.testing.assert_array_equal(age, want_age)
        np.testing.assert_array_equal(col, want_col)
        np.testing.assert_array_equal(w, want_w)
        np.testing.assert_array_equal(ti, (pos - 1 - age) % Tn)
        # The lazy branch with work to do: every store has 1..spare unusable candidate 0s in all.
        unusable0 = (~np.asarray(usable)[..., 0]).sum(-1)                  # [G]
        lazy_used += bool((unusable0 <= 8).all() and unusable0.sum() > 0)
        full_used += bool((unusable0 > 8).any())
    assert lazy_used >= 3 and full_used >= 3   # both branches exercised, the redraw with work to do
