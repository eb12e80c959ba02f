"""The generic shard wrapper (klrl.sharding.shard_program) alone, on a toy function, and the
declared signatures of the trainer's sharded functions.

The wrapper runs on 2 fake CPU devices in a subprocess (the device count is fixed when JAX
starts); each shard must see its own members, its own SHARD values without the shard axis, the
REPLICATED values whole and the STATIC values as Python values.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from engine_helpers import fake_devices_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_TOY = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from klrl.sharding import (AXIS, MEMBER, REPLICATED, SHARD, STATIC, Signature, population_mesh,
                               shard_program)

    mesh = population_mesh()
    S, L = 2, 3                                   # 2 shards of 3 members
    assert mesh.size == S
    split, whole = NamedSharding(mesh, P(AXIS)), NamedSharding(mesh, P())
    put = lambda x, sh: jax.make_array_from_callback(x.shape, sh, lambda i: x[i])

    def toy(m, s, r, t, salt):
        # m: [L, 2] this shard's members; s: {"a": [3]} this shard's own; r: scalar; t: leaf by leaf
        shard_value = s["a"] + m.sum() + salt
        per_member = {"m": m * r + t["s"][0], "rows": jnp.full((m.shape[0],), m.shape[0])}
        return shard_value, {"m": per_member["m"], "rows": per_member["rows"], "s": t["s"] * 2}

    sig = Signature(args=(MEMBER, SHARD, REPLICATED, {"m": MEMBER, "s": SHARD}, STATIC),
                    result=(SHARD, {"m": MEMBER, "rows": MEMBER, "s": SHARD}))
    prog = shard_program(toy, mesh, sig)
    m = np.arange(S * L * 2, dtype=np.float32).reshape(S * L, 2)
    a = np.arange(S * 3, dtype=np.float32).reshape(S, 3)
    ts = np.array([[100.0], [200.0]], np.float32)
    args = (put(m, split), {"a": put(a, split)}, put(np.float32(2), whole),
            {"m": put(m, split), "s": put(ts, split)})
    for salt in (10, 20):
        out = jax.tree.map(np.asarray, prog(*args, salt))
        mine = [m[k * L:(k + 1) * L] for k in range(S)]
        np.testing.assert_array_equal(out[0], np.stack([a[k] + mine[k].sum() + salt for k in range(S)]))
        np.testing.assert_array_equal(out[1]["m"], np.concatenate([mine[k] * 2 + ts[k, 0] for k in range(S)]))
        np.testing.assert_array_equal(out[1]["rows"], np.full(S * L, L))
        np.testing.assert_array_equal(out[1]["s"], ts * 2)
    res = prog(*args, 10)
    assert res[1]["m"].sharding.spec == P(AXIS) and res[0].shape == (S, 3)
    print("ok")
""")


@pytest.mark.xdist_group("sharding")
def test_shard_program_gives_each_shard_its_slice():
    res = subprocess.run([sys.executable, "-c", _TOY], cwd=ROOT, env=fake_devices_env(2), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "ok"


def test_shard_view_is_one_shards_abstract_arguments():
    from klrl.sharding import MEMBER, REPLICATED, SHARD, STATIC, shard_view

    args = (np.zeros((4, 2), np.float32), {"a": np.zeros((2, 3), np.int32)}, np.zeros((5,)),
            {"m": np.zeros((4,)), "s": np.zeros((2, 7))}, 9)
    view = shard_view(args, (MEMBER, SHARD, REPLICATED, {"m": MEMBER, "s": SHARD}, STATIC), 2)
    assert view[0].shape == (2, 2) and view[0].dtype == np.float32
    assert view[1]["a"].shape == (3,) and view[1]["a"].dtype == np.int32
    assert view[2].shape == (5,) and view[3]["m"].shape == (2,) and view[3]["s"].shape == (7,)
    assert view[4] == 9


def test_signatures_match_the_trainer_functions():
    """Every declared function is a Trainer field that takes its declared arguments
    positionally; a program of the state before init is refused."""
    import jax

    from klrl.sharding import STATE, ShardedTrainer, population_mesh
    from klrl.train import StaticConfig, Trainer, make_train

    cfg = StaticConfig(env={"name": "CartPole-v1", "num_envs": 2}, agent={"name": "dqn", "hidden": (8,)},
                       train={"total_steps": 40, "chunk_steps": 20, "buffer_size": 32, "batch_size": 4,
                              "learning_starts": 8}, eval={"episodes": 1})
    tr = make_train(cfg)
    assert set(tr.signatures) <= set(Trainer._fields)
    for name, sig in tr.signatures.items():
        inspect.signature(getattr(tr, name)).bind(*range(len(sig.args)))   # TypeError if not
    sharded = ShardedTrainer(tr, 3, mesh=population_mesh(jax.devices()[:1]))
    for name in (n for n, s in tr.signatures.items() if STATE in jax.tree.leaves(s)):
        if name != "init":
            with pytest.raises(RuntimeError, match="call init first"):
                sharded.program(name)


def test_a_second_init_of_the_same_layout_reuses_the_compiled_programs():
    """`init` rebuilds the programs only when the state's layout changes (a bench that starts
    the same population several times compiles once)."""
    import jax
    import numpy as np

    from klrl.sharding import ShardedTrainer, population_mesh
    from klrl.train import StaticConfig, make_train

    cfg = StaticConfig(env={"name": "CartPole-v1", "num_envs": 2}, agent={"name": "dqn", "hidden": (8,)},
                       train={"total_steps": 40, "chunk_steps": 20, "buffer_size": 32, "batch_size": 4,
                              "learning_starts": 8}, eval={"episodes": 1})
    sharded = ShardedTrainer(make_train(cfg), 2, mesh=population_mesh(jax.devices()[:1]))
    host_keys = np.asarray(jax.random.split(jax.random.PRNGKey(0), 2))
    keys = sharded.put_members(host_keys)

    def start():
        return sharded.init(keys, {}, sharded.put_replicated(()), sharded.env_start(host_keys, keys, 0))

    first = start()
    programs = dict(sharded._programs)
    again = start()
    assert sharded._programs["init"] is programs["init"]
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again)))
    sharded.layout = None      # as if an earlier layout were different: the programs are rebuilt
    start()
    assert sharded._programs["init"] is not programs["init"]
