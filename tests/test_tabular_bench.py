"""`klrl bench tabular`: the numpy loop reference agrees with the jitted schemes, and the
benchmark writes its JSON record (quick sizes; speed targets are not asserted here)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klrl.bench.tabular import bench_tabular, numpy_md_vi, numpy_optimal_q, numpy_q_of_policy
from klrl.tabular import garnet, md_vi, optimal_q, q_of_policy
from klrl.tabular.schemes import noise_at

pytestmark = pytest.mark.usefixtures("x64")


def test_numpy_reference_agrees_with_jax_on_a_small_noisy_case():
    # Same sizes as tests/test_tabular.py (12 states, 3 actions, branching 3; K = 40, every
    # iteration evaluated), so the suite compiles these programs once.
    S, A, K, every, gamma, std = 12, 3, 40, 1, 0.9, 0.5
    mdp = garnet(jax.random.key(3), S, A, 3)
    P, r = np.asarray(mdp.P), np.asarray(mdp.r)
    q_star = optimal_q(mdp, gamma)
    np.testing.assert_allclose(numpy_optimal_q(P, r, gamma), q_star, atol=1e-10)
    pi = np.full((S, A), 1.0 / A)
    np.testing.assert_allclose(numpy_q_of_policy(P, r, pi, gamma), q_of_policy(mdp, pi, gamma), atol=1e-12)
    key = jax.random.key(5)
    # Replay the exact noise of the JAX run in the numpy loop.
    noise = std * np.asarray(jax.vmap(lambda k: noise_at(key, k, (S, A), jnp.float64))(jnp.arange(K)))
    for lam, tau in [(1.0, 0.0), (0.0, 0.1), (0.5, 0.05)]:
        res = md_vi(mdp, gamma, lam, tau, K, noise_std=std, key=key, eval_every=every)
        np_err, np_pi = numpy_md_vi(P, r, gamma, lam, tau, K, noise=noise, eval_every=every)
        np.testing.assert_allclose(np_err, res.errors, atol=1e-10)
        np.testing.assert_allclose(np_pi, res.policies, atol=1e-10)
        assert float(res.errors[-1]) > 1e-3  # a nontrivial case


def test_bench_quick_writes_record(tmp_path):
    out = tmp_path / "bench" / "tabular.json"
    rec = bench_tabular(out_path=str(out), quick=True, repeats=1)
    saved = json.loads(out.read_text())
    for key in ("seconds", "compile_seconds", "numpy_seconds", "speedup_vs_numpy", "grid", "provenance"):
        assert key in saved
    assert saved["seconds"] > 0 and saved["numpy_seconds"] > 0 and saved["compile_seconds"] > 0
    assert saved["speedup_vs_numpy"] == pytest.approx(saved["numpy_seconds"] / saved["seconds"])
    assert saved["quick"] is True and saved["numpy_extrapolated"] is False
    g = saved["grid"]
    assert g["num_runs"] == g["num_garnets"] * g["num_seeds"] * g["num_lam"] * g["num_tau"]
    assert rec["grid"] == g
