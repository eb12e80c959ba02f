"""klrl.operators.policies: greedy steps, soft values, Tsallis q-algebra and policies."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from klrl import operators as ops
from klrl.operators.policies import _tsallis_bisection

shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5).map(lambda s: s + (4,))
finite = st.floats(-20, 20, allow_nan=False, width=64)


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@given(hnp.arrays(np.float64, shapes, elements=finite), st.floats(0.05, 10.0))
def test_scaled_log_softmax_matches_definition(q, tau):
    with jax.enable_x64(True):
        got = np.asarray(ops.scaled_log_softmax(jnp.asarray(q), tau))
    np.testing.assert_allclose(got, tau * _np_log_softmax(q / tau), rtol=1e-9, atol=1e-9)


def test_stability_small_tau_large_q():
    # τ = 1e-3 with q ~ 1e3: q/τ ~ 1e6 overflows a naive exp; the stable forms stay exact.
    q = jnp.array([[1000.0, 999.5, 998.0], [-1000.0, -1000.2, -1003.0]], jnp.float32)
    tau = 1e-3
    log_pi = ops.scaled_log_softmax(q, tau)
    assert np.all(np.isfinite(np.asarray(log_pi)))
    # Gaps ≥ 0.2 ≫ τ: τ ln π(a) = q(a) − max q up to τ·e^{−200}.
    np.testing.assert_allclose(log_pi, q - q.max(-1, keepdims=True), atol=1e-3)
    np.testing.assert_allclose(ops.soft_value(q, tau), q.max(-1), rtol=1e-6)
    pi = ops.softmax_policy(q, tau)
    np.testing.assert_allclose(pi, [[1, 0, 0], [1, 0, 0]], atol=1e-6)


def test_soft_value_limits_and_prior(x64):
    q = jnp.array([[0.3, -1.2, 2.0, 0.0]])
    assert np.allclose(ops.soft_value(q, 1e-4), 2.0, atol=1e-6)  # τ → 0: max
    # τ → ∞: τ·lse(q/τ) − τ ln A → mean(q)
    big = 1e6
    np.testing.assert_allclose(ops.soft_value(q, big) - big * np.log(4), q.mean(-1), atol=1e-4)
    uniform = jnp.full_like(q, -np.log(4.0))
    np.testing.assert_allclose(ops.soft_value(q, 0.7, uniform), ops.soft_value(q, 0.7) - 0.7 * np.log(4), atol=1e-12)
    # Prior form is the regularized max: <π, q> − τ KL(π‖ρ) at π ∝ ρ exp(q/τ).
    log_rho = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4]]))
    tau = 0.5
    log_pi = jax.nn.log_softmax(q / tau + log_rho)
    pi = jnp.exp(log_pi)
    expected = jnp.sum(pi * (q - tau * (log_pi - log_rho)), -1)
    np.testing.assert_allclose(ops.soft_value(q, tau, log_rho), expected, atol=1e-12)


def test_soft_value_gradient_is_policy(x64):
    q = jnp.array([0.3, -1.2, 2.0])
    grad = jax.grad(lambda x: ops.soft_value(x, 0.4))(q)
    np.testing.assert_allclose(grad, jax.nn.softmax(q / 0.4), atol=1e-12)


def test_coefficients_align_with_leading_axes(x64):
    q = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 4))
    taus = jnp.array([0.1, 1.0, 3.0])
    batched = ops.soft_value(q, taus)
    looped = jnp.stack([ops.soft_value(q[i], taus[i]) for i in range(3)])
    np.testing.assert_allclose(batched, looped, atol=1e-12)
    vmapped = jax.vmap(lambda x, t: ops.scaled_log_softmax(x, t))(q, taus)
    np.testing.assert_allclose(vmapped, ops.scaled_log_softmax(q, taus), atol=1e-12)


@pytest.mark.parametrize("k", [1.0, 1.5, 2.0, 3.0])
def test_log_q_exp_q_inverse(k, x64):
    x = jnp.linspace(0.05, 1.0, 9)
    np.testing.assert_allclose(ops.exp_q(ops.log_q(x, k), k), x, rtol=1e-10)
    np.testing.assert_allclose(ops.log_q(x, jnp.asarray(k)), ops.log_q(x, k), rtol=1e-12)


def test_q_algebra_special_values(x64):
    x = jnp.array([0.2, 0.5, 1.0])
    np.testing.assert_allclose(ops.log_q(x, 1.0), jnp.log(x))
    np.testing.assert_allclose(ops.exp_q(x, 1.0), jnp.exp(x))
    np.testing.assert_allclose(ops.log_q(x, 2.0), x - 1.0)
    assert float(ops.log_q(jnp.array(0.0), 2.0)) == -1.0  # ln_q(0) = −1/(q−1): finite
    assert float(ops.log_q(jnp.array(0.0), 3.0)) == -0.5
    assert float(ops.exp_q(jnp.array(-5.0), 2.0)) == 0.0  # [·]_+ truncation


@jax.jit
def _sparsemax_and_bisection(z):
    """Both in one program: one compile per shape instead of one per eager op and loop."""
    return ops.sparsemax(z), _tsallis_bisection(z, jnp.asarray(2.0, z.dtype))


@given(hnp.arrays(np.float64, shapes, elements=finite))
def test_sparsemax_equals_bisection_at_index_two(z):
    with jax.enable_x64(True):
        exact, bisect = _sparsemax_and_bisection(jnp.asarray(z))
    np.testing.assert_allclose(exact, bisect, atol=1e-9)
    np.testing.assert_allclose(np.asarray(exact).sum(-1), 1.0, atol=1e-12)


@pytest.mark.parametrize("k", [1.0, 1.3, 2.0, 3.0])
def test_tsallis_policy_traced_index_matches_static(k, x64):
    z = jax.random.normal(jax.random.PRNGKey(1), (6, 5)) * 2
    static = ops.tsallis_policy(z, k)
    traced = jax.jit(ops.tsallis_policy)(z, jnp.asarray(k))
    np.testing.assert_allclose(static, traced, atol=1e-9)
    np.testing.assert_allclose(static.sum(-1), 1.0, atol=1e-12)
    assert np.all(np.asarray(static) >= 0)


@pytest.mark.parametrize("k", [1.0, 1.5, 2.0, 4.0])
def test_tsallis_policy_is_the_regularized_argmax(k, x64):
    # π maximizes <π, z> + S_k(π)/k: no random point of the simplex does better.
    z = jax.random.normal(jax.random.PRNGKey(2), (4,)) * 1.5
    pi = ops.tsallis_policy(z, k)
    objective = lambda p: jnp.dot(p, z) + ops.tsallis_entropy(p, k) / k
    best = objective(pi)
    others = jax.random.dirichlet(jax.random.PRNGKey(3), jnp.ones(4) * 0.5, (2000,))
    assert float(jnp.max(jax.vmap(objective)(others))) <= float(best) + 1e-12
    # And the value is the right scale: at k = 1, <π, z> + H(π) = lse(z).
    if k == 1.0:
        np.testing.assert_allclose(best, jax.nn.logsumexp(z), atol=1e-12)


def test_tsallis_entropy_special_cases(x64):
    pi = jnp.array([0.5, 0.25, 0.25, 0.0])
    shannon = -(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25))
    np.testing.assert_allclose(ops.tsallis_entropy(pi, 1.0), shannon, atol=1e-12)
    np.testing.assert_allclose(ops.tsallis_entropy(pi, 2.0), 1 - np.sum(np.square(pi)), atol=1e-12)
    np.testing.assert_allclose(ops.tsallis_entropy(pi, 3.0), (1 - np.sum(pi**3)) / 2, atol=1e-12)
    assert float(ops.tsallis_entropy(jnp.array([1.0, 0.0, 0.0]), 2.0)) == 0.0


def test_mirror_descent_closed_form(x64):
    key1, key2 = jax.random.split(jax.random.PRNGKey(4))
    q = jax.random.normal(key1, (3, 5))
    log_prev = jax.nn.log_softmax(jax.random.normal(key2, (3, 5)))
    lam, tau = 0.6, 0.2
    beta = lam / (lam + tau)
    expected = jax.nn.log_softmax(beta * log_prev + beta * q / lam)  # π₊ ∝ π₋^β exp(βq/λ)
    np.testing.assert_allclose(ops.mirror_descent_log_policy(q, log_prev, lam=lam, tau=tau), expected, atol=1e-12)
    # τ = 0: a pure KL step π₊ ∝ π₋ exp(q/λ); λ → 0: the entropy-only softmax(q/τ).
    np.testing.assert_allclose(
        ops.mirror_descent_log_policy(q, log_prev, lam=lam, tau=0.0), jax.nn.log_softmax(log_prev + q / lam), atol=1e-12
    )
    np.testing.assert_allclose(
        ops.mirror_descent_log_policy(q, log_prev, lam=1e-12, tau=tau), jax.nn.log_softmax(q / tau), atol=1e-9
    )
