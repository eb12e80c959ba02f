"""A population on a 1-D device mesh: the state's layout, padding members, one program per shard.

The mesh has one axis, `population`, over the devices of every process (`jax.devices()`;
several hosts under `jax.distributed`, see klrl.distributed). A population of M members on
S devices runs as S shards of L = ceil(M / S) members. The M' − M = S·L − M padding members
are copies of the last member that start frozen (`Trainer.init(active=...)` flags them
diverged, so they never update) and whose rows are dropped before anything is written:
M = 7 on 8 devices runs on all 8 (one padding member), not on the one device that divides 7.

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
"""

from __future__ import annotations

from typing import Any

import numpy as np

AXIS = "population"
MEMBER, SHARD, REPLICATED = "member", "shard", "replicated"


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


def _drop(tree, kinds):
    """A shard's view of a sharded tree: SHARD leaves lose their (local size 1) shard axis."""
    import jax

    return jax.tree.map(lambda x, k: x[0] if k == SHARD else x, tree, kinds)


def _stack(tree, kinds):
    """The inverse of `_drop`: SHARD leaves gain the shard axis."""
    import jax

    return jax.tree.map(lambda x, k: x[None] if k == SHARD else x, tree, kinds)


def _put(x: np.ndarray, sharding) -> Any:
    """A host array as a global array laid out by `sharding`; each process reads only the
    slices its own devices hold."""
    import jax

    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def _all(tree, kind):
    import jax

    return jax.tree.map(lambda _: kind, tree)


class ShardedTrainer:
    """`trainer` (klrl.train.Trainer) for a population of `members` on `mesh` (default: every
    device). Its functions take and return global arrays laid out as the module docstring says;
    `to_host` brings per-member outputs back as numpy [members] (padding dropped, gathered from
    every process)."""

    def __init__(self, trainer, members: int, mesh=None):
        from jax.sharding import NamedSharding, PartitionSpec

        self.trainer = trainer
        self.mesh = population_mesh() if mesh is None else mesh
        self.shards = int(self.mesh.size)
        self.members = int(members)
        self.padded = padded_size(self.members, self.shards)
        self.local = self.padded // self.shards
        self.split = NamedSharding(self.mesh, PartitionSpec(AXIS))
        self.whole = NamedSharding(self.mesh, PartitionSpec())
        self.layout = None            # the state's kinds, known once `init` has been traced
        self._jitted: dict[str, Any] = {}

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

    def _shard_map(self, fn, in_specs, out_specs):
        import jax

        # check_vma off: the trainer is a one-device program (its scans mix per-shard and
        # unannotated values), and every value in it is the shard's own anyway.
        return jax.shard_map(fn, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)

    # ---- the programs ----------------------------------------------------------------------------
    def env_start(self, host_keys, keys, salt: int) -> Any:
        """Every shard's (env state, first obs), stacked as SHARD leaves. In-graph backends
        reset inside a sharded program; a host pool resets this process's shards' instances on
        the host (`host_keys`: the members' keys as numpy [members, 2])."""
        import jax

        t = self.trainer
        if t.traits.in_graph_reset:
            def body(k):
                start = t.env_start(k, salt)
                return _stack(start, _all(start, SHARD))

            return jax.jit(self._shard_map(body, (spec_of(MEMBER),), spec_of(SHARD)))(keys)
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
        """The sharded TrainState, built on the mesh (padding members frozen)."""
        import jax
        import jax.numpy as jnp

        t = self.trainer
        L = self.local
        local = lambda x: jax.ShapeDtypeStruct((L,) + tuple(x.shape[1:]), x.dtype)  # noqa: E731
        abstract = jax.eval_shape(t.init, local(keys), {k: local(v) for k, v in hparams.items()}, ref_params,
                                  jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), env_start_state),
                                  jax.ShapeDtypeStruct((L,), jnp.bool_))
        self.layout = t.layout(abstract)
        specs = jax.tree.map(spec_of, self.layout)

        def body(k, hp, ref, start, act):
            return _stack(t.init(k, hp, ref, _drop(start, _all(start, SHARD)), act), self.layout)

        fn = self._shard_map(body, (spec_of(MEMBER), spec_of(MEMBER), spec_of(REPLICATED), spec_of(SHARD),
                                    spec_of(MEMBER)), specs)
        return jax.jit(fn)(keys, hparams, ref_params, env_start_state, self.active())

    def _specs(self):
        import jax

        if self.layout is None:
            raise RuntimeError("ShardedTrainer: call init first (it fixes the state's layout)")
        return jax.tree.map(spec_of, self.layout)

    def run_chunk(self):
        """The jitted sharded `run_chunk(state, hparams) -> (state, metrics)`, donating the state."""
        import jax

        if "run_chunk" not in self._jitted:
            t, layout = self.trainer, self.layout

            def body(state, hp):
                state, metrics = t.run_chunk(_drop(state, layout), hp)
                return _stack(state, layout), metrics

            specs = self._specs()
            fn = self._shard_map(body, (specs, spec_of(MEMBER)), (specs, spec_of(MEMBER)))
            self._jitted["run_chunk"] = jax.jit(fn, donate_argnums=0)
        return self._jitted["run_chunk"]

    def reenter(self, state, env_start_state) -> Any:
        """`Trainer.reenter` on every shard (a resumed host pool: continue on fresh episodes)."""
        import jax

        t, layout, specs = self.trainer, self.layout, self._specs()

        def body(s, start):
            return _stack(t.reenter(_drop(s, layout), _drop(start, _all(start, SHARD))), layout)

        return jax.jit(self._shard_map(body, (specs, spec_of(SHARD)), specs))(state, env_start_state)

    def final_eval(self, state, hparams: dict, env_start_state) -> dict:
        """`Trainer.final_eval` on every shard -> {name: global [padded]}."""
        import jax

        t, layout, specs = self.trainer, self.layout, self._specs()

        def body(s, hp, start):
            return t.final_eval(_drop(s, layout), hp, _drop(start, _all(start, SHARD)))

        fn = self._shard_map(body, (specs, spec_of(MEMBER), spec_of(SHARD)), spec_of(MEMBER))
        return jax.jit(fn)(state, hparams, env_start_state)

    def to_host(self, tree) -> Any:
        """Per-member global arrays -> numpy [members] on every process (padding dropped)."""
        import jax

        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            tree = multihost_utils.process_allgather(tree, tiled=True)
        return jax.tree.map(lambda x: np.asarray(x)[:self.members], jax.device_get(tree))


__all__ = ["AXIS", "MEMBER", "REPLICATED", "SHARD", "ShardedTrainer", "padded_size", "population_mesh", "spec_of"]
