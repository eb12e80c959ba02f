"""Exact Q♯ identities on tabular MDPs (klrl.tabular.qsharp; docs/algorithms.md §4).

Deterministic chain/tree MDPs, γ = 1, a fixed random π_ref: the entropic value of π_ref's
exact return distribution equals the exact KL-regularized Q* and the guided policy equals
the closed-form optimum, to 1e-8 in float64. Plus the documented biases: stochastic
transitions (optimism) and γ < 1 (discounted KL).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klrl.tabular import chain_mdp, q_of_policy, tree_mdp
from klrl.tabular.mdp import MDP
from klrl.tabular.qsharp import (
    entropic_value,
    guided_policy,
    optimal_policy,
    return_distribution,
    soft_q_prior,
)


def _random_policy(key, S, A):
    """A full-support random π_ref (Dirichlet(1) rows), float64."""
    w = jax.random.exponential(key, (S, A), dtype=jnp.float64)
    return w / w.sum(-1, keepdims=True)


def _mdps():
    return [
        ("chain", lambda k: chain_mdp(k, 5, 3)),
        ("tree", lambda k: tree_mdp(k, 4, 2)),
        ("tree_sparse", lambda k: tree_mdp(k, 3, 3, leaf_rewards_only=True)),
    ]


@pytest.mark.parametrize("name,build", _mdps(), ids=[m[0] for m in _mdps()])
@pytest.mark.parametrize("eta", [0.05, 0.3, 2.0])
def test_entropic_value_of_reference_return_is_kl_optimum(x64, name, build, eta):
    key = jax.random.PRNGKey([m[0] for m in _mdps()].index(name) * 100 + int(eta * 100))
    k_mdp, k_pi = jax.random.split(key)
    mdp = build(k_mdp)
    pi_ref = _random_policy(k_pi, mdp.num_states, mdp.num_actions)
    log_pi = jnp.log(pi_ref)

    dist = return_distribution(mdp, pi_ref)
    q_eta = entropic_value(dist, eta)
    q_star = soft_q_prior(mdp, log_pi, eta)
    live = ~np.asarray(mdp.terminal)
    assert q_eta.dtype == jnp.float64
    np.testing.assert_allclose(q_eta[live], q_star[live], rtol=0, atol=1e-8)

    pi_guided = guided_policy(q_eta, log_pi, eta)
    pi_star = optimal_policy(q_star, log_pi, eta)
    np.testing.assert_allclose(pi_guided[live], pi_star[live], rtol=0, atol=1e-8)
    # Not a vacuous identity: the optimum really moves away from π_ref and from greedy.
    assert float(jnp.max(jnp.abs(pi_star[live] - pi_ref[live]))) > 1e-3


def test_return_distribution_is_a_distribution_with_the_right_mean(x64):
    mdp = tree_mdp(jax.random.PRNGKey(3), 3, 3)
    pi_ref = _random_policy(jax.random.PRNGKey(4), mdp.num_states, mdp.num_actions)
    dist = return_distribution(mdp, pi_ref)
    np.testing.assert_allclose(dist.probs.sum(-1), 1.0, atol=1e-12)
    mean = (dist.values * dist.probs).sum(-1)
    q_ref = q_of_policy(mdp, pi_ref, 1.0)   # exact linear solve, independent of the DP
    np.testing.assert_allclose(mean, q_ref, atol=1e-12)
    # Root of a depth-3 ternary tree: 3 actions x 9 continuations = 9 outcomes per action.
    assert int((dist.probs[0, 0] > 0).sum()) == 9


def test_entropic_value_limits(x64):
    """η → ∞: the mean E[Z]; η → 0: the best reachable return (max over the support)."""
    mdp = chain_mdp(jax.random.PRNGKey(5), 4, 2)
    pi_ref = _random_policy(jax.random.PRNGKey(6), mdp.num_states, mdp.num_actions)
    dist = return_distribution(mdp, pi_ref)
    mean = (dist.values * dist.probs).sum(-1)
    best = np.where(dist.probs > 0, dist.values, -np.inf).max(-1)
    np.testing.assert_allclose(entropic_value(dist, 1e6), mean, atol=1e-5)
    np.testing.assert_allclose(entropic_value(dist, 1e-4), best, atol=2e-3)


def _stochastic_mdp():
    """s0 --a0--> s1 or s2 (½ each); s0 --a1--> s1; s1, s2 --any--> terminal s3."""
    P = np.zeros((4, 2, 4))
    P[0, 0, 1] = P[0, 0, 2] = 0.5
    P[0, 1, 1] = 1.0
    P[1, :, 3] = P[2, :, 3] = P[3, :, 3] = 1.0
    r = np.array([[0.1, 0.3], [0.0, 1.0], [0.8, 0.2], [0.0, 0.0]])
    return MDP(P=jnp.asarray(P), r=jnp.asarray(r), terminal=jnp.asarray([False, False, False, True]))


def test_stochastic_transitions_make_the_entropic_value_optimistic(x64):
    mdp = _stochastic_mdp()
    pi_ref = jnp.full((4, 2), 0.5)
    eta = 0.2
    q_eta = entropic_value(return_distribution(mdp, pi_ref), eta)
    q_star = soft_q_prior(mdp, jnp.log(pi_ref), eta)
    # Deterministic (s, a): exact. The stochastic (s0, a0): strictly above Q* (Jensen).
    np.testing.assert_allclose(q_eta[0, 1], q_star[0, 1], atol=1e-12)
    np.testing.assert_allclose(q_eta[1:3], q_star[1:3], atol=1e-12)
    gap = float(q_eta[0, 0] - q_star[0, 0])
    # The exact gap: η ln E_s' e^{V(s')/η} − E_s' V(s'), V = soft value at s1, s2.
    v = jnp.asarray([float(eta * jnp.log(jnp.mean(jnp.exp(q_star[s] / eta)))) for s in (1, 2)])
    expected = float(eta * jnp.log(jnp.mean(jnp.exp(v / eta))) - jnp.mean(v))
    assert gap > 1e-3
    np.testing.assert_allclose(gap, expected, atol=1e-12)


def test_discounting_breaks_the_identity(x64):
    """γ < 1 with the usual (discounted-KL) soft Q: the entropic value is biased; γ = 1 exact."""
    mdp = tree_mdp(jax.random.PRNGKey(7), 3, 2)
    pi_ref = _random_policy(jax.random.PRNGKey(8), mdp.num_states, mdp.num_actions)
    live = ~np.asarray(mdp.terminal)
    eta = 0.3
    gaps = {}
    for gamma in (1.0, 0.9):
        q_eta = entropic_value(return_distribution(mdp, pi_ref, gamma), eta)
        q_star = soft_q_prior(mdp, jnp.log(pi_ref), eta, gamma)
        gaps[gamma] = float(jnp.max(jnp.abs(q_eta - q_star)[live]))
    assert gaps[1.0] < 1e-10
    assert gaps[0.9] > 1e-3


def test_cycle_is_rejected():
    P = np.zeros((2, 1, 2))
    P[0, 0, 1] = P[1, 0, 0] = 1.0
    mdp = MDP(P=jnp.asarray(P), r=jnp.zeros((2, 1)), terminal=jnp.asarray([False, False]))
    with pytest.raises(ValueError, match="cycle"):
        return_distribution(mdp, np.ones((2, 1)))
