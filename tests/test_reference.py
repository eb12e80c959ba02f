"""klrl.reference: π_ref from a `klrl train` checkpoint (`for_config(cfg)` -> pure
`log_probs(params, obs)` + host `load()`), klrl.actors.kl, and Q♯ runs through the CLI runner."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klrl import reference
from klrl.actors import epsilon_greedy_act, kl
from klrl.errors import ConfigError
from klrl.runner import run_experiment
from klrl.train import StaticConfig

REF_TOML = """
[env]
name = "CartPole-v1"
num_envs = 10
[agent]
name = "dqn"
hidden = [8]
[train]
total_steps = 100
chunk_steps = 100
buffer_size = 100
batch_size = 16
learning_starts = 50
seeds = 2
[eval]
episodes = 1
"""


@pytest.fixture(scope="module")
def ref_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    (root / "ref.toml").write_text(REF_TOML)
    out = str(root / "run")
    run_experiment(str(root / "ref.toml"), out)
    return out


def _obs(n=16):
    return jax.random.normal(jax.random.PRNGKey(0), (n, 4)) * 0.3


def _cfg(run, **agent):
    return StaticConfig(env={"name": "CartPole-v1"},
                        agent={"name": "qsharp", "reference": "softmax", "reference_run": run, **agent})


def _log_probs(cfg, obs):
    ref = reference.for_config(cfg)
    return ref.log_probs(ref.load(), obs)


def test_softmax_reference_is_a_tempered_softmax_of_one_members_q(ref_run):
    obs = _obs()
    lp = {T: _log_probs(_cfg(ref_run, reference_temperature=T), obs) for T in (0.5, 2.0)}
    for v in lp.values():
        assert v.shape == (16, 2)
        np.testing.assert_allclose(jnp.exp(v).sum(-1), 1.0, rtol=1e-5)
    # T·(ln π(0) − ln π(1)) = Q(0) − Q(1), whatever T.
    gap = {T: T * (v[:, 0] - v[:, 1]) for T, v in lp.items()}
    np.testing.assert_allclose(gap[0.5], gap[2.0], rtol=1e-4, atol=1e-5)
    assert float(jnp.max(jnp.abs(gap[0.5]))) > 0
    other = _log_probs(_cfg(ref_run, reference_temperature=0.5, reference_member=1), obs)
    assert not np.allclose(other, lp[0.5])        # another member: other parameters
    # leading axes pass through
    assert _log_probs(_cfg(ref_run), obs.reshape(4, 4, 4)).shape == (4, 4, 2)


def test_parameters_are_an_argument_not_a_constant(ref_run):
    """log_probs is a pure function of (params, obs): the same under jit, and it follows the
    parameters it is given (zero parameters: Q = 0, π_ref uniform)."""
    ref = reference.for_config(_cfg(ref_run))
    assert ref.kind == "softmax"
    params = ref.load()
    assert ref.load() is params                    # loaded once, cached
    obs = _obs()
    f = jax.jit(ref.log_probs)
    np.testing.assert_allclose(f(params, obs), ref.log_probs(params, obs), rtol=1e-6, atol=1e-6)
    zero = jax.tree.map(jnp.zeros_like, params)
    np.testing.assert_allclose(f(zero, obs), np.full((16, 2), -np.log(2.0)), rtol=1e-6)
    # the two members' parameters, both through the same compiled function
    other = reference.for_config(_cfg(ref_run, reference_member=1)).load()
    assert not np.allclose(f(other, obs), f(params, obs))


def test_epsilon_greedy_reference(ref_run):
    obs = _obs()
    soft = _log_probs(_cfg(ref_run), obs)
    eps = _log_probs(_cfg(ref_run, reference="epsilon_greedy", reference_epsilon=0.2), obs)
    p = np.asarray(jnp.exp(eps))
    np.testing.assert_allclose(np.sort(p, -1), np.tile([0.1, 0.9], (16, 1)), rtol=1e-5)
    np.testing.assert_array_equal(p.argmax(-1), np.asarray(soft).argmax(-1))
    # ε = 1 is uniform
    one = _log_probs(_cfg(ref_run, reference="epsilon_greedy", reference_epsilon=1.0), obs)
    np.testing.assert_allclose(one, np.full((16, 2), -np.log(2.0)), rtol=1e-6)


def test_the_pool_backend_gets_the_same_reference(ref_run):
    cfg = _cfg(ref_run)
    obs = _obs()
    np.testing.assert_allclose(_log_probs(cfg.replace(env={"backend": "pool"}), obs),
                               _log_probs(cfg, obs), rtol=1e-6)


def test_uniform_and_no_reference():
    cfg = StaticConfig(env={"name": "CartPole-v1"}, agent={"reference": "uniform"})
    ref = reference.for_config(cfg)
    assert ref.kind == "uniform" and ref.load() == ()
    lp = ref.log_probs((), _obs(3))
    np.testing.assert_allclose(lp, np.full((3, 2), -np.log(2.0)), rtol=1e-6)
    assert ref.log_probs((), jnp.zeros((2, 5, 4))).shape == (2, 5, 2)
    assert ref.log_probs((), jnp.zeros(4)).shape == (2,)
    tree = reference.for_config(StaticConfig(env={"name": "QSharpTree-v0"},
                                             agent={"name": "qsharp", "reference": "uniform"}))
    np.testing.assert_allclose(tree.log_probs((), jnp.zeros((7, 14))), np.full((7, 3), -np.log(3.0)), rtol=1e-6)
    assert reference.for_config(StaticConfig(env={"name": "CartPole-v1"}, agent={"reference": "none"})) is None


def test_kl_matches_its_definition():
    log_u = jnp.full((1, 2), -jnp.log(2.0))
    # KL(greedy ‖ uniform) = ln 2, KL(uniform ‖ uniform) = 0.
    greedy = jnp.array([[0.0, -jnp.inf]])
    np.testing.assert_allclose(kl(greedy, log_u), [np.log(2.0)], rtol=1e-6)
    np.testing.assert_allclose(kl(jnp.log(jnp.full((1, 2), 0.5)), log_u), [0.0], atol=1e-7)
    # greedy (any support-1 policy) gives −ln π_ref(argmax), for a non-uniform π_ref
    key = jax.random.PRNGKey(0)
    log_ref = jax.nn.log_softmax(2.0 * jax.random.normal(key, (8, 5)), -1)
    q = jax.random.normal(jax.random.PRNGKey(1), (8, 5))
    _, greedy_lp = epsilon_greedy_act(q, jax.random.PRNGKey(2), jnp.float32(0.0))   # ln π of greedy
    a = jnp.argmax(q, -1)
    np.testing.assert_allclose(kl(greedy_lp, log_ref), -log_ref[jnp.arange(8), a], rtol=1e-6)
    # stochastic policies: Σ π (ln π − ln π_ref), in float64 by hand; ≥ 0; 0 iff π = π_ref
    log_pi = jax.nn.log_softmax(jax.random.normal(jax.random.PRNGKey(3), (8, 5)), -1)
    p, lp, lr = (np.asarray(x, np.float64) for x in (jnp.exp(log_pi), log_pi, log_ref))
    np.testing.assert_allclose(kl(log_pi, log_ref), np.sum(p * (lp - lr), -1), rtol=1e-5)
    assert np.all(np.asarray(kl(log_pi, log_ref)) > 0)
    np.testing.assert_allclose(kl(log_ref, log_ref), 0.0, atol=1e-6)
    # ε-greedy log-probs (what the trainer's actors return) against uniform
    _, eps_lp = epsilon_greedy_act(q, jax.random.PRNGKey(2), jnp.float32(0.5))
    pe = 0.5 + 0.5 / 5
    np.testing.assert_allclose(kl(eps_lp, jnp.full((8, 5), -jnp.log(5.0))),
                               pe * np.log(pe * 5) + 4 * 0.1 * np.log(0.1 * 5), rtol=1e-5)
    # a zero-probability action contributes 0 even where π_ref is 0 too (no nan)
    np.testing.assert_allclose(kl(jnp.array([[0.0, -jnp.inf]]), jnp.array([[0.0, -jnp.inf]])), [0.0], atol=1e-7)
    # ... while π > 0 where π_ref = 0 is infinitely far
    assert np.isinf(kl(jnp.log(jnp.full((1, 2), 0.5)), jnp.array([[0.0, -jnp.inf]])))[0]


def test_bad_references_are_one_line_config_errors(ref_run, tmp_path):
    no_ckpt = tmp_path / "no_ckpt"
    shutil.copytree(ref_run, no_ckpt, ignore=shutil.ignore_patterns("checkpoints"))
    bad_json = tmp_path / "bad_json"
    shutil.copytree(ref_run, bad_json, ignore=shutil.ignore_patterns("checkpoints"))
    (bad_json / "config.json").write_text("{not json")
    # The reference run, read by reference.check (for_config checks first):
    cases = [
        (lambda: _cfg(str(tmp_path / "nope")), r"^agent.reference_run: got .*nope"),
        (lambda: _cfg(""), r"^agent.reference_run: got ''"),
        (lambda: _cfg(ref_run).replace(env={"name": "Acrobot-v1"}),
         r"^agent.reference_run: .*a run on env 'Acrobot-v1'"),
        (lambda: _cfg(ref_run, reference_member=2),
         r"^agent.reference_member: got 2; allowed a member index in \[0, 2\)"),
        (lambda: _cfg(str(no_ckpt)), r"^agent.reference_run: .*saved checkpoint"),
        (lambda: _cfg(str(bad_json)), r"^agent.reference_run: .*config.json was written by `klrl train`"),
    ]
    # ... and the [agent] section's own rules, checked when the config is built:
    cases += [
        (lambda: _cfg(ref_run, reference_member=-1), r"^agent.reference_member: got -1; allowed an integer >= 0$"),
        (lambda: _cfg(ref_run, reference_temperature=0.0),
         r"^agent.reference_temperature: got 0.0; allowed \(0, inf\)$"),
        (lambda: _cfg(ref_run, reference="epsilon_greedy", reference_epsilon=0.0),
         r"^agent.reference_epsilon: got 0.0; allowed \(0, 1\]$"),
        (lambda: _cfg(ref_run, reference="epsilon_greedy", reference_epsilon=1.5),
         r"^agent.reference_epsilon: got 1.5"),
        (lambda: _cfg(ref_run, reference="boltzmann"), r"^agent.reference: got 'boltzmann'; allowed one of none, "),
    ]
    for make, pattern in cases:
        for fn in (reference.check, reference.for_config):
            with pytest.raises(ConfigError, match=pattern) as err:
                fn(make())
            assert "\n" not in str(err.value)


def test_unreadable_or_mismatched_checkpoints_fail_at_load(ref_run, tmp_path):
    """for_config reads only config.json and the directory listing; the arrays are read by
    load(), which turns every problem into a one-line ConfigError."""
    garbage = tmp_path / "garbage"
    shutil.copytree(ref_run, garbage)
    steps = sorted((garbage / "checkpoints" / "dqn").iterdir())
    state = steps[-1] / "state"
    shutil.rmtree(state)
    state.mkdir()
    (state / "junk").write_text("not a checkpoint")
    ref = reference.for_config(_cfg(str(garbage)))        # nothing read yet
    with pytest.raises(ConfigError, match=r"^agent.reference_run: .*a readable orbax checkpoint") as err:
        ref.load()
    assert "\n" not in str(err.value)

    resized = tmp_path / "resized"
    shutil.copytree(ref_run, resized)
    record = json.loads((resized / "config.json").read_text())
    record["config"]["agent"]["hidden"] = [16]
    (resized / "config.json").write_text(json.dumps(record))
    ref = reference.for_config(_cfg(str(resized)))
    with pytest.raises(ConfigError, match=r"^agent.reference_run: .*parameters match its config's network") as err:
        ref.load()
    assert "\n" not in str(err.value)


def test_qsharp_run_through_the_cli_runner_reports_kl_ref(ref_run, tmp_path):
    toml = tmp_path / "q.toml"
    toml.write_text(f"""
[env]
name = "CartPole-v1"
num_envs = 10
[agent]
name = "qsharp"
hidden = [8]
num_atoms = 11
v_min = 0.0
v_max = 50.0
reference = "softmax"
reference_run = "{ref_run}"
reference_member = 1
[train]
total_steps = 200
chunk_steps = 100
buffer_size = 100
batch_size = 16
learning_starts = 50
gamma = 1.0
seeds = 1
[eval]
episodes = 2
[sweep]
"agent.eta" = [0.5, 5.0]
""")
    # A bad reference fails before anything is written.
    bad = tmp_path / "bad"
    with pytest.raises(ConfigError, match="agent.reference_run"):
        run_experiment(str(toml), str(bad), [f"agent.reference_run={tmp_path / 'missing'}"])
    assert not bad.exists()

    out = run_experiment(str(toml), str(tmp_path / "run"))
    from klrl.results import read_metrics

    rows = read_metrics(os.path.join(out, "metrics.csv"))
    kl_rows = [r["value"] for r in rows if r["metric"] == "kl_ref"]
    assert len(kl_rows) == 4 and all(np.isfinite(kl_rows)) and all(k >= 0 for k in kl_rows)
    assert any(r["metric"] == "eval_return" for r in rows)
