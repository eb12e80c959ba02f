"""The one replay buffer: a time ring per env column, shared by a whole population.

Layout. Every vector step the trainer calls `add` once with the [M, E] slice of the
population, so the buffer is a ring of T time slots per env column:

- `per-member`: leaves `[M, T, E, ...]`, T = capacity // E. Member m only sees its own E
  columns and draws its own minibatch (`sample(state, keys [M, 2], B)` -> leaves [M, B, ...]).
- `shared`: one store `[T, M*E, ...]` (columns member-major: column m*E + e), T = capacity //
  (M*E). `sample(state, key [2], B)` draws ONE minibatch [B, ...] that every member uses, so
  different operators are compared on identical data and a large population fits in memory.

All members step in lockstep, so the write cursor `pos` and the fill level `size` (in time
slots) are int32 scalars, and every write is one `dynamic_update_slice` per leaf at time
index `pos` (no scatter).

Slot contents. The trainer adds (o_t, first_t, a_t, step_t) where o_t is the observation
a_t was taken in and step_t the EnvStep a_t produced (klrl.envs.base: next-step autoreset,
so o_{t+1} of slot t is written by the NEXT add; `valid_t` is False exactly on an autoreset
step, whose o_t is the previous episode's final observation and whose a_t was ignored).

Two stores:
- `frames`: slot t keeps the single newest frame o_t (not the k-frame stack) plus first_t,
  a_t, r_t, terminated_t, valid_t. Stacks are rebuilt at sample time, which costs ~1/k of the
  memory of storing stacks and ~1/(2k) of storing (obs, next_obs) pairs.
- `transitions`: slot t keeps o_t and next_obs = step_t.obs explicitly (frame_stack 1 only).

Frame stacking convention (shared with the acting stack, `push_frame`): k frames
concatenated on the LAST axis, oldest first; frames before the episode's first observation
are zero. k = 1 is the identity.

Sampling. `age` = how many adds ago a slot was written (newest = 0); time index
(pos - 1 - age) mod T. `candidates` independent uniform (age, column) pairs are drawn per
batch element and the first valid one is taken: conditional on success this is exactly
uniform over the valid slots in range. If none is valid (rare: P = (1 - valid fraction)^K)
the last candidate is returned with weight 0, so the learner can mask it without a
data-dependent batch size. Only the candidates that are looked at are hashed (klrl.rng):
candidate 0 of every element, the others for the few elements whose candidate 0 is invalid.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from klrl import rng
from klrl.envs.base import EnvStep

MODES = ("per-member", "shared")
STORES = ("frames", "transitions")


class Batch(NamedTuple):
    """A minibatch; per-member samples carry a leading member axis [M, B, ...]."""

    obs: jax.Array         # [B, *stacked_obs] in the store's obs dtype
    action: jax.Array      # int32 [B]
    reward: jax.Array      # float32 [B] (EnvStep.reward, the learning reward)
    terminated: jax.Array  # float32 [B]: 1.0 = true terminal (discount 0); truncation is 0.0
    next_obs: jax.Array    # [B, *stacked_obs]
    weight: jax.Array      # float32 [B]: 1 for a real transition, 0 when no valid slot was drawn


class ReplayState(NamedTuple):
    """Buffer contents; jax arrays only, so orbax can save it."""

    data: dict[str, jax.Array]  # leaves [M, T, E, ...] (per-member) or [T, M*E, ...] (shared)
    pos: jax.Array              # int32 scalar: time index of the next write
    size: jax.Array             # int32 scalar: time slots written so far, capped at T


class Replay(NamedTuple):
    """A replay buffer bound to one static configuration (all functions jit/vmap-able).

    sample(state, key, B) returns (batch, indices) with indices = (time_index, column), two
    int32 arrays with the batch's leading shape ([B] shared, [M, B] per-member). `column` is
    the member-major column m*E + e in shared mode and the member's own env e in per-member
    mode; the slot is `state.data[...][time_index, column]` (per member: `[m, time_index,
    column]`). Returned for every batch element, including weight-0 ones.
    """

    init: Callable[[], ReplayState]
    add: Callable[[ReplayState, jax.Array, jax.Array, jax.Array, EnvStep], ReplayState]
    sample: Callable[[ReplayState, jax.Array, int], tuple[Batch, Any]]
    bytes_per_transition: int  # bytes stored per time slot of one env column


# ----------------------------------------------------------------------------- frame stacks


def stacked_shape(obs_shape: tuple[int, ...], k: int) -> tuple[int, ...]:
    """The shape of k frames of `obs_shape` concatenated on the last axis."""
    obs_shape = tuple(obs_shape)
    return obs_shape[:-1] + (obs_shape[-1] * k,)


def init_stack(obs_shape: tuple[int, ...], obs_dtype: Any, k: int, lead: tuple[int, ...]) -> jax.Array:
    """An all-zero acting stack [*lead, *stacked_shape(obs_shape, k)]."""
    return jnp.zeros(tuple(lead) + stacked_shape(obs_shape, k), obs_dtype)


def push_frame(stack: jax.Array, frame: jax.Array, first: jax.Array, k: int) -> jax.Array:
    """The acting stack after observing `frame`: drop the oldest frame, append `frame`.

    stack [*lead, *stacked], frame [*lead, *obs_shape], first bool [*lead]. Where `first` is
    True (the frame starts an episode) the k-1 older frames are zeroed, giving
    [0, ..., 0, frame]: exactly what the replay rebuilds for that slot.
    """
    if k == 1:
        return frame.astype(stack.dtype)
    c = frame.shape[-1]
    chex.assert_shape(stack, frame.shape[:-1] + (c * k,))
    chex.assert_shape(first, frame.shape[:first.ndim])
    older = stack[..., c:]
    keep = jnp.reshape(~first, first.shape + (1,) * (older.ndim - first.ndim))
    older = jnp.where(keep, older, jnp.zeros_like(older))
    return jnp.concatenate([older, frame.astype(stack.dtype)], axis=-1)


def _concat_frames(frames: jax.Array) -> jax.Array:
    """[B, k, *obs_shape] -> [B, *stacked] (frame i's channels at i*c .. i*c + c - 1)."""
    k = frames.shape[1]
    moved = jnp.moveaxis(frames, 1, -2)               # [B, ..., k, c]
    return moved.reshape(moved.shape[:-2] + (k * frames.shape[-1],))


# ----------------------------------------------------------------------------- sampling helpers


def _uniform_int(u: jax.Array, n: jax.Array) -> jax.Array:
    """floor(u * n) for u in [0, 1), clamped to [0, n - 1] (float rounding can hit n)."""
    return jnp.clip((u * n).astype(jnp.int32), 0, jnp.maximum(n - 1, 0))


def _time_index(pos: jax.Array, age: jax.Array, T: int) -> jax.Array:
    """Time index of the slot written `age` adds ago (newest = 0)."""
    return jnp.mod(pos - 1 - age, T)


def _candidates(key: jax.Array, index: jax.Array, batch_size: int, candidates: int,
                lo: jax.Array, n: jax.Array, columns: int) -> tuple[jax.Array, jax.Array]:
    """(age, column) of the candidates at flat positions `index` (b·K + k) of the draw
    u = uniform(key, [2, B, K]): age = lo + ⌊u[0]·n⌋, column = ⌊u[1]·C⌋. Hashes only those."""
    shape = (2, batch_size, candidates)
    age = lo + _uniform_int(rng.uniform_at(key, shape, index), n)
    col = _uniform_int(rng.uniform_at(key, shape, index + batch_size * candidates), jnp.int32(columns))
    return age, col


def _usable(valid: jax.Array, first: jax.Array | None, pos: jax.Array, n: jax.Array,
            age: jax.Array, col: jax.Array) -> jax.Array:
    """Whether the slots (age, col) of one store [T, C] can be sampled: valid, in range (n > 0)
    and, with `first` (frames store), not followed by an episode start. Normally only autoreset
    slots (already invalid) precede one, but a host pool re-reset on resume starts an episode
    without one (klrl.runner)."""
    T = valid.shape[0]
    ok = valid[_time_index(pos, age, T), col] & (n > 0)
    if first is not None:
        ok = ok & ~first[_time_index(pos, age - 1, T), col]
    return ok


def _first_usable(age: jax.Array, col: jax.Array, ok: jax.Array
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Along the last (candidate) axis: the first usable candidate, or the last one if none is
    (then ok = False). Returns (age, col, ok) without that axis."""
    K = ok.shape[-1]
    any_ok = ok.any(axis=-1)
    pick = jnp.where(any_ok, jnp.argmax(ok, axis=-1), K - 1)[..., None]
    # The picked candidate as a masked integer sum (exact): it fuses with the draw, a gather would not.
    chosen = jnp.arange(K) == pick
    return jnp.sum(jnp.where(chosen, age, 0), -1), jnp.sum(jnp.where(chosen, col, 0), -1), any_ok


def _draw_all(key, valid, first, pos, lo, n, batch_size: int, candidates: int):
    """Every candidate of every batch element -> (age, col, ok), each [B]."""
    index = jnp.arange(batch_size * candidates).reshape(batch_size, candidates)
    age, col = _candidates(key, index, batch_size, candidates, lo, n, valid.shape[1])
    return _first_usable(age, col, _usable(valid, first, pos, n, age, col))


def _draw_first(key, valid, first, pos, lo, n, batch_size: int, candidates: int):
    """Candidate 0 of every batch element -> (age, col, ok), each [B]."""
    index = jnp.arange(batch_size) * candidates
    age, col = _candidates(key, index, batch_size, candidates, lo, n, valid.shape[1])
    return age, col, _usable(valid, first, pos, n, age, col)


def _redraw(key, valid, first, pos, lo, n, batch_size: int, candidates: int, spare: int, drawn):
    """`_draw_first`'s result completed to `_draw_all`'s when at most `spare` elements have an
    unusable candidate 0: those elements (only) draw candidates 1..K-1 and take the first
    usable one."""
    age, col, ok = drawn
    rows = jnp.nonzero(~ok, size=spare, fill_value=batch_size)[0]      # fill: out of range, dropped
    index = rows[:, None] * candidates + jnp.arange(1, candidates)      # [spare, K - 1]
    a, c = _candidates(key, index, batch_size, candidates, lo, n, valid.shape[1])
    a, c, o = _first_usable(a, c, _usable(valid, first, pos, n, a, c))
    put = lambda x, y: x.at[rows].set(y, mode="drop")                   # noqa: E731
    return put(age, a), put(col, c), put(ok, o)


def _draw(keys: jax.Array, valid: jax.Array, first: jax.Array | None, pos: jax.Array,
          lo: jax.Array, n: jax.Array, batch_size: int, candidates: int
          ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Pick B slots per store uniformly among the usable ones with age in [lo, lo + n - 1].

    keys [G, 2] and stores valid / first [G, T, C] (G stores: the members, or the one shared
    store). `candidates` = K independent uniform (age, column) pairs u = uniform(key, [2, B, K])
    per batch element; the first usable one is taken (exactly uniform over the usable slots,
    given success); if none is, the last one with weight 0. Candidate 0 is usable for nearly
    every element, so candidates 1..K-1 are drawn only for the few elements whose candidate 0
    is not (when more than `spare` of some store's are not, for all elements): the same
    numbers as drawing everything, at ~1/K of the hashing and gathers.
    Returns (age, time_index, column, weight), each [G, B]. n <= 0 (too little data yet)
    yields weight 0 everywhere with ages clamped to lo.
    """
    T = valid.shape[1]
    bound = dict(pos=pos, lo=lo, n=n, batch_size=batch_size, candidates=candidates)
    each = lambda f, **kw: jax.vmap(functools.partial(f, **bound, **kw))   # noqa: E731 (over the G stores)
    if candidates == 1:
        age, col, ok = each(_draw_all)(keys, valid, first)
    else:
        spare = min(batch_size, max(8, batch_size // 8))
        drawn = each(_draw_first)(keys, valid, first)
        few = jnp.all(jnp.sum(~drawn[2], axis=-1) <= spare)
        age, col, ok = jax.lax.cond(few, lambda: each(_redraw, spare=spare)(keys, valid, first, drawn=drawn),
                                    lambda: each(_draw_all)(keys, valid, first))
    return age, _time_index(pos, age, T), col, ok.astype(jnp.float32)


def _gather_frames(data: dict, pos: jax.Array, age: jax.Array, ti: jax.Array, col: jax.Array,
                   weight: jax.Array, k: int) -> tuple[Batch, tuple[jax.Array, jax.Array]]:
    """One frames store [T, C, ...] and its drawn slots [B] -> a batch [B, ...] with stacks
    rebuilt from single frames (ages drawn in [1, size - k]: age >= 1 so next obs (age - 1)
    exists, and age + k - 1 <= size - 1 so the stack window never reaches unwritten or
    overwritten slots)."""
    T = data["valid"].shape[0]
    # Window of k + 1 frames, oldest first: ages a+k-1 .. a (obs) and a+k-2 .. a-1 (next obs).
    ages = age[:, None] + (k - 1 - jnp.arange(k + 1))          # [B, k+1]
    wt = _time_index(pos, ages, T)
    frames = data["frame"][wt, col[:, None]]                    # [B, k+1, *obs_shape]
    if k > 1:   # a one-frame window has no older frame to zero: skip its gather and select
        first = data["first"][wt, col[:, None]][:, :k]          # obs window only
        # Latest episode start inside the obs window (0 if none: nothing to zero). A valid
        # slot's next obs is never a first obs, so the same start pads next_obs.
        start = jnp.max(jnp.where(first, jnp.arange(k), 0), axis=-1)
        keep = jnp.arange(k + 1)[None, :] >= start[:, None]
        keep = keep.reshape(keep.shape + (1,) * (frames.ndim - 2))
        frames = jnp.where(keep, frames, jnp.zeros_like(frames))
    batch = Batch(
        obs=_concat_frames(frames[:, :k]),
        action=data["action"][ti, col],
        reward=data["reward"][ti, col],
        terminated=data["terminated"][ti, col].astype(jnp.float32),
        next_obs=_concat_frames(frames[:, 1:]),
        weight=weight,
    )
    return batch, (ti, col)


def _gather_transitions(data: dict, pos: jax.Array, age: jax.Array, ti: jax.Array, col: jax.Array,
                        weight: jax.Array) -> tuple[Batch, tuple[jax.Array, jax.Array]]:
    """One transitions store [T, C, ...] and its drawn slots [B] -> a batch [B, ...]."""
    batch = Batch(
        obs=data["obs"][ti, col],
        action=data["action"][ti, col],
        reward=data["reward"][ti, col],
        terminated=data["terminated"][ti, col].astype(jnp.float32),
        next_obs=data["next_obs"][ti, col],
        weight=weight,
    )
    return batch, (ti, col)


# ----------------------------------------------------------------------------- construction


def _slot_spec(store: str, obs_shape: tuple[int, ...], obs_dtype: Any) -> dict[str, tuple]:
    """Per-slot (shape, dtype) of every stored leaf."""
    spec = {
        "action": ((), jnp.int32),
        "reward": ((), jnp.float32),
        "terminated": ((), jnp.bool_),
        "valid": ((), jnp.bool_),
    }
    if store == "frames":
        spec.update(frame=(obs_shape, obs_dtype), first=((), jnp.bool_))
    else:
        spec.update(obs=(obs_shape, obs_dtype), next_obs=(obs_shape, obs_dtype))
    return spec


def _check_args(store: str, mode: str, k: int, candidates: int) -> None:
    """Raises ValueError for an unknown store/mode, frame_stack k < 1, k > 1 with the
    transitions store, or candidates < 1."""
    if store not in STORES:
        raise ValueError(f"replay_store: got {store!r}; allowed {', '.join(STORES)}")
    if mode not in MODES:
        raise ValueError(f"replay_mode: got {mode!r}; allowed {', '.join(MODES)}")
    if k < 1:
        raise ValueError(f"frame_stack: got {k}; must be >= 1")
    if store == "transitions" and k != 1:
        raise ValueError(f"frame_stack: got {k} with replay_store 'transitions', which only "
                         "supports frame_stack 1; use replay_store 'frames'")
    if candidates < 1:
        raise ValueError(f"replay candidates: got {candidates}; must be >= 1")


def make_replay(store: str, *, obs_shape: tuple[int, ...], obs_dtype: Any, frame_stack: int,
                members: int, envs: int, capacity: int, mode: str, candidates: int = 4) -> Replay:
    """Build the replay for a population of `members` x `envs` environments.

    obs_shape is ONE frame (EnvSpec.obs_shape); batches carry stacked_shape(obs_shape,
    frame_stack). capacity counts transitions in total (per member in per-member mode, for
    the whole population in shared mode); it is rounded down to a multiple of the columns.
    Raises ValueError for an unknown store/mode, frame_stack > 1 with the transitions store,
    candidates < 1, or a capacity that leaves fewer than frame_stack + 2 time slots.
    """
    k = int(frame_stack)
    _check_args(store, mode, k, candidates)
    M, E = int(members), int(envs)
    obs_shape = tuple(int(d) for d in obs_shape)
    obs_dtype = jnp.dtype(obs_dtype)
    columns = E if mode == "per-member" else M * E
    T = int(capacity) // columns
    if T < k + 2:
        raise ValueError(
            f"buffer_size (capacity): got {capacity}, i.e. {T} time slots of {columns} env "
            f"columns in {mode} mode; need >= {k + 2} slots (frame_stack + 2), i.e. "
            f"capacity >= {(k + 2) * columns}")

    spec = _slot_spec(store, obs_shape, obs_dtype)
    bytes_per_transition = sum(int(np.prod(s, dtype=np.int64)) * jnp.dtype(d).itemsize
                               for s, d in spec.values())
    lead = (M, T, E) if mode == "per-member" else (T, M * E)

    def init() -> ReplayState:
        data = {name: jnp.zeros(lead + s, d) for name, (s, d) in spec.items()}
        return ReplayState(data, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    def add(state: ReplayState, obs: jax.Array, first: jax.Array, action: jax.Array,
            step: EnvStep) -> ReplayState:
        """Write the [M, E] slot at time index pos: obs = o_t (the frame a_t was taken in)."""
        chex.assert_shape(obs, (M, E) + obs_shape)
        chex.assert_shape([first, action, step.reward, step.terminated, step.valid], (M, E))
        items = {"action": action, "reward": step.reward, "terminated": step.terminated,
                 "valid": step.valid}
        if store == "frames":
            items.update(frame=obs, first=first)
        else:
            chex.assert_shape(step.obs, (M, E) + obs_shape)
            items.update(obs=obs, next_obs=step.obs)

        def write(buf: jax.Array, x: jax.Array) -> jax.Array:
            x = x.astype(buf.dtype)
            if mode == "per-member":   # [M, E, ...] -> [M, 1, E, ...] at (0, pos, 0, ...)
                x, start = x[:, None], (0, state.pos, 0)
            else:                      # [M, E, ...] -> [1, M*E, ...] at (pos, 0, ...)
                x, start = x.reshape((1, M * E) + x.shape[2:]), (state.pos, 0)
            start = start + (0,) * (buf.ndim - len(start))
            return jax.lax.dynamic_update_slice(buf, x, start)

        data = {name: write(state.data[name], items[name]) for name in state.data}
        return ReplayState(data, (state.pos + 1) % T, jnp.minimum(state.size + 1, T))

    def sample(state: ReplayState, key: jax.Array, batch_size: int) -> tuple[Batch, Any]:
        """per-member: key [M, 2] -> leaves [M, B, ...]; shared: key [2] -> leaves [B, ...]."""
        shared = mode == "shared"
        if not shared:
            chex.assert_axis_dimension(key, 0, M)
        # One code path: the shared store is a population of one store.
        data = jax.tree.map(lambda x: x[None], state.data) if shared else state.data
        keys = key[None] if shared else key
        lo, n = (jnp.int32(1), state.size - k) if store == "frames" else (jnp.int32(0), state.size)
        age, ti, col, weight = _draw(keys, data["valid"], data.get("first"), state.pos, lo, n,
                                     batch_size, candidates)
        if store == "frames":
            gather = lambda d, *slot: _gather_frames(d, state.pos, *slot, k)   # noqa: E731
        else:
            gather = lambda d, *slot: _gather_transitions(d, state.pos, *slot)  # noqa: E731
        out = jax.vmap(gather)(data, age, ti, col, weight)
        return jax.tree.map(lambda x: x[0], out) if shared else out

    return Replay(init=init, add=add, sample=sample, bytes_per_transition=bytes_per_transition)
