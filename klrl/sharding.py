"""A population on a 1-D device mesh: the state's layout, padding members, one program per shard.

The mesh has one axis, `population`, over the devices it is given (default: those of every
process, `jax.devices()`; several hosts under `jax.distributed`, see klrl.distributed; `klrl
train` takes `train.devices` of them, klrl.placement). A population of M members on
S devices runs as S shards of L = ceil(M / S) members. The M' − M = S·L − M padding members
are copies of the last member that start frozen (`Trainer.init(active=...)` flags them
diverged, so they never update) and whose rows are dropped before anything is written:
M = 7 on a mesh of 8 devices runs on all 8 (one padding member), not on the one device that
divides 7. A checkpoint of one mesh size continues on another: klrl.relayout.

Each shard runs the trainer's own program for its L members under `jax.shard_map`, so each
shard steps its own env backend instance (a host pool is one object per shard, named by its
state like an emulator's handle; the compiler cannot split one) and owns its replay store.
Hence `shared` replay is shared WITHIN a shard, and its numbers depend on the device count;
with `per-member` replay a member's numbers do not (to float rounding: XLA may pick other
kernels for other per-device shapes).

Layout (`Trainer.layout`, declared per field by klrl.train.state_layout). Each leaf is
- MEMBER: leading axis M' (learner, optimizer, actor, per-member keys), split over the mesh;
- SHARD: one value per shard (env state, replay store, shared sampling key): the global array
  stacks the shards' values on a new leading axis [S, ...], split over the mesh, and a
  shard's program sees its own value without that axis;
- REPLICATED: the same on every shard (step counters, π_ref's parameters).
`spec_of` maps a kind to its PartitionSpec, used as shard_map's in/out specs and so as the
jitted program's shardings. Nothing is built on one device first: keys, hyperparameters and
π_ref go to their devices with `make_array_from_callback` (a process materializes only its
own shards), `init` and in-graph env resets run inside the sharded program, and a host
pool's first observations are put shard by shard on the shard's device.

Programs. Each trainer function that runs sharded declares the kinds of its arguments and of
its result (`Signature`; the trainer's table `Trainer.signatures`); `STATE` stands for the state's layout. One
generic wrapper, `shard_program`, turns any function and its signature into a jitted
shard_map program: a shard's call sees MEMBER arguments with its L members, SHARD arguments
without the shard axis, REPLICATED ones whole and STATIC ones as Python values; its result is
put back the same way.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

AXIS = "population"
MEMBER, SHARD, REPLICATED = "member", "shard", "replicated"
STATE = "state"      # a TrainState: each leaf of the kind the trainer's `layout` declares
STATIC = "static"    # a Python value (a salt), an argument only: one compiled program per value


class Signature(NamedTuple):
    """The kinds of a function's positional arguments and of its result. An entry is a kind
    (it covers the whole argument's tree), STATE, STATIC, or a tree of kinds leaf by leaf; the
    result's entry is a prefix of the result's tree, e.g. (STATE, MEMBER) for (state, metrics)."""
    args: tuple
    result: Any
    donate: tuple = ()   # positions of arguments whose buffers the program may reuse


def population_mesh(devices=None):
    """A 1-D mesh (axis `population`) over `devices` (default: every device of every process)."""
    import jax
    from jax.sharding import Mesh

    return Mesh(np.asarray(list(jax.devices() if devices is None else devices)), (AXIS,))


def padded_size(members: int, shards: int) -> int:
    """The smallest multiple of `shards` that holds `members`."""
    return shards * -(-members // shards)


def spec_of(kind: str):
    """The PartitionSpec of a leaf of `kind`: split on its leading axis, or replicated."""
    from jax.sharding import PartitionSpec

    if kind not in (MEMBER, SHARD, REPLICATED):
        raise ValueError(f"layout kind: got {kind!r}; allowed {MEMBER}, {SHARD}, {REPLICATED}")
    return PartitionSpec() if kind == REPLICATED else PartitionSpec(AXIS)


def _on_leaves(fn, kinds, tree):
    """`fn(kind, leaf)` on every leaf of `tree`; `kinds` is a prefix of `tree` (a kind covers a subtree)."""
    import jax

    return jax.tree.map(lambda k, sub: jax.tree.map(lambda x: fn(k, x), sub), kinds, tree)


def _drop(tree, kinds):
    """A shard's view of a sharded tree: SHARD leaves lose their (local size 1) shard axis."""
    return _on_leaves(lambda k, x: x[0] if k == SHARD else x, kinds, tree)


def _stack(tree, kinds):
    """The inverse of `_drop`: SHARD leaves gain the shard axis."""
    return _on_leaves(lambda k, x: x[None] if k == SHARD else x, kinds, tree)


def _is_static(kind) -> bool:
    return isinstance(kind, str) and kind == STATIC


def shard_view(args: tuple, kinds: tuple, shards: int) -> tuple:
    """The abstract arguments (jax.ShapeDtypeStruct) one of `shards` shards sees for global
    `args` of `kinds`: MEMBER leaves hold M'/S members, SHARD leaves lose the shard axis."""
    import jax

    def view(k, x):
        shape = tuple(np.shape(x))
        shape = {MEMBER: (shape[0] // shards,) + shape[1:], SHARD: shape[1:]}.get(k, shape)
        return jax.ShapeDtypeStruct(shape, x.dtype)

    return tuple(a if _is_static(k) else _on_leaves(view, k, a) for a, k in zip(args, kinds))


def shard_program(fn, mesh, signature: Signature):
    """`fn` as one jitted program over `mesh`'s population axis, laid out by `signature` (its
    entries are kinds or trees of kinds; STATE already replaced): each shard calls `fn` on its
    slice of the global arguments (see the module docstring) and returns its slice of the global
    result. STATIC arguments are the jit's static arguments."""
    import jax

    static = tuple(i for i, k in enumerate(signature.args) if _is_static(k))
    kinds = tuple(k for k in signature.args if not _is_static(k))
    in_specs = tuple(jax.tree.map(spec_of, k) for k in kinds)
    out_specs = jax.tree.map(spec_of, signature.result)

    def program(*args):
        fixed = {i: args[i] for i in static}

        def body(*local):
            own = iter(_drop(a, k) for a, k in zip(local, kinds))
            return _stack(fn(*(fixed[i] if i in fixed else next(own) for i in range(len(args)))), signature.result)

        # check_vma off: the trainer is a one-device program (its scans mix per-shard and
        # unannotated values), and every value in it is the shard's own anyway.
        sharded = jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
        return sharded(*(a for i, a in enumerate(args) if i not in fixed))

    return jax.jit(program, static_argnums=static, donate_argnums=signature.donate)


def _put(x: np.ndarray, sharding) -> Any:
    """A host array as a global array laid out by `sharding`; each process reads only the
    slices its own devices hold."""
    import jax

    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def _same_tree(a: Any, b: Any) -> bool:
    """Whether two layouts (pytrees of kinds) have the same structure and kinds."""
    import jax

    return jax.tree.structure(a) == jax.tree.structure(b) and jax.tree.leaves(a) == jax.tree.leaves(b)


class ShardedTrainer:
    """`trainer` (klrl.train.Trainer) for a population of `members` on `mesh` (default: every
    device). Its functions take and return global arrays laid out as the module docstring says;
    `to_host` brings per-member outputs back as numpy [members] (padding dropped, gathered from
    every process). `signatures`: the kinds of the trainer's functions (default: the trainer's own `signatures`)."""

    def __init__(self, trainer, members: int, mesh=None, signatures: dict | None = None):
        from jax.sharding import NamedSharding, PartitionSpec

        self.trainer = trainer
        self.signatures = trainer.signatures if signatures is None else signatures
        self.mesh = population_mesh() if mesh is None else mesh
        self.shards = int(self.mesh.size)
        self.members = int(members)
        self.padded = padded_size(self.members, self.shards)
        self.local = self.padded // self.shards
        self.split = NamedSharding(self.mesh, PartitionSpec(AXIS))
        self.whole = NamedSharding(self.mesh, PartitionSpec())
        self.layout = None            # the state's kinds, known once `init` has been traced
        self._programs: dict[str, Any] = {}

    # ---- host data onto the mesh ---------------------------------------------------------------
    def pad(self, x) -> np.ndarray:
        """[members, ...] -> [padded, ...], padding with copies of the last member."""
        x = np.asarray(x)
        extra = self.padded - self.members
        return np.concatenate([x, np.repeat(x[-1:], extra, axis=0)]) if extra else x

    def put_members(self, x) -> Any:
        """A host array [members, ...] (padded here) as a global array split over the mesh."""
        return _put(self.pad(x), self.split)

    def put_replicated(self, tree) -> Any:
        """Host arrays as global arrays replicated on every device."""
        import jax

        return jax.tree.map(lambda x: _put(np.asarray(x), self.whole), tree)

    def active(self) -> Any:
        """bool [padded] on the mesh: False for the padding members."""
        return _put(np.arange(self.padded) < self.members, self.split)

    def local_shards(self) -> list[tuple[int, Any]]:
        """(shard index, device) of this process's shards, in shard order."""
        idx = self.split.addressable_devices_indices_map((self.padded,))
        return sorted((((sl[0].start or 0) // self.local), d) for d, sl in idx.items())

    # ---- the programs ----------------------------------------------------------------------------
    def _signature(self, name: str) -> Signature:
        """The declared signature of `name` with STATE replaced by the state's layout."""
        import jax

        sig = self.signatures[name]
        if STATE in jax.tree.leaves(sig):
            if self.layout is None:
                raise RuntimeError("ShardedTrainer: call init first (it fixes the state's layout)")
            sig = jax.tree.map(lambda k: self.layout if k == STATE else k, sig)
        return sig

    def program(self, name: str):
        """The trainer's function `name` as a jitted sharded program (built once)."""
        if name not in self._programs:
            self._programs[name] = shard_program(getattr(self.trainer, name), self.mesh, self._signature(name))
        return self._programs[name]

    def env_start(self, host_keys, keys, salt: int) -> Any:
        """Every shard's (env state, first obs), stacked as SHARD leaves. In-graph backends
        reset inside a sharded program; a host pool resets this process's shards' instances on
        the host (`host_keys`: the members' keys as numpy [members, 2])."""
        import jax

        t = self.trainer
        if t.traits.in_graph_reset:
            return self.program("env_start")(keys, salt)
        host_keys = self.pad(host_keys)
        L = self.local
        parts = [(d, t.env_start(host_keys[s * L:(s + 1) * L], salt, instance=s)) for s, d in self.local_shards()]
        leaves, treedef = jax.tree.flatten(parts[0][1])
        per_shard = [jax.tree.leaves(p) for _, p in parts]
        out = []
        for i, leaf in enumerate(leaves):
            arrays = [jax.device_put(np.asarray(p[i])[None], d) for (d, _), p in zip(parts, per_shard)]
            out.append(jax.make_array_from_single_device_arrays((self.shards,) + np.shape(leaf), self.split, arrays))
        return treedef.unflatten(out)

    def init(self, keys, hparams: dict, ref_params: Any, env_start_state: Any) -> Any:
        """The sharded TrainState, built on the mesh (padding members frozen). Fixes the
        state's layout from a shard's abstract `Trainer.init`."""
        import jax

        args = (keys, hparams, ref_params, env_start_state, self.active())
        local = shard_view(args, self.signatures["init"].args, self.shards)
        layout = self.trainer.layout(jax.eval_shape(self.trainer.init, *local))
        if not _same_tree(layout, self.layout):
            self._programs = {}       # programs built for an earlier layout
        self.layout = layout
        return self.program("init")(*args)

    def run_chunk(self):
        """The jitted sharded `run_chunk(state, hparams) -> (state, metrics)`, donating the state."""
        return self.program("run_chunk")

    def reenter(self, state, env_start_state) -> Any:
        """`Trainer.reenter` on every shard (a resumed host pool: continue on fresh episodes)."""
        return self.program("reenter")(state, env_start_state)

    def final_eval(self, state, hparams: dict, env_start_state) -> dict:
        """`Trainer.final_eval` on every shard -> {name: global [padded]}."""
        return self.program("final_eval")(state, hparams, env_start_state)

    def put_state(self, tree) -> Any:
        """A state of host arrays in this mesh's layout (MEMBER leaves padded, SHARD leaves
        stacked [S, ...]) as global arrays, each leaf split or replicated as its kind says."""
        import jax

        kinds = self.trainer.layout(tree)
        return jax.tree.map(lambda k, x: _put(np.asarray(x), self.whole if k == REPLICATED else self.split),
                            kinds, tree)

    def gather(self, tree) -> Any:
        """Global arrays -> numpy on every process, whole (padding and shard axes kept)."""
        import jax

        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            tree = multihost_utils.process_allgather(tree, tiled=True)
        return jax.tree.map(np.asarray, jax.device_get(tree))

    def to_host(self, tree) -> Any:
        """Per-member global arrays -> numpy [members] on every process (padding dropped)."""
        import jax

        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            tree = multihost_utils.process_allgather(tree, tiled=True)
        return jax.tree.map(lambda x: np.asarray(x)[:self.members], jax.device_get(tree))


__all__ = ["AXIS", "MEMBER", "REPLICATED", "SHARD", "STATE", "STATIC", "ShardedTrainer", "Signature",
           "padded_size", "population_mesh", "shard_program", "shard_view", "spec_of"]
