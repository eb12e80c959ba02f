"""Orbax save/restore of an arbitrary learner-state pytree (klrl.checkpoint)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klrl.checkpoint import PopulationCheckpointer
from klrl.errors import ConfigError


class _State(NamedTuple):
    params: dict
    keys: jax.Array
    step: jax.Array
    flags: jax.Array


def _state(seed: int) -> _State:
    k = jax.random.PRNGKey(seed)
    return _State(
        params={"w": jax.random.normal(k, (3, 4, 5)), "b": jnp.array([np.nan, np.inf, -0.0], jnp.float32)},
        keys=jax.random.split(k, 3),                       # uint32 [3, 2]
        step=jnp.int32(7 + seed),
        flags=jnp.array([True, False, seed % 2 == 1]),
    )


def _assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()          # bit-exact, NaN and -0.0 included


def test_save_restore_is_bit_exact(tmp_path):
    state = _state(1)
    history = {"step": np.array([[10.0, 10.0, 10.0]], np.float32),
               "loss": np.array([[np.nan, 0.25, 1e-8]], np.float32)}
    ck = PopulationCheckpointer(str(tmp_path / "ck"), "hash-a")
    assert ck.latest_step() is None
    ck.save(1, state, history, {"agent": "mdqn"})
    ck.save(2, _state(2), {k: np.concatenate([v, v]) for k, v in history.items()}, {"agent": "mdqn"})
    ck.close()

    ck = PopulationCheckpointer(str(tmp_path / "ck"), "hash-a")
    assert ck.latest_step() == 2
    fresh = jax.tree.map(jnp.zeros_like, state)         # shapes/dtypes from a fresh state
    restored, hist, meta = ck.restore(fresh, step=1)
    assert isinstance(restored, _State)
    _assert_same(restored, state)
    _assert_same(hist, history)
    assert meta["agent"] == "mdqn" and meta["chunks_done"] == 1 and meta["config_hash"] == "hash-a"
    latest, hist2, _ = ck.restore(fresh)
    _assert_same(latest, _state(2))
    assert hist2["loss"].shape == (2, 3)
    meta_only, hist_only = ck.restore_metrics()
    assert meta_only["chunks_done"] == 2
    _assert_same(hist_only, hist2)
    ck.close()


def test_checkpoint_from_another_config_is_refused(tmp_path):
    ck = PopulationCheckpointer(str(tmp_path / "ck"), "hash-a")
    ck.save(1, _state(0), {"step": np.zeros((1, 3), np.float32)}, {})
    ck.close()
    other = PopulationCheckpointer(str(tmp_path / "ck"), "hash-b")
    with pytest.raises(ConfigError, match="different config"):
        other.restore(_state(0))
    with pytest.raises(ConfigError, match="different config"):
        other.restore_metrics()
    other.close()


def test_train_state_round_trip_and_exact_resume(tmp_path):
    """A real klrl.train TrainState (grouped NamedTuples; `()` leaves for the actor carry and
    the reference; mdkl's previous target network; the replay ring; uint32 key streams)
    restores bit-exactly, and a run continued from the restored state is the run continued
    from the saved one: in-graph envs are checkpointable, so resume is exact."""
    from klrl.train import StaticConfig, make_train

    cfg = StaticConfig(env={"name": "CartPole-v1", "num_envs": 2},
                       agent={"name": "mdkl", "hidden": (4,), "loss": "l2"},
                       train={"total_steps": 120, "chunk_steps": 40, "buffer_size": 32, "batch_size": 4,
                              "learning_starts": 10, "update_every": 2, "target_update_every": 10},
                       eval={"episodes": 1})
    tr = make_train(cfg)
    assert tr.traits.checkpointable
    keys = jnp.stack([jax.random.PRNGKey(0), jax.random.PRNGKey(1)])
    state0 = jax.jit(tr.init)(keys, {})
    run_chunk = jax.jit(tr.run_chunk).lower(state0, {}).compile({"xla_backend_optimization_level": 0})
    state1, m1 = run_chunk(state0, {})
    history = {k: np.asarray(v)[None] for k, v in m1.items()}
    ck = PopulationCheckpointer(str(tmp_path / "ck"), "hash-t")
    ck.save(1, state1, history, {"agent": "mdkl"})
    ck.close()

    ck = PopulationCheckpointer(str(tmp_path / "ck"), "hash-t")
    restored, hist, meta = ck.restore(jax.tree.map(jnp.zeros_like, state0))
    ck.close()
    assert type(restored) is type(state1) and meta["chunks_done"] == 1
    assert restored.actor.carry == () and restored.reference == ()
    _assert_same(restored, state1)
    _assert_same(hist, history)
    a, ma = run_chunk(state1, {})
    b, mb = run_chunk(restored, {})
    _assert_same((a, ma), (b, mb))
