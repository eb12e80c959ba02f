"""klrl.train: the contract (.notes/train_contract.md), determinism, divergence, shared replay.

Compiles are the cost here: one tiny per-member program (4 members) serves determinism,
key independence and divergence; one tiny shared-replay program serves the shared checks.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klrl import replay as rb
from klrl.agents import AGENTS
from klrl.errors import ConfigError
from klrl.train import HPARAMS, StaticConfig, TrainState, epsilon, hparams_used, make_train

TINY = StaticConfig(env="CartPole-v1", agent="mdqn", num_envs=2, total_steps=160, chunk_steps=80,
                    buffer_size=64, batch_size=8, learning_starts=20, target_update_every=20,
                    hidden=(8,), eval_episodes=2, loss="l2")
METRICS = {"step", "train_return", "eval_return", "loss", "diverged"}


def _keys(*seeds):
    return jnp.stack([jax.random.PRNGKey(s) for s in seeds])


@pytest.fixture(scope="module")
def per_member_run():
    """Members: seed 0, seed 0 again, seed 1, seed 2 with an absurd learning rate."""
    tr = make_train(TINY)
    keys = _keys(0, 0, 1, 2)
    hp = {"learning_rate": jnp.array([2.5e-4, 2.5e-4, 2.5e-4, 1e30], jnp.float32)}
    train = jax.jit(tr.train)
    state, metrics = train(keys, hp)
    state2, metrics2 = train(keys, hp)
    return tr, keys, hp, state, metrics, state2, metrics2


def test_contract_shapes_and_types(per_member_run):
    tr, keys, hp, state, metrics, _, _ = per_member_run
    assert tr.num_chunks == 2
    assert set(metrics) == METRICS
    for v in metrics.values():
        assert v.shape == (2, 4) and v.dtype == jnp.float32
    np.testing.assert_array_equal(metrics["step"][:, 0], [80, 160])
    assert isinstance(state, TrainState)
    leaves = jax.tree.leaves(state)
    assert all(isinstance(x, jax.Array) for x in leaves)
    assert not any(jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) for x in leaves)
    assert state.obs.shape == (4, 2, 4) and int(state.vstep) == 80
    assert state.replay.data.obs.shape == (4, 64, 4)


def test_same_key_bit_exact_and_different_keys_differ(per_member_run):
    _, _, _, state, metrics, state2, metrics2 = per_member_run
    # Same program, same keys: bit-identical results, run to run.
    for a, b in zip(jax.tree.leaves((state, metrics)), jax.tree.leaves((state2, metrics2))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Members 0 and 1 share a key (and hyperparameters): identical in every respect.
    for x in jax.tree.leaves((state.params, state.replay.data, metrics)):
        np.testing.assert_array_equal(np.asarray(x[0] if x.shape[0] == 4 else x[:, 0]),
                                      np.asarray(x[1] if x.shape[0] == 4 else x[:, 1]))
    # Member 2 has another key: different initialisation and different exploration.
    init0 = make_train(TINY).init(_keys(0, 1), {})
    kernels = [x for path, x in jax.tree_util.tree_leaves_with_path(init0.params) if "kernel" in str(path)]
    assert len(kernels) == 2 and all(not np.array_equal(x[0], x[1]) for x in kernels)
    assert not np.array_equal(state.replay.data.action[0], state.replay.data.action[2])
    assert not np.array_equal(state.replay.data.obs[0], state.replay.data.obs[2])


def test_diverging_member_is_flagged_and_frozen(per_member_run):
    _, _, _, state, metrics, _, _ = per_member_run
    np.testing.assert_array_equal(metrics["diverged"][-1], [0, 0, 0, 1])
    assert np.all(np.isfinite(metrics["loss"][:, :3]))
    assert np.all(np.isfinite(metrics["eval_return"]))
    for x in jax.tree.leaves((state.params, state.target_params, state.opt_state)):
        assert np.all(np.isfinite(np.asarray(x, np.float64)))


def test_host_loop_of_chunks_equals_train(per_member_run):
    tr, keys, hp, state, metrics, _, _ = per_member_run
    s = jax.jit(tr.init)(keys, hp)
    run_chunk = jax.jit(tr.run_chunk)
    rows = []
    for _ in range(tr.num_chunks):
        s, m = run_chunk(s, hp)
        rows.append(m)
    for name in METRICS:
        np.testing.assert_array_equal(np.stack([r[name] for r in rows]), metrics[name])
    for a, b in zip(jax.tree.leaves(s.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, b)


def test_shared_replay_one_buffer_same_batches():
    cfg = dataclasses.replace(TINY, replay_mode="shared", total_steps=80)
    tr = make_train(cfg)
    keys = _keys(3, 4, 5)
    state, metrics = jax.jit(tr.train)(keys, {})
    # one buffer for all members; it received M·E items per vector step
    assert state.replay.data.obs.shape == (64, 4)
    assert int(state.replay.size) == 64 and int(state.replay.pos) == (40 * 3 * 2) % 64
    # shared sampling yields ONE minibatch (no member axis): the trainer's vmapped update takes
    # it with in_axes=None, so every member learns from the same rows of the one buffer
    batch, idx = rb.sample(state.replay, state.shared_sample_key, 8, "shared")
    assert idx.shape == (8,) and batch.obs.shape == (8, 4)
    np.testing.assert_array_equal(batch.obs, state.replay.data.obs[idx])
    # members still explore independently
    assert not np.array_equal(state.obs[0], state.obs[1])
    assert np.all(np.isfinite(metrics["loss"]))


def test_epsilon_schedule_linear_then_flat():
    hp = {"epsilon_start": 1.0, "epsilon_end": 0.1, "epsilon_fraction": 0.5}
    eps = [float(epsilon(jnp.int32(t), hp, 1000)) for t in (0, 250, 500, 900)]
    np.testing.assert_allclose(eps, [1.0, 0.55, 0.1, 0.1], rtol=1e-6)


def test_hparams_used_and_validation():
    for name, agent in AGENTS.items():
        used = hparams_used(dataclasses.replace(TINY, agent=name))
        assert set(agent.hparams) <= set(used) <= set(HPARAMS)
        assert "polyak" not in used  # TINY uses hard target updates
    # ε-schedule values only matter for ε-greedy acting
    assert "epsilon_start" not in hparams_used(dataclasses.replace(TINY, acting="softmax"))
    assert "softmax_temperature" not in hparams_used(TINY)
    assert "entropic_index" in hparams_used(dataclasses.replace(TINY, agent="mvi"))
    assert "polyak" in hparams_used(dataclasses.replace(TINY, target_update="polyak"))
    with pytest.raises(ConfigError, match="agent: got 'ppo'"):
        make_train(dataclasses.replace(TINY, agent="ppo"))
    with pytest.raises(ConfigError, match="chunk_steps"):
        make_train(dataclasses.replace(TINY, chunk_steps=70))
    with pytest.raises(ConfigError, match="hparams: got 'lr'"):
        make_train(TINY).init(_keys(0), {"lr": jnp.ones(1)})


ENGINE_AGENTS = ["dqn", "double_dqn", "soft_dqn", "al", "pal", "mdqn", "mvi", "mdkl", "c51"]


@pytest.mark.parametrize("name", ENGINE_AGENTS)   # Q♯ agents are covered by tests/test_qsharp*.py
def test_every_agent_runs_end_to_end(name):
    tr = make_train(dataclasses.replace(TINY, agent=name, num_atoms=11))
    _, metrics = jax.jit(tr.train)(_keys(0, 1), {})
    assert np.all(np.isfinite(metrics["loss"])) and not np.any(metrics["diverged"])


@pytest.mark.parametrize("overrides", [
    {"env": "Breakout-MinAtar"},
    {"target_update": "polyak", "acting": "softmax", "loss": "huber"},
    {"agent": "mvi", "replay_mode": "shared", "buffer_size": 60},   # scatter write path
])
def test_variants_run_end_to_end(overrides):
    tr = make_train(dataclasses.replace(TINY, **overrides))
    _, metrics = jax.jit(tr.train)(_keys(0, 1), {"entropic_index": jnp.array([1.5, 2.0])})
    assert np.all(np.isfinite(metrics["loss"])) and not np.any(metrics["diverged"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dqn", "mdqn"])
def test_learns_cartpole(name):
    """The learning check: median greedy eval return >= 475 over 3 seeds after 500k env steps
    (reference configuration with the L2 loss; see klrl.bench.train.REFERENCE)."""
    cfg = StaticConfig(env="CartPole-v1", agent=name, total_steps=500_000, chunk_steps=50_000, loss="l2")
    _, metrics = jax.jit(make_train(cfg).train)(_keys(0, 1, 2), {})
    assert float(np.median(metrics["eval_return"][-1])) >= 475.0


def test_bench_train_quick_writes_rows(tmp_path):
    """Smoke test of `klrl bench train` (structure only; speed is the benchmark's business)."""
    import json

    from klrl.bench.train import bench_train

    out = tmp_path / "train.json"
    bench_train(str(out), quick=True, members=(1,), repeats=1)
    data = json.loads(out.read_text())
    assert {"machine", "versions", "rows"} <= set(data)
    (row,) = data["rows"]
    assert {"members", "seconds", "compile_seconds", "agent_steps_per_second", "per_member_cost_ratio"} <= set(row)
    assert row["members"] == 1 and row["per_member_cost_ratio"] == 1.0 and row["seconds"] > 0
