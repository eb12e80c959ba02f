"""klrl.operators targets and values: the identities and limits of docs/algorithms.md."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from klrl import operators as ops

A = 4


def _batch(key, batch=(5,), scale=1.0, dtype=jnp.float64):
    k = jax.random.split(key, 5)
    q_s = jax.random.normal(k[0], batch + (A,), dtype) * scale
    q_next = jax.random.normal(k[1], batch + (A,), dtype) * scale
    action = jax.random.randint(k[2], batch, 0, A)
    reward = jax.random.normal(k[3], batch, dtype)
    terminated = jax.random.bernoulli(k[4], 0.3, batch)
    discount = 0.9 * (1.0 - terminated.astype(dtype))
    return q_s, q_next, action, reward, discount


def test_dqn_and_double_dqn_by_hand(x64):
    q_next = jnp.array([[1.0, 3.0, 2.0]])
    q_online_next = jnp.array([[0.0, -1.0, 5.0]])
    r, d = jnp.array([0.5]), jnp.array([0.9])
    np.testing.assert_allclose(ops.q_learning_target(q_next, r, d), 0.5 + 0.9 * 3.0)
    np.testing.assert_allclose(ops.double_q_target(q_online_next, q_next, r, d), 0.5 + 0.9 * 2.0)
    # Termination: d = 0 gives the reward alone.
    np.testing.assert_allclose(ops.q_learning_target(q_next, r, jnp.zeros(1)), 0.5)


def test_soft_q_is_expected_regularized_value(x64):
    _, q_next, _, r, d = _batch(jax.random.PRNGKey(0))
    tau = 0.3
    pi = jax.nn.softmax(q_next / tau)
    value = jnp.sum(pi * (q_next - tau * jnp.log(pi)), -1)
    np.testing.assert_allclose(ops.soft_q_target(q_next, r, d, tau=tau), r + d * value, atol=1e-12)


def test_kl_prior_uniform_is_soft_q_minus_constant(x64):
    _, q_next, _, r, d = _batch(jax.random.PRNGKey(1))
    eta = 0.7
    uniform = jnp.full_like(q_next, -np.log(A))
    np.testing.assert_allclose(
        ops.kl_prior_target(q_next, uniform, r, d, eta=eta),
        ops.soft_q_target(q_next, r, d, tau=eta) - d * eta * np.log(A),
        atol=1e-12,
    )


def test_advantage_learning_by_hand(x64):
    q_s = jnp.array([[1.0, 4.0, 2.0]])
    q_next = jnp.array([[0.0, 1.0, 3.0]])
    a, r, d = jnp.array([2]), jnp.array([1.0]), jnp.array([0.5])
    al = ops.advantage_learning_target(q_s, q_next, a, r, d, alpha=0.9)
    np.testing.assert_allclose(al, 1.0 + 0.5 * 3.0 - 0.9 * (4.0 - 2.0))
    pal = ops.persistent_advantage_learning_target(q_s, q_next, a, r, d, alpha=0.9)
    np.testing.assert_allclose(pal, max(float(al[0]), 1.0 + 0.5 * 3.0))
    # The greedy action is never penalized.
    np.testing.assert_allclose(
        ops.advantage_learning_target(q_s, q_next, jnp.array([1]), r, d, alpha=0.9), 1.0 + 0.5 * 3.0
    )


def test_munchausen_by_hand_and_clip_on_scaled_log(x64):
    q_s = jnp.array([[0.0, 0.1, 2.0]])
    q_next = jnp.array([[1.0, 0.0, 0.0]])
    r, d = jnp.array([1.0]), jnp.array([0.99])
    tau, alpha = 0.03, 0.9
    scaled = tau * jax.nn.log_softmax(q_s / tau)
    for a in range(3):
        y = ops.munchausen_target(q_s, q_next, jnp.array([a]), r, d, alpha=alpha, tau=tau, clip_min=-1.0)
        expected = 1.0 + alpha * np.clip(scaled[0, a], -1.0, 0.0) + 0.99 * tau * jax.nn.logsumexp(q_next / tau)
        np.testing.assert_allclose(y, expected, atol=1e-12)
    # Action 0 has τ ln π ≈ −2 < l0: clipped to l0, so the bonus is exactly α·l0.
    bonus = ops.munchausen_bonus(q_s, alpha=alpha, tau=tau, clip_min=-1.0)
    assert float(bonus[0, 0]) == pytest.approx(-0.9, abs=1e-12)


def test_munchausen_bonus_on_terminal_transitions(x64):
    q_s, q_next, a, r, _ = _batch(jax.random.PRNGKey(2))
    d = jnp.zeros_like(r)
    bonus = ops.select_action(ops.munchausen_bonus(q_s, alpha=0.9, tau=0.03), a)
    np.testing.assert_allclose(ops.munchausen_target(q_s, q_next, a, r, d), r + bonus, atol=1e-12)
    assert np.all(np.asarray(bonus) <= 0)


def test_munchausen_alpha_zero_is_soft_q(x64):
    q_s, q_next, a, r, d = _batch(jax.random.PRNGKey(3))
    np.testing.assert_allclose(
        ops.munchausen_target(q_s, q_next, a, r, d, alpha=0.0, tau=0.1),
        ops.soft_q_target(q_next, r, d, tau=0.1),
        atol=1e-12,
    )


@pytest.mark.parametrize("tau", [1e-2, 1e-3, 1e-4])
def test_munchausen_small_tau_tends_to_advantage_learning(tau, x64):
    q_s, q_next, a, r, d = _batch(jax.random.PRNGKey(4))
    mdqn = ops.munchausen_target(q_s, q_next, a, r, d, alpha=0.9, tau=tau, clip_min=-jnp.inf)
    al = ops.advantage_learning_target(q_s, q_next, a, r, d, alpha=0.9)
    # The gap is O(τ ln A) (entropy of the near-greedy policy): shrinks linearly with τ.
    assert float(jnp.max(jnp.abs(mdqn - al))) <= 2 * tau * np.log(A) + 1e-12


def test_tsallis_index_one_is_munchausen(x64):
    q_s, q_next, a, r, d = _batch(jax.random.PRNGKey(5), scale=3.0)
    kw = dict(alpha=0.9, tau=0.03, clip_min=-1.0)
    expected = ops.munchausen_target(q_s, q_next, a, r, d, **kw)
    np.testing.assert_allclose(
        ops.tsallis_munchausen_target(q_s, q_next, a, r, d, entropic_index=1.0, **kw), expected, atol=1e-12
    )
    traced = jax.jit(lambda k: ops.tsallis_munchausen_target(q_s, q_next, a, r, d, entropic_index=k, **kw))
    np.testing.assert_allclose(traced(1.0), expected, atol=1e-12)


def _spmax(z):
    """Sparsemax value spmax(z) = max_π <π, z> + ½(1 − ‖π‖²) in closed form (Lee et al. 2018)."""
    pi = ops.sparsemax(z)
    support = pi > 0
    thr = jnp.sum(jnp.where(support, z, 0), -1) - 1.0
    thr = thr / jnp.sum(support, -1)
    return 0.5 * jnp.sum(jnp.where(support, z**2 - thr[..., None] ** 2, 0), -1) + 0.5


def test_tsallis_alpha_zero_index_two_is_sparse_bellman(x64):
    q_s, q_next, a, r, d = _batch(jax.random.PRNGKey(6), scale=2.0)
    tau = 0.5
    # Literal weight (default): π = sparsemax(q/τ), v = <π, q> + τ(1 − ‖π‖²).
    literal = ops.tsallis_munchausen_target(q_s, q_next, a, r, d, entropic_index=2.0, alpha=0.0, tau=tau)
    pi = ops.sparsemax(q_next / tau)
    v = jnp.sum(pi * q_next, -1) + tau * (1 - jnp.sum(pi**2, -1))
    np.testing.assert_allclose(literal, r + d * v, atol=1e-12)
    # Consistent weight: v = max_π <π,q> + τ S_2(π) = 2τ·spmax(q/(2τ)), the sparse Bellman
    # operator of Lee et al. (2018) at temperature 2τ.
    consistent = ops.tsallis_munchausen_target(
        q_s, q_next, a, r, d, entropic_index=2.0, alpha=0.0, tau=tau, consistent_weight=True
    )
    np.testing.assert_allclose(consistent, r + d * 2 * tau * _spmax(q_next / (2 * tau)), atol=1e-12)


def test_tsallis_value_consistent_weight_is_the_max(x64):
    q = jax.random.normal(jax.random.PRNGKey(7), (A,))
    others = jax.random.dirichlet(jax.random.PRNGKey(8), jnp.ones(A), (3000,))
    for k in (1.5, 2.0, 3.0):
        v = ops.tsallis_value(q, tau=0.4, entropic_index=k, consistent_weight=True)
        objective_of = lambda p: jnp.dot(p, q) + 0.4 * ops.tsallis_entropy(p, k)  # noqa: E731
        sampled = jax.vmap(objective_of)(others)
        assert float(jnp.max(sampled)) <= float(v) + 1e-12
        # ... and it is attained by a point of the simplex, so it is not an over-estimate.
        pi = ops.tsallis_greedy_policy(q, tau=0.4, entropic_index=k, consistent_weight=True)
        assert float(pi.min()) >= 0 and abs(float(pi.sum()) - 1) < 1e-12
        np.testing.assert_allclose(v, objective_of(pi), atol=1e-12)


def test_tsallis_index_two_bonus_is_bounded_without_clip(x64):
    q_s = jax.random.normal(jax.random.PRNGKey(9), (50, A)) * 100
    bonus = ops.tsallis_munchausen_bonus(q_s, alpha=1.0, tau=0.03, entropic_index=2.0, clip_min=-jnp.inf)
    assert float(bonus.min()) >= -0.03 - 1e-12 and float(bonus.max()) <= 0.0


def test_mirror_descent_target_matches_explicit_expectation(x64):
    _, q_next, _, r, d = _batch(jax.random.PRNGKey(10))
    log_prev = jax.nn.log_softmax(jax.random.normal(jax.random.PRNGKey(11), q_next.shape))
    lam, tau = 0.5, 0.1
    log_new = ops.mirror_descent_log_policy(q_next, log_prev, lam=lam, tau=tau)
    pi = jnp.exp(log_new)
    value = jnp.sum(pi * (q_next - lam * (log_new - log_prev) - tau * log_new), -1)
    np.testing.assert_allclose(
        ops.mirror_descent_target(q_next, log_prev, r, d, lam=lam, tau=tau), r + d * value, atol=1e-12
    )
    # λ = 0 removes the KL: soft Q with temperature τ.
    np.testing.assert_allclose(
        ops.mirror_descent_target(q_next, log_prev, r, d, lam=0.0, tau=tau),
        ops.soft_q_target(q_next, r, d, tau=tau),
        atol=1e-12,
    )


def test_all_targets_finite_at_tiny_tau_large_q():
    q_s, q_next, a, r, d = _batch(jax.random.PRNGKey(12), scale=1e3, dtype=jnp.float32)
    log_prev = jax.nn.log_softmax(q_next / 1e-3)  # a near-deterministic previous policy
    tau = 1e-3
    outs = {
        "soft": ops.soft_q_target(q_next, r, d, tau=tau),
        "mdqn": ops.munchausen_target(q_s, q_next, a, r, d, tau=tau),
        "mvi1": ops.tsallis_munchausen_target(q_s, q_next, a, r, d, entropic_index=1.0, tau=tau),
        "mvi2": ops.tsallis_munchausen_target(q_s, q_next, a, r, d, entropic_index=2.0, tau=tau),
        "mvi3": ops.tsallis_munchausen_target(q_s, q_next, a, r, d, entropic_index=3.0, tau=tau),
        "md": ops.mirror_descent_target(q_next, log_prev, r, d, lam=tau, tau=tau),
        "prior": ops.kl_prior_target(q_next, jnp.full_like(q_next, -np.log(A)), r, d, eta=tau),
    }
    dqn = ops.q_learning_target(q_next, r, d)
    for name, y in outs.items():
        assert np.all(np.isfinite(np.asarray(y))), name
    # Near-greedy regularization: the soft value is the max up to τ ln A (relative to 1e3).
    np.testing.assert_allclose(outs["soft"], dqn, rtol=1e-5, atol=1e-2)
    al = ops.advantage_learning_target(q_s, q_next, a, r, d, alpha=0.9)
    # M-DQN at tiny τ: AL with the penalty clipped at α·l0.
    gap = ops.select_action(ops.action_gap(q_s), a)
    np.testing.assert_allclose(outs["mdqn"], jnp.where(gap < 1.0, al, dqn - 0.9), rtol=1e-5, atol=1e-2)


def test_gradients_flow_only_through_the_online_value():
    q_s, q_next, a, r, d = _batch(jax.random.PRNGKey(13), dtype=jnp.float32)

    def loss(q_online_s, q_target_s, q_target_next):
        y = ops.munchausen_target(q_target_s, q_target_next, a, r, d)
        return jnp.mean((ops.select_action(q_online_s, a) - y) ** 2)

    g_online, g_target_s, g_target_next = jax.grad(loss, argnums=(0, 1, 2))(q_s, q_s, q_next)
    assert float(jnp.abs(g_online).sum()) > 0
    assert float(jnp.abs(g_target_s).sum()) == 0.0
    assert float(jnp.abs(g_target_next).sum()) == 0.0
    # Only the taken action's entry gets gradient.
    mask = jax.nn.one_hot(a, A)
    assert float(jnp.abs(g_online * (1 - mask)).sum()) == 0.0


# A few fixed shapes (each compiles once) with random values, coefficients and indices.
lead = st.sampled_from([(3,), (2, 3), (1, 2, 2)])


@jax.jit
def _mvi(q_s, q_next, a, r, d, k, tau):
    return ops.tsallis_munchausen_target(q_s, q_next, a, r, d, entropic_index=k, tau=tau)


@functools.partial(jax.jit, static_argnames=("k", "tau"))
def _mvi_static(q_s, q_next, a, r, d, *, k, tau):
    """The Python-float (static) dispatch, jitted: one compile per example instead of one per
    eager op and bisection loop."""
    return ops.tsallis_munchausen_target(q_s, q_next, a, r, d, entropic_index=k, tau=tau)


# Half the profile's examples: each one compiles the static-index program anew (its index and τ
# are compile-time constants), ~0.6 s an example.
@settings(max_examples=max(10, settings().max_examples // 2))
@given(lead, st.sampled_from([2, 5]), st.floats(0.01, 2.0), st.floats(1.0, 3.0), st.integers(0, 2**31 - 1))
def test_targets_keep_leading_shape_and_vmap(batch, num_actions, tau, k, seed):
    key = jax.random.PRNGKey(seed)
    k1, k2, k3 = jax.random.split(key, 3)
    q_s = jax.random.normal(k1, batch + (num_actions,))
    q_next = jax.random.normal(k2, batch + (num_actions,))
    a = jax.random.randint(k3, batch, 0, num_actions)
    r = jnp.ones(batch)
    d = jnp.full(batch, 0.99)
    y = _mvi(q_s, q_next, a, r, d, k, tau)  # traced index: the population path
    assert y.shape == batch and np.all(np.isfinite(np.asarray(y)))
    static = _mvi_static(q_s, q_next, a, r, d, k=k, tau=tau)   # Python-float index and τ
    np.testing.assert_allclose(y, static, rtol=1e-5, atol=1e-5)
    # Per-row coefficients (a vmapped population) equal the scalar call row by row.
    taus = jnp.full(batch[:1], tau)
    y_rows = ops.munchausen_target(q_s, q_next, a, r, d, tau=taus, alpha=jnp.full(batch[:1], 0.5))
    np.testing.assert_allclose(y_rows, ops.munchausen_target(q_s, q_next, a, r, d, tau=tau, alpha=0.5), rtol=1e-5)
    vm = jax.vmap(lambda t: ops.soft_q_target(q_next, r, d, tau=t))(jnp.array([tau, 2 * tau]))
    np.testing.assert_allclose(vm[0], ops.soft_q_target(q_next, r, d, tau=tau), rtol=1e-6)


@pytest.mark.parametrize("consistent", [False, True])
def test_tsallis_value_is_expectation_under_greedy_policy(consistent, x64):
    q = jax.random.normal(jax.random.PRNGKey(14), (6, A)) * 2
    tau, k = 0.3, 1.7
    pi = ops.tsallis_greedy_policy(q, tau=tau, entropic_index=k, consistent_weight=consistent)
    expected = jnp.sum(pi * (q - tau * ops.log_q(pi, k)), -1)
    np.testing.assert_allclose(
        ops.tsallis_value(q, tau=tau, entropic_index=k, consistent_weight=consistent), expected, atol=1e-12
    )


def test_a_static_index_that_rounds_to_one_is_the_index_one():
    """Hypothesis found it: the Python-float index 1 + 2⁻⁵² is 1.0 in float32. The static
    dispatch compared it in float64 (not 1: the q ≠ 1 branch) while the arithmetic used 1.0, so
    the MVI(q) target took ln_2 where ln belongs. Dispatch and arithmetic now agree."""
    q_s = jnp.array([[-0.3, 1.2], [0.5, 0.4], [2.0, -1.0]], jnp.float32)
    q_next = jnp.array([[0.1, -0.7], [1.5, 0.2], [-0.4, 0.9]], jnp.float32)
    a, r, d = jnp.array([0, 1, 1]), jnp.ones(3), jnp.full(3, 0.99)
    k = 1.0000000000000002
    assert k != 1.0 and np.float32(k) == 1.0
    for tau in (1.0, 0.03):
        want = ops.tsallis_munchausen_target(q_s, q_next, a, r, d, entropic_index=1.0, tau=tau)
        got = ops.tsallis_munchausen_target(q_s, q_next, a, r, d, entropic_index=k, tau=tau)
        np.testing.assert_allclose(got, want, rtol=1e-6)
        np.testing.assert_allclose(ops.tsallis_value(q_next, tau=tau, entropic_index=k),
                                   ops.tsallis_value(q_next, tau=tau, entropic_index=1.0), rtol=1e-6)
        np.testing.assert_allclose(_mvi(q_s, q_next, a, r, d, k, tau), want, rtol=1e-5, atol=1e-6)
