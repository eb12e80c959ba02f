"""klrl.train: the contract, determinism, divergence, shared replay, the update cadence, gradient
clipping, the two replay stores, the two evaluation strategies and the loss aux metrics.

Compiles are the cost here: one tiny per-member program (4 members) serves the contract,
determinism, key independence, divergence and the host loop; one program per replay store
serves the update cadence, the aux metrics and the frames/transitions comparison; smoke tests
compile without backend optimisation (`_compiled(..., fast=True)`: about half the compile
time, same semantics).
"""

import dataclasses
import functools
import re
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from engine_helpers import CARTPOLE_MIN_EPISODE
from engine_helpers import compiled as _compiled
from engine_helpers import member_keys as _keys
from klrl import replay as rb
from klrl.actors import epsilon
from klrl.agents import AGENTS, Context, Nets
from klrl.errors import ConfigError
from klrl.networks import make_network
from klrl.train import (HPARAMS, ActorState, Counters, Keys, Learner, StaticConfig, TrainState, check_members,
                        hparams_used, make_optimizer, make_train, make_update, prepare_hparams)

# update_every=2 with 2 envs: one gradient update per vector step (the old train_every=1).
TINY = StaticConfig(env={"name": "CartPole-v1", "num_envs": 2}, agent={"name": "mdqn", "hidden": (8,), "loss": "l2"},
                    train={"total_steps": 160, "chunk_steps": 80, "buffer_size": 64, "batch_size": 8,
                           "learning_starts": 20, "update_every": 2, "target_update_every": 20},
                    eval={"episodes": 2})
BASE_METRICS = {"step", "train_return", "eval_return", "loss", "diverged"}
METRICS = BASE_METRICS | {"q_mean", "target_mean"}      # + mdqn's loss aux


def _adam_count(learner) -> np.ndarray:
    """Adam's step count per member: +1 per gradient update (optax chain: [clip,] adam, lr)."""
    (adam,) = [s for s in learner.opt_state if isinstance(s, optax.ScaleByAdamState)]
    return np.asarray(adam.count)


def _expected_updates(cfg, vsteps: int) -> int:
    """Updates after `vsteps` vector steps: one per `update_every` env steps, once
    vstep·E >= learning_starts (the trainer's rule, written out)."""
    E, U = cfg.env.num_envs, cfg.train.update_every
    return sum(v * E // U - (v - 1) * E // U for v in range(1, vsteps + 1) if v * E >= cfg.train.learning_starts)


def _probe_agent():
    """DQN whose loss aux also fingerprints its minibatch (summed weighted obs and actions)
    and reports a constant 1, so metrics show which data each member learned from and how
    aux values are averaged over a chunk's updates."""
    base = AGENTS["dqn"]

    def loss(nets, batch, hp, cfg, ctx, key=None):
        value, aux = base.loss(nets, batch, hp, cfg, ctx, key)
        w = batch.weight
        return value, {**aux, "probe_one": jnp.float32(1.0),
                       "probe_obs": jnp.sum(w[:, None] * batch.obs.reshape(w.shape[0], -1)),
                       "probe_action": jnp.sum(w * batch.action)}

    return dataclasses.replace(base, name="probe", loss=loss)


def _make_train_with_probe(cfg):
    """make_train(cfg) with the probe agent in place of cfg's (injected: no registry change)."""
    return make_train(cfg, agent=_probe_agent())


def _host_loop(tr, state, hp, run_chunk=None):
    """Chunks one by one: (states after each chunk, metrics stacked [chunks, M])."""
    run_chunk = run_chunk or jax.jit(tr.run_chunk)
    states, rows = [], []
    for _ in range(tr.num_chunks):
        state, m = run_chunk(state, hp)
        states.append(state)
        rows.append(m)
    return states, {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}


# ---- the per-member program ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def per_member_run():
    """Members: seed 0, seed 0 again, seed 1, seed 2 with an absurd learning rate."""
    tr = make_train(TINY)
    keys = _keys(0, 0, 1, 2)
    hp = {"learning_rate": jnp.array([2.5e-4, 2.5e-4, 2.5e-4, 1e30], jnp.float32)}
    train = jax.jit(tr.train)
    state, metrics = train(keys, hp)
    state2, metrics2 = train(keys, hp)
    chunk_states, chunk_metrics = _host_loop(tr, jax.jit(tr.init)(keys, hp), hp)
    return SimpleNamespace(tr=tr, keys=keys, hp=hp, state=state, metrics=metrics, state2=state2,
                           metrics2=metrics2, chunk_states=chunk_states, chunk_metrics=chunk_metrics)


def test_contract_shapes_and_types(per_member_run):
    r = per_member_run
    tr, state, metrics = r.tr, r.state, r.metrics
    assert tr.num_chunks == 2
    assert tr.traits.in_graph_reset and tr.traits.checkpointable and tr.reference is None
    assert tr.spec.obs_shape == (4,) and tr.spec.num_actions == 2 and tr.spec.frame_stack == 1
    assert set(metrics) == METRICS
    for v in metrics.values():
        assert v.shape == (2, 4) and v.dtype == jnp.float32
    np.testing.assert_array_equal(metrics["step"][:, 0], [80, 160])
    assert isinstance(state, TrainState) and isinstance(state.learner, Learner)
    assert isinstance(state.actor, ActorState) and isinstance(state.keys, Keys)
    assert isinstance(state.counters, Counters)
    leaves = jax.tree.leaves(state)
    assert all(isinstance(x, jax.Array) for x in leaves)
    assert not any(jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) for x in leaves)
    assert state.actor.obs.shape == (4, 2, 4) and state.actor.first.shape == (4, 2)
    assert state.actor.first.dtype == jnp.bool_ and state.actor.carry == ()
    assert int(state.counters.vstep) == 80 and int(state.counters.chunk) == 2
    assert state.counters.vstep.shape == () and state.counters.vstep.dtype == jnp.int32
    assert state.learner.diverged.shape == (4,) and state.learner.prev_target_params == ()
    assert state.keys.sample.shape == (4, 2) and state.keys.eval.shape == (4, 2) and state.keys.shared.shape == (2,)
    assert state.reference == ()
    # frames store, per member: [M, T = 64 // 2, E, ...]; 80 adds into a ring of 32 slots
    data = state.replay.data
    assert data["frame"].shape == (4, 32, 2, 4) and data["action"].shape == (4, 32, 2)
    assert int(state.replay.size) == 32 and int(state.replay.pos) == 80 % 32
    # one update per vector step from env step 20 on: 80 - 10 + 1 = 71 (members that train)
    assert _expected_updates(TINY, 80) == 71
    np.testing.assert_array_equal(_adam_count(state.learner)[:3], [71, 71, 71])


def test_loss_aux_metrics_are_reported(per_member_run):
    m = per_member_run.metrics
    for name in ("q_mean", "target_mean"):
        assert np.all(np.isfinite(m[name][:, :3]))
    # the aux values are of the same run as the loss: identical members, identical aux
    np.testing.assert_array_equal(m["q_mean"][:, 0], m["q_mean"][:, 1])
    assert not np.array_equal(m["q_mean"][:, 0], m["q_mean"][:, 2])


def test_same_key_bit_exact_and_different_keys_differ(per_member_run):
    r = per_member_run
    state, metrics = r.state, r.metrics
    # Same program, same keys: bit-identical results, run to run.
    for a, b in zip(jax.tree.leaves((state, metrics)), jax.tree.leaves((r.state2, r.metrics2))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Members 0 and 1 share a key (and hyperparameters): identical in every respect.
    for x in jax.tree.leaves((state.learner, state.actor, state.replay.data, state.keys.sample, state.keys.eval)):
        np.testing.assert_array_equal(np.asarray(x[0]), np.asarray(x[1]))
    for x in metrics.values():
        np.testing.assert_array_equal(x[:, 0], x[:, 1])
    # Member 2 has another key: different initialisation and different exploration.
    init0 = make_train(TINY).init(_keys(0, 1), {})
    kernels = [x for path, x in jax.tree_util.tree_leaves_with_path(init0.learner.params) if "kernel" in str(path)]
    assert len(kernels) == 2 and all(not np.array_equal(x[0], x[1]) for x in kernels)
    assert not np.array_equal(state.replay.data["action"][0], state.replay.data["action"][2])
    assert not np.array_equal(state.replay.data["frame"][0], state.replay.data["frame"][2])


def test_diverging_member_is_flagged_and_frozen(per_member_run):
    r = per_member_run
    state, metrics = r.state, r.metrics
    np.testing.assert_array_equal(metrics["diverged"], [[0, 0, 0, 1], [0, 0, 0, 1]])
    assert np.all(np.isfinite(metrics["loss"][:, :3]))
    assert np.all(np.isfinite(metrics["eval_return"]))
    # Networks stay finite (frozen at the last finite update); only a diverged member's
    # optimizer state may be non-finite (it is never used again).
    for x in jax.tree.leaves((state.learner.params, state.learner.target_params)):
        assert np.all(np.isfinite(np.asarray(x, np.float64)))
    for x in jax.tree.leaves(state.learner.opt_state):
        assert np.all(np.isfinite(np.asarray(x, np.float64)[:3]))
    # Frozen: member 3's networks do not move from chunk 1 to chunk 2; the others keep training.
    first, second = r.chunk_states
    for a, b in zip(jax.tree.leaves((first.learner.params, first.learner.target_params)),
                    jax.tree.leaves((second.learner.params, second.learner.target_params))):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_array_equal(a[3], b[3])
    for m in range(3):
        assert any(not np.array_equal(np.asarray(a)[m], np.asarray(b)[m])
                   for a, b in zip(jax.tree.leaves(first.learner.params), jax.tree.leaves(second.learner.params)))


def test_host_loop_of_chunks_equals_train(per_member_run):
    r = per_member_run
    assert set(r.chunk_metrics) == set(r.metrics)
    for name in r.metrics:
        np.testing.assert_array_equal(r.chunk_metrics[name], r.metrics[name])
    for a, b in zip(jax.tree.leaves(r.chunk_states[-1]), jax.tree.leaves(r.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---- shared replay ---------------------------------------------------------------------------------

def test_shared_replay_one_buffer_same_batches():
    cfg = TINY.replace(train={"replay_mode": "shared", "total_steps": 80, "buffer_size": 84})
    tr = _make_train_with_probe(cfg)
    keys = _keys(3, 4, 5)
    state, metrics = _compiled(tr.train, keys, {})(keys, {})
    # one buffer for all members: [T = 84 // (3 members * 2 envs), M*E columns, ...]
    data = state.replay.data
    assert data["frame"].shape == (14, 6, 4) and data["action"].shape == (14, 6)
    assert int(state.replay.size) == 14 and int(state.replay.pos) == 40 % 14
    # shared sampling yields ONE minibatch (no member axis) from the population stream
    replay = rb.make_replay("frames", obs_shape=(4,), obs_dtype=jnp.float32, frame_stack=1, members=3, envs=2,
                            capacity=84, mode="shared")
    batch, (ti, col) = replay.sample(state.replay, state.keys.shared, 8)
    assert ti.shape == (8,) and col.shape == (8,) and batch.obs.shape == (8, 4)
    np.testing.assert_array_equal(batch.obs, data["frame"][ti, col])
    np.testing.assert_array_equal(batch.action, data["action"][ti, col])
    # ... which every member learns from: the minibatch fingerprints agree bit for bit across
    # members (different keys, different networks: their q estimates differ)
    m = {k: np.asarray(v) for k, v in metrics.items()}
    for name in ("probe_obs", "probe_action"):
        assert np.all(m[name] != 0)
        np.testing.assert_array_equal(m[name], np.broadcast_to(m[name][:, :1], m[name].shape))
    assert not np.array_equal(m["q_mean"][:, 0], m["q_mean"][:, 1])
    # members still explore independently
    assert not np.array_equal(state.actor.obs[0], state.actor.obs[1])
    assert np.all(np.isfinite(m["loss"]))


# ---- update cadence, aux averaging, replay stores ------------------------------------------------

# 4 envs, one update per 3 env steps: 4/3 updates per vector step (1, 1, 2, 1, 1, 2, ...).
# Learning starts at env step 60 (vector step 15, inside chunk 2 of 12 vector steps).
# (The probe agent replaces CADENCE's agent in _make_train_with_probe.)
CADENCE = TINY.replace(env={"num_envs": 4}, train={"update_every": 3, "learning_starts": 60, "total_steps": 144,
                                                   "chunk_steps": 48, "buffer_size": 96, "batch_size": 8,
                                                   "target_update_every": 24}, eval={"episodes": 1})


@pytest.fixture(scope="module")
def store_runs():
    """The CADENCE program for each replay store, run chunk by chunk (lr = 0 and lr > 0)."""
    keys = _keys(0, 1)
    out = {}
    for store in ("frames", "transitions"):
        tr = _make_train_with_probe(CADENCE.replace(train={"replay_store": store}))
        s0 = tr.init(keys, {})
        run_chunk = _compiled(tr.run_chunk, s0, {"learning_rate": jnp.zeros(2, jnp.float32)})
        for name, lr in (("frozen", 0.0), ("learning", 1e-3)):
            hp = {"learning_rate": jnp.asarray(np.full(2, lr, np.float32))}
            out[store, name] = _host_loop(tr, tr.init(keys, hp), hp, run_chunk)
    return out


def test_update_every_counts_env_steps_per_member(store_runs):
    states, metrics = store_runs["frames", "learning"]
    E, U = CADENCE.env.num_envs, CADENCE.train.update_every
    per_chunk = CADENCE.train.chunk_steps // E
    counts = [_adam_count(s.learner) for s in states]
    # chunk 1: no update yet; chunk 2: vector steps 15..24 (the first with vstep·E >= 60)
    # cross the multiples of 3 in (56, 96]: 14 updates; then chunk_steps / update_every = 16.
    want = [_expected_updates(CADENCE, per_chunk * (c + 1)) for c in range(3)]
    assert want == [0, 14, 30] and CADENCE.train.chunk_steps // U == 16
    for c, w in enumerate(want):
        np.testing.assert_array_equal(counts[c], [w, w])
    # loss and aux are averages over the chunk's updates: NaN where there were none, the
    # constant aux exactly 1 otherwise
    assert np.all(np.isnan(metrics["loss"][0])) and np.all(np.isnan(metrics["probe_one"][0]))
    np.testing.assert_array_equal(metrics["probe_one"][1:], np.ones((2, 2)))
    assert np.all(np.isfinite(metrics["loss"][1:])) and np.all(np.isfinite(metrics["q_mean"][1:]))
    # per-member replay: each member draws its own minibatches
    assert np.all(metrics["probe_obs"][1:, 0] != metrics["probe_obs"][1:, 1])


def test_frames_and_transitions_stores_hold_the_same_transitions(store_runs):
    """The two stores keep the same transitions, but draw different slots from the same key:
    the frames store cannot serve the newest slot (its next frame is written by the next
    add), so its ages are [1, size - 1] where the transitions store's are [0, size - 1]. So
    learning runs differ from the first update on; with a zero learning rate (networks fixed)
    acting is untouched by sampling and everything else must agree exactly."""
    (f_states, f_m), (t_states, t_m) = store_runs["frames", "frozen"], store_runs["transitions", "frozen"]
    for name in ("step", "train_return", "eval_return", "diverged"):
        np.testing.assert_array_equal(f_m[name], t_m[name])
    f, t = f_states[-1], t_states[-1]
    for a, b in zip(jax.tree.leaves(f.actor), jax.tree.leaves(t.actor)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    fd, td = f.replay.data, t.replay.data
    assert set(fd) == {"frame", "first", "action", "reward", "terminated", "valid"}
    assert set(td) == {"obs", "next_obs", "action", "reward", "terminated", "valid"}
    for name in ("action", "reward", "terminated", "valid"):
        np.testing.assert_array_equal(fd[name], td[name])
    np.testing.assert_array_equal(fd["frame"], td["obs"])
    # next_obs of slot t is the frame of slot t + 1; of the newest slot, the current acting obs
    pos, T = int(f.replay.pos), fd["frame"].shape[1]
    assert int(f.replay.size) == T == CADENCE.train.buffer_size // CADENCE.env.num_envs
    newest = (pos - 1) % T
    nxt = np.roll(np.asarray(fd["frame"]), -1, axis=1)
    nxt[:, newest] = np.asarray(f.actor.obs)
    np.testing.assert_array_equal(nxt, td["next_obs"])
    # Sampled batches: every real (weight-1) element of either store is a stored valid transition.
    def rows(obs, action, reward, terminated, next_obs):
        obs, next_obs = np.asarray(obs, np.float64), np.asarray(next_obs, np.float64)
        lead = obs.shape[:-1]
        scalars = [np.asarray(x, np.float64).reshape(lead + (1,)) for x in (action, reward, terminated)]
        flat = np.concatenate([obs] + scalars + [next_obs], axis=-1)
        return flat.reshape(-1, flat.shape[-1])

    valid = np.asarray(td["valid"]).reshape(-1)
    stored = {r.tobytes() for r in rows(td["obs"], td["action"], td["reward"], td["terminated"],
                                        td["next_obs"])[valid]}
    key = jax.random.split(jax.random.PRNGKey(9), 2)
    for store, state in (("frames", f), ("transitions", t)):
        replay = rb.make_replay(store, obs_shape=(4,), obs_dtype=jnp.float32, frame_stack=1, members=2,
                                envs=CADENCE.env.num_envs, capacity=CADENCE.train.buffer_size, mode="per-member")
        batch, _ = replay.sample(state.replay, key, 64)
        real = np.asarray(batch.weight).reshape(-1) == 1
        assert real.mean() > 0.9
        for r in rows(batch.obs, batch.action, batch.reward, batch.terminated, batch.next_obs)[real]:
            assert r.tobytes() in stored, store
    # both stores learn (finite losses) with a learning rate
    for store in ("frames", "transitions"):
        _, m = store_runs[store, "learning"]
        assert np.all(np.isfinite(m["loss"][1:])) and not np.any(m["diverged"])


# ---- gradient clipping and the divergence guard (one update, by hand) ---------------------------

_UPDATE_CFG = TINY.replace(agent={"name": "dqn"})
_UPDATE_NET = make_network(_UPDATE_CFG.agent.torso, _UPDATE_CFG.agent.hidden, 2)


@functools.lru_cache(maxsize=None)
def _jitted_update(max_norm):
    """One member's update (klrl.train.make_update) with max_grad_norm = max_norm, jitted once."""
    return jax.jit(make_update(_UPDATE_CFG.replace(train={"max_grad_norm": max_norm}), _UPDATE_NET, AGENTS["dqn"]))


@jax.jit
def _loss_grad(p, target, batch, hp):
    nets = Nets(online=lambda o: _UPDATE_NET.apply(p, o), online_frozen=lambda o: _UPDATE_NET.apply(p, o),
                target=lambda o: _UPDATE_NET.apply(target, o), prev_target=lambda o: _UPDATE_NET.apply(target, o))
    return AGENTS["dqn"].loss(nets, batch, hp, _UPDATE_CFG, Context())[0]


def _one_update_setup(reward):
    params = _UPDATE_NET.init(jax.random.PRNGKey(0), jnp.zeros((4,)))
    k = jax.random.split(jax.random.PRNGKey(1), 3)
    B = 16
    batch = rb.Batch(obs=jax.random.normal(k[0], (B, 4)), action=jax.random.randint(k[1], (B,), 0, 2),
                     reward=jnp.full((B,), reward, jnp.float32), terminated=jnp.zeros((B,)),
                     next_obs=jax.random.normal(k[2], (B, 4)), weight=jnp.ones((B,)))
    # lr = 1, Adam eps = 10 (larger than every gradient entry): the first Adam step is
    # -lr·g/(|g| + eps), so its size follows the gradient's and clipping shows
    hp = {n: v[0] for n, v in prepare_hparams({"learning_rate": 1.0, "adam_eps": 10.0}, 1).items()}

    def run(max_norm, diverged=False):
        learner = Learner(params=params, target_params=params, prev_target_params=(),
                          opt_state=make_optimizer(hp, max_norm).init(params), diverged=jnp.bool_(diverged))
        return _jitted_update(max_norm)(learner, batch, hp, jax.random.PRNGKey(0), Context())

    grads = jax.jit(jax.grad(_loss_grad))(params, params, batch, hp)
    return params, hp, run, grads


def test_max_grad_norm_clips_the_update():
    params, hp, run, grads = _one_update_setup(reward=100.0)
    lr, eps, c = 1.0, 10.0, 0.5
    gnorm = float(optax.tree.norm(grads))
    assert gnorm > 20 * c                                  # clipping is active
    clipped, _ = optax.clip_by_global_norm(c).update(grads, optax.EmptyState())
    np.testing.assert_allclose(float(optax.tree.norm(clipped)), c, rtol=1e-5)

    def delta(new):
        return jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64), new.params, params)

    def first_adam_step(g):   # bias-corrected first Adam step: m̂ = g, v̂ = g²
        return jax.tree.map(lambda x: -lr * np.asarray(x, np.float64) / (np.abs(np.asarray(x, np.float64)) + eps), g)

    for max_norm, g in ((c, clipped), (0.0, grads)):
        new, loss, _ = run(max_norm)
        assert np.isfinite(float(loss)) and not bool(new.diverged)
        for got, want in zip(jax.tree.leaves(delta(new)), jax.tree.leaves(first_adam_step(g))):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
    # |g_i|/(|g_i| + eps) <= |g_i|/eps: with clipping the step is at most lr·c/eps in norm;
    # without, it is far larger
    bound = lr * c / eps
    assert float(optax.tree.norm(delta(run(c)[0]))) <= bound * (1 + 1e-5)
    assert float(optax.tree.norm(delta(run(0.0)[0]))) > 10 * bound


def test_non_finite_update_is_withheld_and_flags_the_member():
    params, _, run, _ = _one_update_setup(reward=np.nan)
    for max_norm in (0.0, 0.5):
        new, loss, _ = run(max_norm)
        assert np.isnan(float(loss)) and bool(new.diverged)
        for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(params)):
            np.testing.assert_array_equal(a, b)
    # an already diverged member stays frozen on a finite batch
    params, _, run, _ = _one_update_setup(reward=1.0)
    new, loss, _ = run(0.0, diverged=True)
    assert np.isfinite(float(loss)) and bool(new.diverged)
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)


# ---- evaluation strategies -----------------------------------------------------------------------

def test_evaluation_episodes_and_concurrent():
    """Chunks of 5 vector steps: shorter than any CartPole episode. `episodes` plays fresh
    episodes to their end after every chunk; `concurrent` steps test envs with the training
    envs, so a chunk in which no test episode ended reports NaN and every episode it reports
    started in an earlier chunk. The test envs never change what the training envs do."""
    cfg = TINY.replace(agent={"name": "dqn"}, train={"total_steps": 100, "chunk_steps": 10},
                       eval={"episodes": 3})
    keys = _keys(0, 1, 2)
    runs = {}
    for mode in ("episodes", "concurrent"):
        tr = make_train(cfg.replace(eval={"mode": mode, "envs": 2}))
        runs[mode] = _compiled(tr.train, keys, {})(keys, {})
    (se, me), (sc, mc) = runs["episodes"], runs["concurrent"]
    chunk_vsteps = cfg.train.chunk_steps // cfg.env.num_envs
    assert chunk_vsteps < CARTPOLE_MIN_EPISODE
    ev = np.asarray(me["eval_return"])
    assert np.all(np.isfinite(ev)) and np.all((ev >= CARTPOLE_MIN_EPISODE) & (ev <= 500))
    ec = np.asarray(mc["eval_return"])
    assert np.all(np.isnan(ec[0]))                          # no test episode can end in chunk 1
    done = np.isfinite(ec)
    assert done.sum() >= ec.size // 3
    assert np.all((ec[done] >= CARTPOLE_MIN_EPISODE) & (ec[done] <= 500))  # > 5: crossed chunk boundaries
    # training never pauses and is the same computation in both modes
    np.testing.assert_array_equal(me["step"], mc["step"])
    np.testing.assert_array_equal(np.asarray(mc["step"])[:, 0], np.arange(1, 11) * cfg.train.chunk_steps)
    np.testing.assert_array_equal(me["train_return"], mc["train_return"])
    np.testing.assert_array_equal(me["loss"], mc["loss"])
    for a, b in zip(jax.tree.leaves((se.learner, se.replay)), jax.tree.leaves((sc.learner, sc.replay))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the concurrent state carries the test envs after the training envs
    assert sc.actor.obs.shape == (3, 4, 4) and se.actor.obs.shape == (3, 2, 4)


def test_member_map_equals_vmap_to_rounding():
    """train.member_map = "map" (a sequential lax.map of the forward and the update over
    members) computes what vmap does: the same metrics to float32 rounding, in both replay
    modes (shared: one batch closed over, not mapped)."""
    keys = _keys(0, 1, 2)
    for mode in ("per-member", "shared"):
        runs = {}
        for how in ("vmap", "map"):
            tr = make_train(TINY.replace(train={"member_map": how, "replay_mode": mode}))
            runs[how] = _compiled(tr.train, keys, {})(keys, {})
        (sv, mv), (sm, mm) = runs["vmap"], runs["map"]
        for k in ("loss", "train_return", "eval_return", "q_mean"):
            np.testing.assert_allclose(np.asarray(mm[k]), np.asarray(mv[k]), rtol=2e-4, atol=1e-5, err_msg=k)
        for a, b in zip(jax.tree.leaves(sv.learner.params), jax.tree.leaves(sm.learner.params)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-3, atol=1e-5)
        assert np.all(np.asarray(mv["loss"])[-1] > 0)


@pytest.mark.slow
def test_evaluation_orders_untrained_below_trained():
    """Each strategy evaluates the same program run with learning rate 0 (the initial greedy
    network throughout) and 1e-3 (40k env steps of DQN after chunk 1): the trained policy is
    far better in every member (random play: ~22; an initial greedy network: ~10, or ~100
    for a lucky initialisation like seed 0's). Before the first update (chunk 1, as
    learning_starts > chunk_steps) the two runs are identical."""
    cfg = StaticConfig(env={"name": "CartPole-v1", "num_envs": 10},
                       agent={"name": "dqn", "hidden": (64, 64), "loss": "l2"},
                       train={"total_steps": 50_000, "chunk_steps": 10_000, "buffer_size": 10_000, "batch_size": 64,
                              "learning_starts": 10_010, "update_every": 10, "target_update_every": 500},
                       eval={"episodes": 10, "envs": 2})
    keys = _keys(0, 1, 2)
    for mode in ("episodes", "concurrent"):
        train = jax.jit(make_train(cfg.replace(eval={"mode": mode})).train)
        untrained, trained = (np.asarray(train(keys, {"learning_rate": lr, "epsilon_fraction": 0.2})[1]["eval_return"])
                              for lr in (0.0, 1e-3))
        assert np.all(np.isfinite(untrained)) and np.all(np.isfinite(trained))
        np.testing.assert_array_equal(untrained[0], trained[0])
        assert np.all(trained[-1] > 100) and np.all(trained[-1] > 2 * untrained[-1]), (mode, untrained, trained)
        assert trained[-1].mean() > 3 * untrained[-1].mean(), (mode, untrained, trained)


def test_epsilon_schedule_linear_then_flat():
    hp = {"epsilon_start": 1.0, "epsilon_end": 0.1, "epsilon_fraction": 0.5}
    eps = [float(epsilon(jnp.int32(t), hp, 1000)) for t in (0, 250, 500, 900)]
    np.testing.assert_allclose(eps, [1.0, 0.55, 0.1, 0.1], rtol=1e-6)


def test_hparams_used_and_validation():
    for name, agent in AGENTS.items():
        used = hparams_used(TINY.replace(agent={"name": name}))
        assert set(agent.hparams) <= set(used) <= set(HPARAMS)
        assert {"learning_rate", "gamma", "adam_eps"} <= set(used)
        assert "polyak" not in used  # TINY uses hard target updates
        # agents with their own actor (Q♯ guided policies) do not use the ε schedule
        assert ("epsilon_start" in used) == (agent.actor is None)
    # ε-schedule values only matter for ε-greedy acting
    assert "epsilon_start" not in hparams_used(TINY.replace(agent={"acting": "softmax"}))
    assert "softmax_temperature" in hparams_used(TINY.replace(agent={"acting": "softmax"}))
    assert "softmax_temperature" not in hparams_used(TINY)
    assert "entropic_index" in hparams_used(TINY.replace(agent={"name": "mvi"}))
    assert "polyak" in hparams_used(TINY.replace(train={"target_update": "polyak"}))
    # Each section checks itself when it is built (TINY.replace raises); the rules between
    # sections are checked by make_train (klrl.static.validate).
    bad = [
        ({"agent": {"name": "ppo"}}, "agent.name: got 'ppo'; allowed one of dqn"),
        ({"train": {"chunk_steps": 70}}, "train.chunk_steps: got 70; allowed a divisor of train.total_steps (160)"),
        ({"train": {"chunk_steps": 81, "total_steps": 162}},
         "train.chunk_steps: got 81; allowed a multiple of env.num_envs (2)"),
        ({"train": {"update_every": 0}}, "train.update_every: got 0; allowed an integer >= 1"),
        ({"train": {"max_grad_norm": -1.0}}, "train.max_grad_norm: got -1.0; allowed [0, inf)"),
        ({"train": {"replay_store": "pairs"}}, "train.replay_store: got 'pairs'; allowed one of frames, transitions"),
        ({"eval": {"mode": "never"}}, "eval.mode: got 'never'"),
        ({"eval": {"envs": 0}}, "eval.envs: got 0"),
        ({"eval": {"epsilon": 1.5}}, "eval.epsilon: got 1.5; allowed [0, 1]"),
        ({"agent": {"torso": "resnet"}}, "agent.torso: got 'resnet'; allowed one of mlp, minatar_cnn, nature_cnn"),
        ({"agent": {"torso": "nature_cnn"}}, "agent.torso: got 'nature_cnn'; allowed mlp for CartPole-v1's 1-D"),
        ({"agent": {"obs_scale": 0.0}}, "agent.obs_scale: got 0.0; allowed (0, inf)"),
        ({"env": {"backend": "nosuch"}}, "env.backend: got 'nosuch'; allowed one of jax, pool"),
        ({"env": {"backend": "pool", "name": "Breakout-MinAtar"}, "eval": {"mode": "concurrent"}},
         "env.name: got 'Breakout-MinAtar'"),
        ({"env": {"backend": "pool"}}, "eval.mode: got 'episodes'; allowed concurrent with backend pool"),
        ({"agent": {"name": "qsharp"}}, "agent.reference: got 'none'"),
        ({"agent": {"hidden": ()}}, "agent.hidden: got ()"),
        ({"train": {"buffer_size": 5, "batch_size": 4}}, "train.buffer_size: got 5"),   # < 3 time slots per env column
    ]
    for overrides, needle in bad:
        with pytest.raises(ConfigError, match=re.escape(needle)) as err:
            make_train(TINY.replace(**overrides))
        assert "\n" not in str(err.value)
    # shared replay splits the buffer over M·E columns: the population size matters
    shared = TINY.replace(train={"replay_mode": "shared", "buffer_size": 12})
    check_members(shared, 2)
    with pytest.raises(ConfigError, match="train.buffer_size: got 12"):
        check_members(shared, 3)
    with pytest.raises(ConfigError, match="hparams: got 'lr'"):
        make_train(TINY).init(_keys(0), {"lr": jnp.ones(1)})
    with pytest.raises(ConfigError, match=r"hparams.learning_rate: got shape \(3,\)"):
        make_train(TINY).init(_keys(0, 1), {"learning_rate": jnp.ones(3)})


# Agents that need a reference policy (Q♯ and friends): tests/test_qsharp*.py, and through the
# pool in tests/test_train_pool.py.
ENGINE_AGENTS = [name for name, agent in AGENTS.items() if not agent.needs_reference]


@pytest.mark.parametrize("name", ENGINE_AGENTS)
def test_every_agent_traces_end_to_end(name):
    """Traced, not compiled (eval_shape of the whole run): every agent's wiring through the
    gymnax trainer. One agent per trainer path is compiled and run through the stricter host
    pool (test_train_pool.py); mdqn runs here in `per_member_run`, mdkl in the variants below;
    the compiled product is `slow`."""
    assert len(ENGINE_AGENTS) == 11
    tr = make_train(TINY.replace(agent={"name": name, "num_atoms": 11}))
    keys = _keys(0, 1)
    state, metrics = jax.eval_shape(tr.train, keys, {})
    assert set(metrics) == METRICS
    assert all(v.shape == (2, 2) and v.dtype == jnp.float32 for v in metrics.values())
    assert state.learner.diverged.shape == (2,)


@pytest.mark.parametrize("name", ["mdqn", "c51"])   # the two places an action is checked
def test_two_traces_of_a_trainer_are_one_program(name):
    """The same trainer traced twice in one process lowers to the same StableHLO, so JAX's
    persistent compilation cache serves the second trace (array-job tasks, notebooks, a resumed
    run). The operators' traced action checks would leave checkify's process-wide check numbers
    in it; the learner traces its losses in `trusted_actions()` (klrl.operators.checks)."""
    cfg = TINY.replace(agent={"name": name, "num_atoms": 11})
    keys = _keys(0, 1)

    def text():
        return jax.jit(make_train(cfg).train).lower(keys, {}).as_text()

    assert text() == text()


@pytest.mark.slow
@pytest.mark.parametrize("name", ENGINE_AGENTS)
def test_every_agent_runs_end_to_end(name):
    assert len(ENGINE_AGENTS) == 11
    tr = make_train(TINY.replace(agent={"name": name, "num_atoms": 11}))
    keys = _keys(0, 1)
    _, metrics = _compiled(tr.train, keys, {})(keys, {})
    assert set(metrics) == METRICS
    assert all(np.all(np.isfinite(v)) for v in metrics.values()) and not np.any(metrics["diverged"])


@pytest.mark.parametrize("overrides", [
    {"env": {"name": "Breakout-MinAtar"}, "agent": {"torso": "minatar_cnn", "obs_scale": 0.5}},
    {"train": {"target_update": "polyak"}, "agent": {"acting": "softmax", "loss": "huber"}},
    {"agent": {"name": "mvi"}, "train": {"replay_mode": "shared", "buffer_size": 60}},
    {"agent": {"name": "mdkl"},
     "train": {"target_update": "polyak", "max_grad_norm": 1.0, "replay_store": "transitions"}},
])
def test_variants_run_end_to_end(overrides):
    tr = make_train(TINY.replace(**overrides))
    keys, hp = _keys(0, 1), {"entropic_index": jnp.array([1.5, 2.0])}
    _, metrics = _compiled(tr.train, keys, hp)(keys, hp)
    assert np.all(np.isfinite(metrics["loss"])) and not np.any(metrics["diverged"])
    assert np.all(np.isfinite(metrics["eval_return"]))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dqn", "mdqn"])
def test_learns_cartpole(name):
    """The learning check: median greedy eval return >= 475 over 3 seeds after 500k env steps
    (reference configuration with the L2 loss, one update per vector step of 10 envs; see
    klrl.bench.train.REFERENCE)."""
    cfg = StaticConfig(env={"name": "CartPole-v1"}, agent={"name": name, "loss": "l2"},
                       train={"total_steps": 500_000, "chunk_steps": 50_000})
    assert cfg.env.num_envs == 10 and cfg.train.update_every == 10
    _, metrics = jax.jit(make_train(cfg).train)(_keys(0, 1, 2), {})
    assert float(np.median(metrics["eval_return"][-1])) >= 475.0
