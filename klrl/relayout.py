"""A checkpoint written on S devices, continued on S' devices: its state re-laid on the host.

A sharded state (klrl.sharding) depends on the device count: MEMBER leaves hold M' = S·L
members (padding included), SHARD leaves stack S shards' values. To resume on S' devices the
checkpoint is restored to host arrays in its own layout (`saved_shapes`), re-laid (`relay`)
and put on the new mesh. Field by field (klrl.train.TrainState):

- MEMBER leaves (learner, optimizer, actors, per-member keys): the M real members' rows, then
  padding rows copied from the last member and frozen (flagged diverged), as a fresh run pads;
- REPLICATED leaves (counters, π_ref's parameters): unchanged;
- an in-graph env state (checkpointable: leaves [L, E, ...] per shard) and a per-member
  replay (data [L, T, E, ...] per shard): the shards' members restacked, so every member's env
  and replay continue exactly; the replay's write cursor and fill level are the same on every
  shard (members step in lockstep);
- a shared replay (data [T, L·E, ...] per shard, T = buffer_size // (L·E), klrl.replay): each
  new shard's columns are its members' columns, with the newest min(size, T') time slots of
  each, oldest first; its sampling stream is the fresh run's for that shard (the store was
  shared within a shard, so its numbers already depend on the device count);
- a host pool (not checkpointable): not saved; it is re-reset as on any resume.

Numbers: per-member replay and in-graph envs continue exactly (metrics equal the
uninterrupted run's to float rounding, as on any device count); shared replay continues from
the re-laid store.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from klrl.sharding import MEMBER


class Layout(NamedTuple):
    """A state's device layout: S shards of L members (M' = S·L), M of them real."""

    shards: int
    local: int
    members: int

    @property
    def padded(self) -> int:
        return self.shards * self.local


def layout_of(meta: dict, members: int) -> Layout:
    """The layout a checkpoint's meta names (klrl.rundir.layout: devices, padded_members)."""
    shards = int(meta["devices"])
    return Layout(shards, int(meta["padded_members"]) // shards, members)


class Rules(NamedTuple):
    """What re-lays each SHARD component: `shared` replay or per-member; `envs`, `batch`:
    env.num_envs and train.buffer_size (a shared store's ring length T = buffer // (L·E))."""

    shared: bool
    envs: int
    buffer: int

    def ring(self, local: int) -> int:
        return self.buffer // (local * self.envs)


def _with_members(shape: tuple, local: int) -> tuple:
    return (local,) + tuple(shape[1:])


def saved_shapes(fresh, kinds, rules: Rules, new: Layout, old: Layout):
    """Abstract host arrays (numpy zeros) of a checkpoint written in layout `old`, from the
    fresh state (`fresh`: laid out as `new`, host or device arrays) and its `kinds`."""
    import jax

    def member(x):
        return np.zeros((old.padded,) + x.shape[1:], x.dtype)

    def per_shard(local_shape, x):
        return np.zeros((old.shards,) + tuple(local_shape), x.dtype)

    out = jax.tree.map(lambda k, x: member(x) if k == MEMBER else np.zeros(x.shape, x.dtype), kinds, fresh)
    env = jax.tree.map(lambda x: per_shard(_with_members(x.shape[1:], old.local), x), fresh.env)
    replay = fresh.replay
    if replay != ():
        if rules.shared:
            T = rules.ring(old.local)
            data = {n: per_shard((T, old.local * rules.envs) + x.shape[3:], x) for n, x in replay.data.items()}
        else:
            data = {n: per_shard(_with_members(x.shape[1:], old.local), x) for n, x in replay.data.items()}
        replay = replay._replace(data=data, pos=per_shard((), replay.pos), size=per_shard((), replay.size))
    keys = out.keys._replace(shared=per_shard(fresh.keys.shared.shape[1:], fresh.keys.shared))
    return out._replace(env=env, replay=replay, keys=keys)


def _members(x: np.ndarray, old: Layout, new: Layout, axis_shards: bool) -> np.ndarray:
    """Rows of the real members, padded with copies of the last; restacked [S', L', ...] when
    `axis_shards` (a SHARD leaf whose shard value leads with its members)."""
    flat = x.reshape((old.padded,) + x.shape[2:]) if axis_shards else x
    flat = flat[:old.members]
    flat = np.concatenate([flat, np.repeat(flat[-1:], new.padded - old.members, axis=0)])
    return flat.reshape((new.shards, new.local) + flat.shape[1:]) if axis_shards else flat


def _shared_store(replay, rules: Rules, old: Layout, new: Layout):
    """A shared replay store re-laid by columns (member-major) and ages (module docstring)."""
    E, T_old, T_new = rules.envs, rules.ring(old.local), rules.ring(new.local)
    pos, size = int(replay.pos[0]), int(replay.size[0])
    n = min(size, T_new)
    ages = np.arange(n - 1, -1, -1)                       # oldest first
    times = np.mod(pos - 1 - ages, T_old)
    data = {}
    for name, x in replay.data.items():                   # [S, T, L·E, ...]
        cols = np.concatenate(list(x[:, times]), axis=1)   # [n, M'·E, ...], member-major
        cols = cols[:, :old.members * E]
        last = cols[:, -E:]
        cols = np.concatenate([cols] + [last] * (new.padded - old.members), axis=1)
        store = np.zeros((new.shards, T_new, new.local * E) + x.shape[3:], x.dtype)
        for s in range(new.shards):
            store[s, :n] = cols[:, s * new.local * E:(s + 1) * new.local * E]
        data[name] = store
    full = lambda v: np.full((new.shards,), v, replay.pos.dtype)   # noqa: E731
    return replay._replace(data=data, pos=full(n % T_new), size=full(n))


def relay(saved, shared_keys: np.ndarray, rules: Rules, old: Layout, new: Layout):
    """The saved state (host arrays, layout `old`) in layout `new` (module docstring);
    `shared_keys`: the fresh run's shared sampling keys of layout `new` [S', 2]."""
    import jax

    def member(x):
        return _members(np.asarray(x), old, new, axis_shards=False)

    lockstep = lambda x: np.repeat(np.asarray(x)[:1], new.shards, axis=0)   # noqa: E731
    restack = lambda x: _members(np.asarray(x), old, new, axis_shards=True)  # noqa: E731
    learner = jax.tree.map(member, saved.learner)
    learner = learner._replace(diverged=np.where(np.arange(new.padded) < old.members, learner.diverged, True))
    replay = saved.replay
    if replay != ():
        replay = (_shared_store(replay, rules, old, new) if rules.shared else
                  replay._replace(data=jax.tree.map(restack, replay.data), pos=lockstep(replay.pos),
                                  size=lockstep(replay.size)))
    keys = saved.keys._replace(sample=member(saved.keys.sample), eval=member(saved.keys.eval),
                               shared=np.asarray(shared_keys))
    return saved._replace(learner=learner, actor=jax.tree.map(member, saved.actor),
                          env=jax.tree.map(restack, saved.env), replay=replay, keys=keys)


def rules_of(cfg) -> Rules:
    """The re-lay rules of a static config (klrl.static.StaticConfig)."""
    return Rules(shared=cfg.train.replay_mode == "shared", envs=cfg.env.num_envs, buffer=cfg.train.buffer_size)


def restore(ckpt, sharded, fresh_saved, rules: Rules):
    """(state on `sharded`'s mesh, metrics history, meta, the checkpoint's Layout when it was
    re-laid else None) of `ckpt`'s latest checkpoint. `fresh_saved`: what a checkpoint holds
    of a freshly initialized state on this mesh (klrl.rundir.saved_state)."""
    new = Layout(sharded.shards, sharded.local, sharded.members)
    old = layout_of(ckpt.meta(), sharded.members)
    if old == new:
        return (*ckpt.restore(fresh_saved), None)
    target = saved_shapes(fresh_saved, sharded.trainer.layout(fresh_saved), rules, new, old)
    saved, history, meta = ckpt.restore(target, host=True)
    state = relay(saved, sharded.gather(fresh_saved.keys.shared), rules, old, new)
    return sharded.put_state(state), history, meta, old


def describe(old: Layout, new: Layout, shared: bool, checkpointable: bool) -> str:
    """The one line a re-laid resume prints."""
    what = ["per-member state restacked"]
    if shared:
        what.append("the shared replay re-laid per shard (its numbers depend on the device count)")
    if not checkpointable:
        what.append("the env pool re-reset")
    return (f"checkpoint written on {old.shards} device(s) ({old.padded} members with padding) re-laid on "
            f"{new.shards} ({new.padded}): " + ", ".join(what))


__all__ = ["Layout", "Rules", "describe", "layout_of", "relay", "restore", "rules_of", "saved_shapes"]
