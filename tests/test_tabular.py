"""klrl.tabular: MDP construction, exact evaluation and the regularized schemes' identities.

All checks run in float64 (the `x64` fixture of conftest.py) on tiny MDPs: the identities are
exact, so they are asserted to 1e-10.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klrl.tabular import (
    bound_for_policies,
    chain_mdp,
    expected_next,
    garnet,
    greedy_policy,
    m_vi,
    md_vi,
    optimal_q,
    q_of_policy,
    tree_mdp,
    tsallis_m_vi,
    vi,
)

pytestmark = pytest.mark.usefixtures("x64")

S, A, B = 12, 3, 3


def _garnet(seed=0, s=S, a=A, b=B):
    return garnet(jax.random.key(seed), s, a, b)


def _random_policy(key, s, a):
    return jax.nn.softmax(2.0 * jax.random.normal(key, (s, a)), -1)


def _iterative_q(mdp, pi, gamma, n):
    """Policy evaluation by n applications of T^π q = r + γ P <π, q> (the slow way)."""
    q = jnp.zeros_like(mdp.r)
    for _ in range(n):
        q = mdp.r + gamma * expected_next(mdp, jnp.sum(pi * q, -1))
    return q


def test_garnet_rows_are_distributions_with_branching_nonzeros():
    for seed, (s, a, b) in enumerate([(12, 3, 3), (7, 4, 7)]):  # typical and B = S
        mdp = _garnet(seed, s, a, b)
        assert mdp.P.dtype == jnp.float64 and mdp.P.shape == (s, a, s) and mdp.r.shape == (s, a)
        np.testing.assert_allclose(mdp.P.sum(-1), 1.0, atol=1e-12)
        assert bool(jnp.all(mdp.P >= 0))
        np.testing.assert_array_equal((mdp.P > 0).sum(-1), b)
        assert bool(jnp.all((mdp.r >= 0) & (mdp.r <= 1)))
        assert not bool(mdp.terminal.any())
    # Different keys give different instances; the same key the same one.
    assert not np.allclose(_garnet(0).P, _garnet(1).P)
    np.testing.assert_array_equal(_garnet(3).P, _garnet(3).P)
    with pytest.raises(ValueError, match="branching"):
        garnet(jax.random.key(0), 5, 2, 6)


def test_q_of_policy_matches_iterative_evaluation():
    mdp = _garnet(1)
    pi = _random_policy(jax.random.key(2), S, A)
    gamma = 0.8
    q_exact = q_of_policy(mdp, pi, gamma)
    q_iter = _iterative_q(mdp, pi, gamma, 200)  # 0.8^200 ~ 4e-20
    np.testing.assert_allclose(q_exact, q_iter, atol=1e-10)
    # Bellman equation for π holds exactly.
    np.testing.assert_allclose(
        q_exact, mdp.r + gamma * expected_next(mdp, jnp.sum(pi * q_exact, -1)), atol=1e-12)


def test_optimal_q_satisfies_bellman_optimality_and_dominates():
    mdp = _garnet(4)
    for gamma in (0.5, 0.95):
        q_star = optimal_q(mdp, gamma)
        np.testing.assert_allclose(
            q_star, mdp.r + gamma * expected_next(mdp, q_star.max(-1)), atol=1e-10)
        # q* ≥ q^π for a handful of policies (dominance, up to solver rounding).
        for i in range(3):
            q_pi = q_of_policy(mdp, _random_policy(jax.random.key(10 + i), S, A), gamma)
            assert bool(jnp.all(q_star >= q_pi - 1e-10))
        # Its greedy policy is optimal: q^{greedy(q*)} = q*.
        np.testing.assert_allclose(q_of_policy(mdp, greedy_policy(q_star), gamma), q_star, atol=1e-10)


@pytest.mark.parametrize("family", ["chain", "tree"])
def test_deterministic_episodic_mdps_at_gamma_one(family):
    if family == "chain":
        mdp, horizon = chain_mdp(jax.random.key(0), 5, 3), 5
    else:
        mdp, horizon = tree_mdp(jax.random.key(0), 3, 2, leaf_rewards_only=True), 3
        assert mdp.num_states == 1 + 2 + 4 + 1
        # Only the last decision level is rewarded.
        assert bool(jnp.all(mdp.r[:3] == 0)) and bool(jnp.all(mdp.r[3:7] > 0))
    term = jnp.flatnonzero(mdp.terminal)
    assert term.shape == (1,)
    # Deterministic: every row is one-hot; the terminal state is absorbing with zero reward.
    np.testing.assert_array_equal(mdp.P.max(-1), 1.0)
    np.testing.assert_array_equal(mdp.P[term[0], :, term[0]], 1.0)
    np.testing.assert_array_equal(mdp.r[term[0]], 0.0)
    # γ = 1 is well posed: the exact solve equals `horizon` backups (episodes end by then).
    pi = _random_policy(jax.random.key(5), mdp.num_states, mdp.num_actions)
    q = q_of_policy(mdp, pi, 1.0)
    np.testing.assert_allclose(q, _iterative_q(mdp, pi, 1.0, horizon), atol=1e-12)
    np.testing.assert_allclose(q, _iterative_q(mdp, pi, 1.0, horizon + 3), atol=1e-12)
    q_star = optimal_q(mdp, 1.0)
    np.testing.assert_allclose(q_star, mdp.r + expected_next(mdp, q_star.max(-1)), atol=1e-12)
    # On a deterministic tree the optimal value at the root is the best path's reward sum.
    if family == "tree":
        leaves = mdp.r[3:7].max(-1)  # best leaf reward below each level-2 node
        assert float(q_star[0].max()) == pytest.approx(float(leaves.max()), abs=1e-12)


def test_md_vi_implicit_averaging_identity():
    """π_0 uniform: π_{k+1} = softmax(h_k/(λ+τ)), h_k = q_k + β h_{k−1}, β = λ/(λ+τ)."""
    mdp = _garnet(2)
    gamma, lam, tau, K = 0.9, 0.7, 0.2, 40
    res = md_vi(mdp, gamma, lam, tau, K, noise_std=0.5, key=jax.random.key(3))
    assert res.policies.shape == (K, S, A) and res.errors.shape == (K,)
    beta = lam / (lam + tau)
    qs = jnp.concatenate([jnp.zeros((1, S, A)), res.q[:-1]])  # q_0 … q_{K−1}
    h = jnp.zeros((S, A))
    for k in range(K):
        h = qs[k] + beta * h
        np.testing.assert_allclose(res.policies[k], jax.nn.softmax(h / (lam + tau), -1), atol=1e-10)
    np.testing.assert_allclose(res.policies[0], 1.0 / A, atol=1e-15)
    # τ = 0: the policy is a softmax of the SUM of the q's with temperature λ.
    res0 = md_vi(mdp, gamma, lam, 0.0, K, noise_std=0.5, key=jax.random.key(3))
    qs0 = jnp.concatenate([jnp.zeros((1, S, A)), res0.q[:-1]])
    np.testing.assert_allclose(res0.policies, jax.nn.softmax(jnp.cumsum(qs0, 0) / lam, -1), atol=1e-10)


def test_m_vi_equals_md_vi_with_matched_coefficients():
    """M-VI(α, τ) ≡ MD-VI(λ = ατ, τ' = (1−α)τ) on noisy runs with the same noise."""
    mdp = _garnet(5)
    gamma, alpha, tau, K = 0.9, 0.8, 0.3, 40
    key = jax.random.key(7)
    res_m = m_vi(mdp, gamma, alpha, tau, K, noise_std=0.3, key=key)
    res_md = md_vi(mdp, gamma, alpha * tau, (1 - alpha) * tau, K, noise_std=0.3, key=key)
    np.testing.assert_allclose(res_m.policies, res_md.policies, atol=1e-10)
    np.testing.assert_allclose(res_m.errors, res_md.errors, atol=1e-10)
    # Identical noise sequence (paired comparisons) regardless of the scheme.
    np.testing.assert_array_equal(res_m.noise_mean_norm, res_md.noise_mean_norm)


def test_tsallis_index_one_is_m_vi_and_index_two_is_sparse():
    mdp = _garnet(6)
    gamma, alpha, tau, K = 0.9, 0.6, 0.5, 15
    res_t1 = tsallis_m_vi(mdp, gamma, alpha, tau, 1.0, K)
    res_m = m_vi(mdp, gamma, alpha, tau, K)
    np.testing.assert_allclose(res_t1.policies, res_m.policies, atol=1e-10)
    np.testing.assert_allclose(res_t1.q, res_m.q, atol=1e-10)
    res_t2 = tsallis_m_vi(mdp, gamma, alpha, tau, 2.0, K)
    # Sparsemax policies: rows are distributions, and some actions get exactly zero mass.
    np.testing.assert_allclose(res_t2.policies.sum(-1), 1.0, atol=1e-12)
    assert bool(jnp.any(res_t2.policies[-1] == 0.0))


def test_tsallis_traced_index_matches_static_index():
    """The entropic index is sweepable as a traced array (Zhu et al. 2023's MVI(q) swept in one program)."""
    mdp = _garnet(6)
    gamma, alpha, tau, K = 0.9, 0.6, 0.5, 15
    for index in (1.0, 1.5, 2.0):  # softmax, bisection, sparsemax paths
        traced = jax.jit(lambda k: tsallis_m_vi(mdp, gamma, alpha, tau, k, K))(jnp.asarray(index))
        static = tsallis_m_vi(mdp, gamma, alpha, tau, index, K)
        np.testing.assert_allclose(traced.q, static.q, atol=1e-10)
        np.testing.assert_allclose(traced.policies, static.policies, atol=1e-10)


def test_noiseless_vi_converges_and_kl_schemes_improve():
    mdp = _garnet(8)
    gamma = 0.8
    res = vi(mdp, gamma, 120, eval_every=40)
    np.testing.assert_array_equal(res.iterations, [40, 80, 120])
    assert float(res.errors[-1]) < 1e-8
    np.testing.assert_allclose(res.q[-1], optimal_q(mdp, gamma), atol=1e-8)
    # KL only, no noise: the error decreases (O(1/k) in the bound) towards 0.
    res_kl = md_vi(mdp, gamma, 0.5, 0.0, 120, eval_every=40)
    assert float(res_kl.errors[-1]) < float(res_kl.errors[0])
    assert float(res_kl.errors[-1]) < 1e-2


def test_vmap_over_coefficient_grid_and_seeds_matches_single_runs():
    mdp = _garnet(9)
    gamma, K = 0.9, 20
    lams = jnp.array([0.1, 1.0, 3.0])
    taus = jnp.array([0.0, 0.05, 0.5])
    keys = jax.random.split(jax.random.key(11), 2)
    q_star = optimal_q(mdp, gamma)

    def run(lam, tau, key):
        return md_vi(mdp, gamma, lam, tau, K, noise_std=0.4, key=key, q_star=q_star, eval_every=10)

    grid = jax.jit(jax.vmap(jax.vmap(jax.vmap(run, (None, None, 0)), (None, 0, None)),
                            (0, None, None)))(lams, taus, keys)
    assert grid.errors.shape == (3, 3, 2, 2)
    single = run(lams[1], taus[2], keys[1])
    np.testing.assert_allclose(grid.errors[1, 2, 1], single.errors, atol=1e-12)
    np.testing.assert_allclose(grid.policies[1, 2, 1], single.policies, atol=1e-12)
    # Same seed => identical numbers; different seeds => different noise.
    again = run(lams[1], taus[2], keys[1])
    np.testing.assert_array_equal(again.errors, single.errors)
    assert not np.allclose(grid.noise_mean_norm[0, 0, 0], grid.noise_mean_norm[0, 0, 1])


def test_noise_statistics_are_the_running_average():
    """Recover every ε_{k+1} = q_{k+1} − (noiseless MD-VI backup of q_k) with the operators
    themselves, and compare the running-mean statistics the bound check uses."""
    from klrl.operators import mirror_descent_value

    mdp = _garnet(10)
    gamma, lam, tau, K, std = 0.9, 0.7, 0.2, 40, 0.7
    res = md_vi(mdp, gamma, lam, tau, K, noise_std=std, key=jax.random.key(4))
    qs = jnp.concatenate([jnp.zeros((1, S, A)), res.q])  # q_0 … q_K
    log_pis = jnp.log(jnp.concatenate([jnp.full((1, S, A), 1.0 / A), res.policies]))  # π_0 … π_K
    v = jax.vmap(lambda q, lp: mirror_descent_value(q, lp, lam=lam, tau=tau))(qs[:-1], log_pis[:-1])
    eps = res.q - (mdp.r + gamma * jax.vmap(lambda vk: expected_next(mdp, vk))(v))
    np.testing.assert_allclose(res.noise_norm, jnp.abs(eps).max((1, 2)), rtol=1e-9)
    running = jnp.cumsum(eps, 0) / jnp.arange(1, K + 1)[:, None, None]
    np.testing.assert_allclose(res.noise_mean_norm, jnp.abs(running).max((1, 2)), rtol=1e-8)
    # The noise has the requested scale (S·A·K = 1440 draws: sample std within 10%).
    assert float(jnp.std(eps)) == pytest.approx(std, rel=0.1)


def test_kl_bound_holds_on_noisy_runs():
    """The τ = 0 bound of Vieillard et al. 2020 (klrl.tabular.bounds) on a few noisy runs (the experiment checks many more).
    Also checks that whole schemes vmap over a batch of MDPs."""
    gamma, K = 0.9, 100
    mdps = jax.vmap(lambda k: garnet(k, S, A, B))(jax.random.split(jax.random.key(20), 2))
    lams = jnp.array([0.1, 1.0])
    stds = jnp.array([0.3, 3.0])

    def run(mdp, lam, std, key):
        return md_vi(mdp, gamma, lam, 0.0, K, noise_std=std, key=key, eval_every=5)

    over_keys = jax.vmap(run, (None, None, None, 0))
    over_stds = jax.vmap(over_keys, (None, None, 0, None))
    over_lams = jax.vmap(over_stds, (None, 0, None, None))
    res = jax.jit(jax.vmap(over_lams, (0, None, None, None)))(
        mdps, lams, stds, jax.random.split(jax.random.key(0), 2))
    assert res.errors.shape == (2, 2, 2, 2, K // 5)
    r_max = mdps.r.max((1, 2))[:, None, None, None, None]
    lam_b = lams[None, :, None, None, None]
    for offset in (0, 1):
        b = bound_for_policies(res.noise_mean_norm, res.iterations[0, 0, 0, 0], gamma, lam_b,
                               r_max, A, policy_offset=offset)
        assert b.shape == res.errors.shape
        assert bool(jnp.all(res.errors <= b)), offset
    # The errors are not trivially small: the bound is checked where noise matters.
    assert float(res.errors[:, :, 1].min()) > 1e-3
