"""The star-graph task (klrl.stargraph): generator, tokenizer, token MDP, and the exact facts of
Q♯ guidance on it (Zhou et al. 2025, §3.1) — the closed forms P*(success) and KL(π*‖π_ref) per
prompt, Q♯ = CD where p ∈ {0, 1}, and π_ref pretraining lowering its loss. Tiny sizes."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klrl.envs import env_spec, make_env
from klrl.errors import ConfigError
from klrl.stargraph import exact, guidance, sampler
from klrl.stargraph.env import initial_states, token_env
from klrl.stargraph.registry import TokenEnvSource
from klrl.stargraph.shortcut import shortcut_reference
from klrl.stargraph.graphs import SPLITS, StarGraphTask, dataset, path_from_edges
from klrl.stargraph.tokenizer import (Vocabulary, decode, encode, from_text, prompt_length, sequence_length,
                                      to_text)

TINY = StarGraphTask(2, 3, 8)


# ---- generator and tokenizer ----------------------------------------------------------------

@pytest.mark.parametrize("task", [StarGraphTask(2, 5, 50), StarGraphTask(5, 5, 50), StarGraphTask(3, 8, 50),
                                  StarGraphTask(2, 2, 3)])
def test_graphs_are_stars_with_a_unique_path(task):
    g = dataset(task, "test", 50, seed=3)
    d, ell, _ = task
    assert g.edges.shape == (50, d * (ell - 1), 2) and g.path.shape == (50, ell)
    for i in range(len(g)):
        nodes = np.unique(g.edges[i])
        assert nodes.size == 1 + d * (ell - 1) and nodes.min() >= 0 and nodes.max() < task.num_nodes
        parents, counts = np.unique(g.edges[i, :, 0], return_counts=True)
        out = dict(zip(parents.tolist(), counts.tolist()))
        assert out.pop(int(g.source[i])) == d and set(out.values()) <= {1}      # s has d arms, arms are chains
        assert np.unique(g.edges[i, :, 1]).size == g.edges.shape[1]             # every node has one parent
        assert path_from_edges(g.edges[i], g.source[i], g.goal[i]) == g.path[i].tolist()
        assert g.path[i, 0] == g.source[i] and g.path[i, -1] == g.goal[i]


def test_datasets_are_fixed_by_seed_and_split():
    a, b = dataset(TINY, "pretrain", 20, 0), dataset(TINY, "pretrain", 20, 0)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    others = [dataset(TINY, s, 20, 0) for s in SPLITS[1:]] + [dataset(TINY, "pretrain", 20, 1)]
    assert all(not np.array_equal(a.edges, o.edges) for o in others)
    # the edge shuffle hides the goal's arm: its first edge is not always listed first
    g = dataset(StarGraphTask(2, 5, 50), "test", 200, 0)
    first_goal_edge = [list(map(tuple, e)).index((p[0], p[1])) for e, p in zip(g.edges.tolist(), g.path.tolist())]
    assert len(set(first_goal_edge)) > 4


def test_bad_task_is_a_one_line_config_error():
    for task, field in [(StarGraphTask(1, 5, 50), "degree"), (StarGraphTask(2, 1, 50), "path_length"),
                        (StarGraphTask(5, 5, 20), "num_nodes")]:
        with pytest.raises(ConfigError, match=rf"^stargraph\.{field}: got \d+; allowed"):
            dataset(task, "test", 1)
    with pytest.raises(ConfigError, match=r"^stargraph\.split: got 'dev'; allowed one of pretrain, posttrain, test$"):
        dataset(TINY, "dev", 1)


def test_tokenizer_round_trips_and_sizes():
    task = StarGraphTask(2, 5, 50)
    g = dataset(task, "posttrain", 30, 0)
    tokens = encode(task, g)
    assert tokens.shape == (30, 25) and prompt_length(task) == 20 and sequence_length(task) == 25
    assert Vocabulary(50).size == 53 and tokens.max() < 52          # PAD never appears in a full sequence
    for x, y in zip(decode(task, tokens), g):
        np.testing.assert_array_equal(x, y)
    lines = to_text(g)
    assert lines[0].count("|") == 7 and "/" in lines[0] and "=" in lines[0]
    for x, y in zip(from_text(lines), g):
        np.testing.assert_array_equal(x, y)
    assert to_text(from_text(["1,2|0,1|0,3|3,4/0,4=0,3,4"])) == ["1,2|0,1|0,3|3,4/0,4=0,3,4"]
    with pytest.raises(ValueError):
        decode(task, tokens[:, :-1])


# ---- the token MDP ----------------------------------------------------------------------------

def _keys(seed, shape):
    return jax.random.split(jax.random.PRNGKey(seed), int(np.prod(shape))).reshape(shape + (2,))


def test_env_reward_is_exact_match_and_episodes_have_l_steps():
    """Episodes of exactly ℓ valid steps; reward 1 only at the last step of the correct path;
    one wrong token anywhere gives 0; the next step autoresets (valid False)."""
    g = dataset(TINY, "posttrain", 6, 0)
    M, E = 2, 3
    env = token_env(TINY, TokenEnvSource(TINY, "posttrain", 6, 0), M, E)
    state, obs = env.reset(_keys(0, (M, E)))
    P, pad = prompt_length(TINY), Vocabulary(8).pad
    # every episode starts from one of the split's 6 graphs, regenerated in-graph
    starts = initial_states(TINY, g)
    idx = np.array([[int(np.flatnonzero((starts == o).all(1))[0]) for o in row] for row in np.asarray(obs)])
    np.testing.assert_array_equal(np.asarray(state.inner[2]), g.path[idx])
    wrong_at = np.array([[-1, 0, 1], [2, -1, 2]])                 # -1: play the path; else corrupt step t
    for t in range(TINY.path_length):
        a = g.path[idx, t].copy()
        a[wrong_at == t] = (a[wrong_at == t] + 1) % 8
        state, step = env.step(state, jnp.asarray(a, jnp.int32), _keys(t + 1, (M, E)))
        last = t == TINY.path_length - 1
        assert bool(jnp.all(step.valid)) and bool(jnp.all(step.terminated == last)) and not bool(jnp.any(step.truncated))
        assert int(jnp.sum(step.obs[..., P:] != pad)) == M * E * (t + 1)
    np.testing.assert_array_equal(np.asarray(step.reward), (wrong_at == -1).astype(np.float32))
    state, step = env.step(state, jnp.zeros((M, E), jnp.int32), _keys(9, (M, E)))
    assert not bool(jnp.any(step.valid)) and bool(jnp.all(step.obs[..., P:] == pad))


def test_tokens_backend_serves_the_registered_tasks():
    spec = env_spec("StarGraph-d2-l5-n50", "tokens")
    assert (spec.obs_shape, spec.num_actions, spec.max_episode_steps, spec.obs_dtype) == ((25,), 53, 5, jnp.uint8)
    env = make_env("StarGraph-d2-l3-n8", 1, 4, "tokens")
    assert env.spec == env_spec("StarGraph-d2-l3-n8", "tokens") and env.traits.in_graph_reset
    with pytest.raises(ConfigError, match=r"^env\.name: got 'StarGraph'; allowed one of .*\(backend tokens\)$"):
        make_env("StarGraph", 1, 1, "tokens")


# ---- Q♯ / CD guidance: closed forms -------------------------------------------------------------

def test_guided_policy_is_ref_times_one_minus_p_plus_p_exp():
    key = jax.random.PRNGKey(0)
    log_ref = guidance.truncate(jax.random.normal(key, (6, 11)) * 2, top_k=7)
    p = jax.random.uniform(jax.random.PRNGKey(1), (6, 11)).at[:, :3].set(jnp.array([0.0, 1.0, 0.5]))
    ref = jnp.exp(log_ref)
    for eta in (0.1, 0.3, 1.0):
        want = ref * (1 - p + p * math.exp(1 / eta))
        got = jnp.exp(guidance.guided_log_policy(log_ref, p, eta, "qsharp"))
        np.testing.assert_allclose(got, want / want.sum(-1, keepdims=True), rtol=2e-5, atol=1e-7)
        cd = ref * jnp.exp(p / eta)
        np.testing.assert_allclose(jnp.exp(guidance.guided_log_policy(log_ref, p, eta, "cd")),
                                   cd / cd.sum(-1, keepdims=True), rtol=2e-5, atol=1e-7)
        # the offset itself: Q_η/η = ln(1 − p + p e^{1/η}); support stays π_ref's top-k
        np.testing.assert_allclose(guidance.critic_value(p, eta, "qsharp") / eta,
                                   jnp.log1p(p * jnp.expm1(1 / eta)), rtol=2e-5, atol=1e-6)
        assert bool(jnp.all((got > 0) == (ref > 0)))


def test_qsharp_equals_cd_iff_p_is_zero_or_one():
    """Q_η = η ln(1 − p + p e^{1/η}) ≥ p (Jensen), with equality exactly at p ∈ {0, 1}."""
    p = jnp.array([0.0, 1.0, 0.01, 0.5, 0.99])
    for eta in (0.1, 0.3, 1.0, 3.0):
        q_sharp, q_cd = guidance.critic_value(p, eta, "qsharp"), guidance.critic_value(p, eta, "cd")
        np.testing.assert_allclose(q_sharp[:2], q_cd[:2], atol=1e-6)
        gap = q_sharp[2:] - q_cd[2:]
        assert bool(jnp.all(gap > 1e-4))
        np.testing.assert_allclose(gap, eta * jnp.log1p(p[2:] * jnp.expm1(1 / eta)) - p[2:], rtol=1e-4)
    log_ref = jnp.log(jnp.array([0.5, 0.3, 0.2]))
    one_zero = jnp.array([1.0, 0.0, 0.0])
    np.testing.assert_allclose(guidance.guided_log_policy(log_ref, one_zero, 0.3, "qsharp"),
                               guidance.guided_log_policy(log_ref, one_zero, 0.3, "cd"), atol=1e-6)


def test_closed_forms_at_p0_one_over_d():
    """The closed forms at p0 = 1/d: d = 2, η = 0.1 → P* ≈ 0.99995, KL ≈ ln 2; η = 1 → 0.731, 0.111;
    d = 5, η = 0.1 → 0.99982, KL ≈ ln 5."""
    np.testing.assert_allclose(exact.optimal_success(jnp.array(0.5), 0.1), 0.99995, atol=1e-5)
    np.testing.assert_allclose(exact.optimal_kl(jnp.array(0.5), 0.1), math.log(2), atol=1e-3)
    np.testing.assert_allclose(exact.optimal_success(jnp.array(0.5), 1.0), 0.731, atol=1e-3)
    np.testing.assert_allclose(exact.optimal_kl(jnp.array(0.5), 1.0), 0.111, atol=1e-3)
    np.testing.assert_allclose(exact.optimal_success(jnp.array(0.2), 0.1), 0.99982, atol=1e-5)
    np.testing.assert_allclose(exact.optimal_kl(jnp.array(0.2), 0.1), math.log(5), atol=2e-3)


def test_oracle_guided_sampler_matches_p_star_and_kl_per_prompt():
    """With the exact p from one teacher-forced pass of π_ref, the guided sampler's success rate
    and mean per-episode KL match P* and KL(π*‖π_ref) of every prompt to sampling error (Q♯); CD's
    success matches its own exact value Π_t π_CD(y*_t|·), below P* where p ∈ (0, 1)."""
    n, S, P, V = 4, 3000, prompt_length(TINY), Vocabulary(8).size
    g = dataset(TINY, "test", n, 0)
    starts, path = jnp.asarray(initial_states(TINY, g), jnp.int32), jnp.asarray(g.path)
    log_ref = shortcut_reference(TINY, 3.0, jax.random.PRNGKey(1), top_k=8)
    lrp = exact.path_log_probs(log_ref, starts, path, P)
    tail, p0 = exact.success_tail(lrp, path), exact.success_probability(lrp, path)
    assert bool(jnp.all((p0 > 0.005) & (p0 < 0.9))), p0

    @jax.jit
    def run(key, starts, path, tail, eta):
        st, pa, ta = (jnp.repeat(x, S, 0) for x in (starts, path, tail))
        out = {}
        for name in guidance.GUIDANCES:
            def log_policy(tokens, t, lref, name=name):
                return guidance.guided_log_policy(lref, exact.oracle_p(tokens, t, pa, ta, P, V), eta, name)
            s = sampler.sample(key, st, log_ref, log_policy, P, TINY.path_length)
            out[name] = (sampler.exact_match(s.tokens, pa, P).reshape(n, S), s.kl.reshape(n, S),
                         (s.log_prob - s.log_ref).reshape(n, S))
        return out

    for eta in (1.0, 0.3):
        out = run(jax.random.PRNGKey(2), starts, path, tail, jnp.float32(eta))
        success, kl, log_ratio = (np.asarray(x) for x in out["qsharp"])
        p_star, kl_star = np.asarray(exact.optimal_success(p0, eta)), np.asarray(exact.optimal_kl(p0, eta))
        se = np.sqrt(p_star * (1 - p_star) / S)
        assert np.all(np.abs(success.mean(1) - p_star) < 4 * se + 1e-3), (success.mean(1), p_star)
        kl_se = kl.std(1) / np.sqrt(S)
        assert np.all(np.abs(kl.mean(1) - kl_star) < 4 * kl_se + 1e-3), (kl.mean(1), kl_star)
        # the per-step KL sum and the sequence log-ratio ln π(y)/π_ref(y) have the same mean
        assert np.all(np.abs(log_ratio.mean(1) - kl_star) < 4 * log_ratio.std(1) / np.sqrt(S) + 1e-3)
        np.testing.assert_allclose(exact.guided_success(lrp, path, eta, "qsharp"), p_star, rtol=1e-4)
        cd_exact = np.asarray(exact.guided_success(lrp, path, eta, "cd"))
        assert np.all(cd_exact < p_star - 1e-3)
        cd_se = np.sqrt(cd_exact * (1 - cd_exact) / S)
        assert np.all(np.abs(np.asarray(out["cd"][0]).mean(1) - cd_exact) < 4 * cd_se + 1e-3)


# ---- π_ref pretraining ------------------------------------------------------------------------

def test_pretraining_a_tiny_set_lowers_its_loss_and_saves(tmp_path):
    from klrl.stargraph.pretrain import PretrainConfig, load, per_position_accuracy, pretrain, save
    from klrl.stargraph.reference import lm_reference

    cfg = PretrainConfig(task=TINY, layers=1, width=32, heads=2, train_size=64, test_size=16, steps=50,
                         batch_size=32, lr=3e-3, final_lr=3e-4, warmup=10, eval_every=50)
    model, params, report = pretrain(cfg, log=lambda line: None)
    tokens = encode(TINY, dataset(TINY, "pretrain", 64, 0))
    before = per_position_accuracy(model, model.init(jax.random.PRNGKey(0), jnp.asarray(tokens[:1])), tokens,
                                   prompt_length(TINY))
    after = per_position_accuracy(model, params, tokens, prompt_length(TINY))
    assert after["nll"] < 0.6 * before["nll"] and len(after["accuracy"]) == TINY.path_length
    assert [r["step"] for r in report["history"]] == [50] and report["test"]["step"] == 50
    save(str(tmp_path / "lm"), cfg, params, report)
    cfg2, _, params2 = load(str(tmp_path / "lm"))
    assert cfg2 == cfg
    jax.tree.map(np.testing.assert_array_equal, params, params2)
    ref = lm_reference(str(tmp_path / "lm"), top_k=5)
    obs = jnp.asarray(initial_states(TINY, dataset(TINY, "test", 3, 0)))
    lp = ref.log_probs(ref.load(), obs)
    assert lp.shape == (3, Vocabulary(8).size) and bool(jnp.all(jnp.sum(jnp.isfinite(lp), -1) == 5))


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    from klrl.stargraph.__main__ import main

    cases = [(["pretrain", str(tmp_path / "o"), "bogus=1"], r"stargraph: got 'bogus'; allowed batch_size, degree"),
             (["pretrain", str(tmp_path / "o"), "degree=1"], r"stargraph\.degree: got 1; allowed an integer >= 2"),
             (["pretrain", str(tmp_path / "o"), "steps=x"], r"stargraph\.steps: got 'x'; allowed a value of type int"),
             (["oracle", str(tmp_path / "none"), str(tmp_path / "r.json")], r"REF_DIR: got .*; allowed a directory")]
    for argv, pattern in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("klrl: error: ")
        assert __import__("re").search(pattern, err), err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_the_tokens_backend_trains_through_the_engine(tmp_path):
    """`klrl train` on a registered token MDP (DQN with the MLP torso on token ids: a wiring
    check, not a method): the run finishes and writes its metrics."""
    from engine_helpers import cli_in_process

    sets = ["env.backend=tokens", "env.name=StarGraph-d2-l3-n8", "agent.name=dqn", "train.total_steps=2000",
            "train.chunk_steps=1000", "train.learning_starts=500", "train.seeds=1", "train.buffer_size=1000",
            "agent.hidden=[32]"]
    args = ["train", Path(__file__).resolve().parents[1] / "experiments" / "quickstart.toml", "--out", tmp_path / "run"]
    for s in sets:
        args += ["--set", s]
    done = cli_in_process(*args)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "metrics.csv").read_text().count("\n") > 5
