"""Training through the host pool backend (`env_backend="pool"`, klrl.envs.pool: numpy envs
behind an ordered io_callback, reset on the host, next-step autoreset, no vmap, not
checkpointable). A pool cannot play fresh episodes in-graph, so it evaluates concurrently:
test envs inside the pool, stepped with the training envs.

The recipe (klrl.runner does the same): `state = jit(init)(keys, hp, ref_params,
trainer.env_start(keys, 0))`, then `run_chunk` in a host loop (`train` needs an in-graph
reset). Smoke tests compile without XLA backend optimisation (about half the compile time).
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klrl.agents import AGENTS
from klrl.checkpoint import PopulationCheckpointer
from klrl.train import StaticConfig, make_train

from engine_helpers import CARTPOLE_MIN_EPISODE
from engine_helpers import compiled as _compiled
from engine_helpers import member_keys as _keys

BASE_METRICS = {"step", "train_return", "eval_return", "loss", "diverged"}


def _chunks(tr, state, hp, run_chunk, n=None):
    """n chunks (default: the run's) in a host loop -> (final state, metrics [chunks, M])."""
    rows = []
    for _ in range(tr.num_chunks if n is None else n):
        state, m = run_chunk(state, hp)
        rows.append(m)
    return state, {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}


# ---- every agent through the pool -----------------------------------------------------------------

# QSharpTree-v0 (depth 3, rewards in [0, 1] at the leaves): every episode is 3 steps plus one
# autoreset step, so each chunk of 12 vector steps ends train and test episodes and every
# metric is finite by construction.
TREE = StaticConfig(env={"name": "QSharpTree-v0", "backend": "pool", "num_envs": 2},
                    agent={"hidden": (4,), "loss": "l2", "num_atoms": 5, "v_min": 0.0, "v_max": 1.0},
                    train={"total_steps": 48, "chunk_steps": 24,
                           "buffer_size": 32, "batch_size": 4, "learning_starts": 8, "update_every": 2,
                           "target_update_every": 8},
                    eval={"mode": "concurrent", "envs": 1})
POOL_AGENTS = [(name, "td") for name in AGENTS] + [("qsharp", "rollout")]


# One agent per trainer path runs (compiled): a plain value target, extra nets (the previous
# target), a distributional head, an own actor with a reference policy, an own data source.
# Every other agent is traced end to end (eval_shape of init and run_chunk: its whole wiring);
# the full product runs in `slow`. Every loss is checked numerically in test_agents.py.
PATHS = [("dqn", "td"), ("mdkl", "td"), ("c51", "td"), ("qsharp", "td"), ("qsharp", "rollout")]


def _tree_trainer(name, mode):
    agent = AGENTS[name]
    cfg = TREE.replace(agent={"name": name, "qsharp_mode": mode,
                              "reference": "uniform" if agent.needs_reference else "none"})
    tr = make_train(cfg)
    assert not tr.traits.in_graph_reset and not tr.traits.checkpointable
    return tr, agent


def _run_through_the_pool(name, mode):
    tr, agent = _tree_trainer(name, mode)
    keys = _keys(0, 1)
    state0 = tr.init(keys, {}, (), tr.env_start(keys, 0))
    state, m = _chunks(tr, state0, {}, _compiled(tr.run_chunk, state0, {}))
    assert BASE_METRICS <= set(m) and ("kl_ref" in m) == agent.needs_reference
    for k, v in m.items():
        assert v.shape == (2, 2) and np.all(np.isfinite(v)), (k, v)
    np.testing.assert_array_equal(m["step"], [[24, 24], [48, 48]])
    assert not np.any(m["diverged"])
    for k in ("train_return", "eval_return"):
        assert np.all((m[k] >= 0) & (m[k] <= 1)), (k, m[k])
    assert int(state.env.steps) == 24        # the pool token: one pool step per vector step, 2 x 12
    assert any(not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(state.learner.params), jax.tree.leaves(state0.learner.params)))
    if mode == "rollout":                    # the agent learns from the labels its actor records
        assert state.replay == () and np.all(np.asarray(state.actor.carry.store_size) > 0)
    else:
        assert state.replay.data["frame"].shape == (2, 16, 2, 14)


@pytest.mark.parametrize("name,mode", PATHS, ids=[f"{n}-{m}" for n, m in PATHS])
def test_each_trainer_path_runs_through_the_pool(name, mode):
    _run_through_the_pool(name, mode)


@pytest.mark.parametrize("name,mode", POOL_AGENTS, ids=[f"{n}-{m}" for n, m in POOL_AGENTS])
def test_every_agent_traces_through_the_pool(name, mode):
    """Traced, not compiled: the whole chunk program's wiring, metric names, shapes and dtypes."""
    assert {n for n, _ in POOL_AGENTS} == set(AGENTS) and set(PATHS) <= set(POOL_AGENTS)
    tr, agent = _tree_trainer(name, mode)
    keys = _keys(0, 1)
    state0 = jax.eval_shape(tr.init, keys, {}, (), tr.env_start(keys, 0))
    state, m = jax.eval_shape(tr.run_chunk, state0, {})
    assert BASE_METRICS <= set(m) and ("kl_ref" in m) == agent.needs_reference
    assert all(v.shape == (2,) and v.dtype == jnp.float32 for v in m.values()), m
    assert jax.tree.structure(state) == jax.tree.structure(state0)
    assert [x.shape for x in jax.tree.leaves(state)] == [x.shape for x in jax.tree.leaves(state0)]


@pytest.mark.slow
@pytest.mark.parametrize("name,mode", POOL_AGENTS, ids=[f"{n}-{m}" for n, m in POOL_AGENTS])
def test_every_agent_runs_through_the_pool(name, mode):
    _run_through_the_pool(name, mode)


# ---- CartPole through the pool: determinism, members, resume --------------------------------------

CARTPOLE = StaticConfig(env={"name": "CartPole-v1", "backend": "pool", "num_envs": 2},
                        agent={"name": "mdqn", "hidden": (8,), "loss": "l2"},
                        train={"total_steps": 160, "chunk_steps": 80,
                               "buffer_size": 64, "batch_size": 8, "learning_starts": 20, "update_every": 2,
                               "target_update_every": 20},
                        eval={"mode": "concurrent", "envs": 2})


@pytest.fixture(scope="module")
def cartpole_pool():
    """Members: seed 0, seed 0 again, seed 1; the same run twice (the pool re-reset in between)."""
    tr = make_train(CARTPOLE)
    keys = _keys(0, 0, 1)
    init = jax.jit(tr.init)
    state0 = init(keys, {}, (), tr.env_start(keys, 0))
    run_chunk = _compiled(tr.run_chunk, state0, {})
    runs = [_chunks(tr, state0, {}, run_chunk)]
    runs.append(_chunks(tr, init(keys, {}, (), tr.env_start(keys, 0)), {}, run_chunk))
    return tr, keys, run_chunk, runs


def test_pool_runs_are_reproducible_and_members_independent(cartpole_pool):
    tr, keys, _, [(state, m), (state2, m2)] = cartpole_pool
    # the pool is seeded from the member keys: the same keys replay the same run bit for bit
    for a, b in zip(jax.tree.leaves((state, m)), jax.tree.leaves((state2, m2))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # members 0 and 1 share a key: same env seeds, same trajectories, same learning
    for x in jax.tree.leaves((state.learner, state.actor, state.replay.data)):
        np.testing.assert_array_equal(np.asarray(x)[0], np.asarray(x)[1])
    for v in m.values():
        np.testing.assert_array_equal(v[:, 0], v[:, 1])
    # member 2 has its own envs and exploration
    assert not np.array_equal(state.replay.data["frame"][0], state.replay.data["frame"][2])
    assert not np.array_equal(state.replay.data["action"][0], state.replay.data["action"][2])
    # the contract: train envs then test envs in the acting state; one pool step per vector step
    assert state.actor.obs.shape == (3, 2 + 2, 4) and int(state.env.steps) == 80
    np.testing.assert_array_equal(m["step"][:, 0], [80, 160])
    assert np.all(np.isfinite(m["loss"])) and not np.any(m["diverged"])
    ev = m["eval_return"]
    done = ev[np.isfinite(ev)]
    assert np.all(np.isfinite(ev[-1])) and np.all((done >= CARTPOLE_MIN_EPISODE) & (done <= 500))


def test_pool_needs_a_host_reset(cartpole_pool):
    tr, keys, _, _ = cartpole_pool
    with pytest.raises(ValueError, match="env_start"):
        jax.eval_shape(tr.init, keys, {})          # traced only: the check precedes any env call
    with pytest.raises(ValueError, match="env_start"):
        jax.eval_shape(tr.train, keys, {})
    # another salt re-seeds the pool: other first observations
    _, obs0 = tr.env_start(keys, 0)
    _, obs1 = tr.env_start(keys, 1)
    assert obs0.shape == (3, 4, 4) and not np.array_equal(obs0, obs1)
    np.testing.assert_array_equal(obs0[0], obs0[1])


def test_pool_run_resumes_from_a_checkpoint_without_its_envs(cartpole_pool, tmp_path):
    """A pool is not checkpointable: the saved state drops the env; on resume the learner,
    optimizer, replay, keys and counters come back bit-exact and the pool is re-reset
    (`reenter`): every env starts a fresh episode, and training goes on."""
    tr, keys, run_chunk, [(state, m), _] = cartpole_pool
    ck = PopulationCheckpointer(str(tmp_path / "ck"), "pool")
    ck.save(2, state._replace(env=()), m, {"agent": "mdqn"})
    ck.close()
    ck = PopulationCheckpointer(str(tmp_path / "ck"), "pool")
    template = jax.jit(tr.init)(keys, {}, (), tr.env_start(keys, 0))._replace(env=())
    restored, hist, meta = ck.restore(template)
    ck.close()
    assert meta["chunks_done"] == 2 and set(hist) == set(m)
    for k in m:
        np.testing.assert_array_equal(hist[k], m[k])
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state._replace(env=()))):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    resumed = tr.reenter(restored, tr.env_start(keys, 2))
    assert int(resumed.env.steps) == 0 and bool(np.all(resumed.actor.first))
    for a, b in zip(jax.tree.leaves((resumed.learner, resumed.replay, resumed.counters)),
                    jax.tree.leaves((state.learner, state.replay, state.counters))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    after, m3 = _chunks(tr, resumed, {}, run_chunk, n=1)
    np.testing.assert_array_equal(m3["step"][0], [240, 240, 240])
    assert np.all(np.isfinite(m3["loss"])) and not np.any(m3["diverged"]) and int(after.env.steps) == 40


# ---- learning through the pool ------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ["dqn", "mdqn"])
def test_pool_learns_cartpole(name):
    """The gymnax learning bar through the pool: median final (concurrent, greedy) eval return
    >= 475 over 3 seeds, with experiments/quickstart.toml's settings (L2 loss, one update per
    vector step of 10 envs, 300k env steps)."""
    cfg = StaticConfig(env={"name": "CartPole-v1", "backend": "pool", "num_envs": 10},
                       agent={"name": name, "hidden": (120, 84), "loss": "l2"},
                       train={"total_steps": 300_000,
                              "chunk_steps": 25_000, "buffer_size": 10_000, "batch_size": 128,
                              "learning_starts": 10_000, "update_every": 10, "target_update_every": 500},
                       eval={"mode": "concurrent", "envs": 2})
    tr = make_train(cfg)
    keys = _keys(0, 1, 2)
    state = jax.jit(tr.init)(keys, {}, (), tr.env_start(keys, 0))
    _, m = _chunks(tr, state, {}, jax.jit(tr.run_chunk))
    ev = m["eval_return"]
    print(f"{name} pool eval_return per chunk:\n{np.round(ev, 1)}")
    assert np.all(ev[0] < 100)                              # the untrained policy is far below
    assert float(np.median(ev[-1])) >= 475.0, ev[-1]


def test_reenter_restarts_the_rollout_actors_episodes_and_keeps_its_labels():
    """After a pool re-reset (resume) the Q♯ rollout actor must not pair the lost episode's
    switch point with the new episode's return: per-episode bookkeeping restarts, labels stay."""
    cfg = StaticConfig(env={"name": "CartPole-v1", "backend": "pool", "num_envs": 2},
                       agent={"name": "qsharp", "qsharp_mode": "rollout", "qsharp_switch_horizon": 2,
                              "reference": "uniform", "hidden": (4,), "num_atoms": 5},
                       train={"total_steps": 40, "chunk_steps": 20, "buffer_size": 32,
                              "batch_size": 4, "learning_starts": 8, "update_every": 2, "target_update_every": 8},
                       eval={"mode": "concurrent"})
    tr = make_train(cfg)
    keys = jnp.stack([jax.random.PRNGKey(0), jax.random.PRNGKey(1)])
    s = tr.init(keys, {}, (), tr.env_start(keys, 0))
    s, _ = _compiled(tr.run_chunk, s, {})(s, {})
    assert np.any(np.asarray(s.actor.carry.t) > 0)            # episodes in flight before the seam
    r = tr.reenter(s, tr.env_start(keys, 1))
    c, old = r.actor.carry, s.actor.carry
    assert np.all(np.asarray(r.actor.first))
    assert np.all(np.asarray(c.t) == 0) and not np.any(np.asarray(c.switched)) and np.all(np.asarray(c.ret) == 0)
    assert np.all(np.asarray(c.h) >= 0) and np.all(np.asarray(c.h) < 2)
    for name in ("store_obs", "store_action", "store_ret", "store_pos", "store_size"):
        np.testing.assert_array_equal(np.asarray(getattr(c, name)), np.asarray(getattr(old, name)))
