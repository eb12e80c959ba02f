"""klrl.reference: π_ref from a `klrl train` checkpoint, and Q♯ runs through the CLI runner."""

import dataclasses
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klrl import reference
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
eval_episodes = 1
seeds = 2
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


def _cfg(run, **kw):
    return StaticConfig(**{"env": "CartPole-v1", "agent": "qsharp", "reference": "softmax", "reference_run": run, **kw})


def test_softmax_reference_is_a_tempered_softmax_of_one_members_q(ref_run):
    obs = _obs()
    lp = {T: reference.for_config(_cfg(ref_run, reference_temperature=T)).log_probs(obs) for T in (0.5, 2.0)}
    for v in lp.values():
        assert v.shape == (16, 2)
        np.testing.assert_allclose(jnp.exp(v).sum(-1), 1.0, rtol=1e-5)
    # T·(ln π(0) − ln π(1)) = Q(0) − Q(1), whatever T.
    gap = {T: T * (v[:, 0] - v[:, 1]) for T, v in lp.items()}
    np.testing.assert_allclose(gap[0.5], gap[2.0], rtol=1e-4, atol=1e-5)
    assert float(jnp.max(jnp.abs(gap[0.5]))) > 0
    other = reference.for_config(_cfg(ref_run, reference_temperature=0.5, reference_member=1)).log_probs(obs)
    assert not np.allclose(other, lp[0.5])        # another member: other parameters


def test_epsilon_greedy_reference(ref_run):
    obs = _obs()
    soft = reference.for_config(_cfg(ref_run)).log_probs(obs)
    eps = reference.for_config(_cfg(ref_run, reference="epsilon_greedy", reference_epsilon=0.2)).log_probs(obs)
    p = np.asarray(jnp.exp(eps))
    np.testing.assert_allclose(np.sort(p, -1), np.tile([0.1, 0.9], (16, 1)), rtol=1e-5)
    np.testing.assert_array_equal(p.argmax(-1), np.asarray(soft).argmax(-1))


def test_uniform_reference_and_kl():
    cfg = StaticConfig(env="CartPole-v1", reference="uniform")
    lp = reference.for_config(cfg).log_probs(_obs(3))
    np.testing.assert_allclose(lp, np.full((3, 2), -np.log(2.0)), rtol=1e-6)
    # KL(greedy ‖ uniform) = ln 2, KL(uniform ‖ uniform) = 0.
    greedy = jnp.array([[0.0, -jnp.inf]])
    np.testing.assert_allclose(reference.kl_to_reference(greedy, lp[:1]), [np.log(2.0)], rtol=1e-6)
    np.testing.assert_allclose(reference.kl_to_reference(jnp.zeros((1, 2)), lp[:1]), [0.0], atol=1e-7)


def test_bad_references_are_one_line_config_errors(ref_run, tmp_path):
    cases = [
        (_cfg(str(tmp_path / "nope")), r"^agent.reference_run: got .*nope"),
        (dataclasses.replace(_cfg(ref_run), env="Acrobot-v1"), r"^agent.reference_run: .*a run on env 'Acrobot-v1'"),
        (_cfg(ref_run, reference_member=2), r"^agent.reference_member: got 2; allowed a member index in \[0, 2\)"),
        (_cfg(ref_run, reference_temperature=0.0), r"^agent.reference_temperature: got 0.0"),
        (_cfg(ref_run, reference="epsilon_greedy", reference_epsilon=0.0), r"^agent.reference_epsilon: got 0.0"),
    ]
    no_ckpt = tmp_path / "no_ckpt"
    shutil.copytree(ref_run, no_ckpt, ignore=shutil.ignore_patterns("checkpoints"))
    cases.append((_cfg(str(no_ckpt)), r"^agent.reference_run: .*saved checkpoint"))
    for cfg, pattern in cases:
        with pytest.raises(ConfigError, match=pattern) as err:
            reference.check(cfg)
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
eval_episodes = 2
gamma = 1.0
seeds = 1
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
    kl = [r["value"] for r in rows if r["metric"] == "kl_ref"]
    assert len(kl) == 4 and all(np.isfinite(kl)) and all(k >= 0 for k in kl)
    assert any(r["metric"] == "eval_return" for r in rows)
