"""The one replay buffer: a uniform ring buffer for a whole population.

Two modes (docs/DESIGN.md §4):
- `per-member`: every member has its own buffer. Storage is `[M, C, ...]` (member axis
  leading, like every other per-member array) and each member samples its own indices.
- `shared`: one buffer `[C, ...]` that all members write into (each vector step appends the
  M x E transitions of the whole population) and every member samples the SAME indices, so
  different operators are compared on identical minibatches and a large population fits in
  memory.

All members step in lockstep, so the write position and the fill level are scalars shared
by the whole population. This keeps every write a single (dynamic-update-slice or scatter)
op with unbatched indices instead of a per-member scatter loop.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

MODES = ("per-member", "shared")


class ReplayState(NamedTuple):
    data: Any          # pytree; leaves [M, C, ...] (per-member) or [C, ...] (shared)
    pos: jax.Array     # int32 scalar: next write slot
    size: jax.Array    # int32 scalar: number of valid slots (<= C)


def init(example: Any, capacity: int, *, members: int, mode: str) -> ReplayState:
    """An empty buffer whose items look like `example` (a pytree of one item, no batch axes)."""
    if mode not in MODES:
        raise ValueError(f"replay_mode: got {mode!r}; allowed {', '.join(MODES)}")
    lead = (members, capacity) if mode == "per-member" else (capacity,)
    data = jax.tree.map(lambda x: jnp.zeros(lead + jnp.shape(x), jnp.asarray(x).dtype), example)
    return ReplayState(data, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def capacity(state: ReplayState, mode: str) -> int:
    leaf = jax.tree.leaves(state.data)[0]
    return leaf.shape[1] if mode == "per-member" else leaf.shape[0]


def add(state: ReplayState, items: Any, mode: str) -> ReplayState:
    """Append a batch of items, overwriting the oldest ones once full.

    items: leaves `[M, n, ...]` (n new items per member). per-member: member m's items go to
    its own buffer; shared: all M*n items go into the one buffer (member-major order).
    """
    cap = capacity(state, mode)
    if mode == "shared":
        items = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), items)
        axis = 0
    else:
        axis = 1
    n = jax.tree.leaves(items)[0].shape[axis]
    if n > cap:
        raise ValueError(f"buffer_size: got {cap}; must be >= {n} items written per step")
    if cap % n == 0:
        # Writes never straddle the end: one contiguous in-place slice update.
        def write(buf, x):
            start = [0] * buf.ndim
            start[axis] = state.pos
            return jax.lax.dynamic_update_slice(buf, x.astype(buf.dtype), start)
    else:
        idx = (state.pos + jnp.arange(n)) % cap

        def write(buf, x):
            x = x.astype(buf.dtype)
            return buf.at[idx].set(x) if axis == 0 else buf.at[:, idx].set(x)
    data = jax.tree.map(write, state.data, items)
    return ReplayState(data, (state.pos + n) % cap, jnp.minimum(state.size + n, cap))


def sample_indices(key: jax.Array, size: jax.Array, batch_size: int) -> jax.Array:
    """Uniform indices in [0, size) as floor(u * size) (cheaper than randint under vmap)."""
    u = jax.random.uniform(key, (batch_size,))
    return jnp.minimum((u * size).astype(jnp.int32), jnp.maximum(size - 1, 0))


def sample(state: ReplayState, keys: jax.Array, batch_size: int, mode: str) -> tuple[Any, jax.Array]:
    """Sample a minibatch per member.

    keys: per-member mode `[M, 2]` (each member its own indices); shared mode one key `[2]`
    (the same indices for every member).
    Returns (batch, indices): per-member leaves `[M, B, ...]`, indices `[M, B]`; shared
    leaves `[B, ...]` (one batch, identical for every member) and indices `[B]`.
    """
    if mode == "shared":
        idx = sample_indices(keys, state.size, batch_size)
        return jax.tree.map(lambda x: x[idx], state.data), idx
    idx = jax.vmap(lambda k: sample_indices(k, state.size, batch_size))(keys)
    batch = jax.tree.map(lambda x: jnp.take_along_axis(
        x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1), state.data)
    return batch, idx
