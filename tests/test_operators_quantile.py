"""klrl.operators.quantile: the quantile Huber loss on hand-computed arrays, the IQN and M-IQN
targets against their definitions (float64), and their limits."""

import jax.numpy as jnp
import numpy as np
import pytest

from klrl import operators as ops

pytestmark = pytest.mark.usefixtures("x64")


def test_quantile_huber_loss_by_hand():
    # δ_ij = y_j − z_i = [[0.5, 3.0], [−0.5, 2.0]]; Huber(κ=1) = [[.125, 2.5], [.125, 1.5]];
    # weights |τ_i − 1{δ<0}| = [[.25, .25], [.25, .75]]; Σ_i mean_j = .328125 + .578125.
    z = jnp.array([[0.0, 1.0]])
    taus = jnp.array([[0.25, 0.75]])
    y = jnp.array([[0.5, 3.0]])
    np.testing.assert_allclose(ops.quantile_huber_loss(z, taus, y, kappa=1.0), [0.90625], rtol=1e-12)
    # κ = 2: |δ| ≤ 2 is quadratic except δ = 3: 2·(3 − 1) = 4, divided by κ.
    expected = (0.25 * 0.125 + 0.25 * 4.0) / 2 / 2 + (0.25 * 0.125 + 0.75 * 2.0) / 2 / 2
    np.testing.assert_allclose(ops.quantile_huber_loss(z, taus, y, kappa=2.0), [expected], rtol=1e-12)


def test_quantile_loss_minimized_at_the_quantiles():
    """For many target samples, the loss is smallest when z_i is the τ_i-quantile of y."""
    y = jnp.asarray(np.random.default_rng(0).normal(size=(1, 4001)))
    taus = jnp.array([[0.1, 0.5, 0.9]])
    best = np.quantile(np.asarray(y[0]), [0.1, 0.5, 0.9])
    at_best = ops.quantile_huber_loss(jnp.asarray(best)[None], taus, y, kappa=1e-3)
    for shift in (-0.05, 0.05):
        assert ops.quantile_huber_loss(jnp.asarray(best + shift)[None], taus, y, kappa=1e-3)[0] > at_best[0]


def _case(seed=0, B=3, N=5, A=4):
    r = np.random.default_rng(seed)
    return (jnp.asarray(r.normal(size=(B, N, A))), jnp.asarray(r.normal(size=(B, A))), jnp.asarray(r.normal(size=(B, A))),
            jnp.asarray(r.integers(0, A, B)), jnp.asarray(r.normal(size=B)), jnp.asarray(r.uniform(size=B)))


def test_iqn_target_is_greedy_quantiles():
    z_next, _, q_next, _, reward, d = _case()
    y = ops.quantile_q_learning_target(z_next, q_next, reward, d)
    a = np.argmax(np.asarray(q_next), axis=-1)
    expected = np.asarray(reward)[:, None] + np.asarray(d)[:, None] * np.asarray(z_next)[np.arange(3), :, a]
    np.testing.assert_allclose(y, expected, rtol=1e-12)


def test_munchausen_quantile_target_by_definition():
    z_next, q_s, q_next, action, reward, d = _case(1)
    alpha, tau, l0 = 0.9, 0.3, -1.0
    y = ops.munchausen_quantile_target(z_next, q_s, q_next, action, reward, d, alpha=alpha, tau=tau, clip_min=l0)
    qs, qn = np.asarray(q_s), np.asarray(q_next)
    log_pi_s = qs / tau - np.log(np.sum(np.exp(qs / tau), axis=-1, keepdims=True))
    log_pi_n = qn / tau - np.log(np.sum(np.exp(qn / tau), axis=-1, keepdims=True))
    bonus = alpha * np.clip(tau * log_pi_s[np.arange(3), np.asarray(action)], l0, 0.0)
    soft = np.sum(np.exp(log_pi_n)[:, None, :] * (np.asarray(z_next) - tau * log_pi_n[:, None, :]), axis=-1)
    expected = (np.asarray(reward) + bonus)[:, None] + np.asarray(d)[:, None] * soft
    np.testing.assert_allclose(y, expected, rtol=1e-10)


def test_munchausen_quantile_alpha_zero_is_soft_iqn_and_collapses_to_m_dqn():
    z_next, q_s, q_next, action, reward, d = _case(2)
    soft = ops.munchausen_quantile_target(z_next, q_s, q_next, action, reward, d, alpha=0.0, tau=0.1)
    # α = 0: the bonus vanishes whatever q(s) is.
    np.testing.assert_allclose(soft, ops.munchausen_quantile_target(z_next, 5 * q_s, q_next, action, reward, d,
                                                                    alpha=0.0, tau=0.1), rtol=1e-12)
    # Every fraction equal to q̄(s'): each y_j is the scalar M-DQN target r + bonus + d·τ·lse(q̄(s')/τ).
    flat = jnp.broadcast_to(q_next[:, None, :], z_next.shape)
    y = ops.munchausen_quantile_target(flat, q_s, q_next, action, reward, d, alpha=0.9, tau=0.1)
    m_dqn = ops.munchausen_target(q_s, q_next, action, reward, d, alpha=0.9, tau=0.1)
    np.testing.assert_allclose(y, np.broadcast_to(np.asarray(m_dqn)[:, None], y.shape), rtol=1e-10)


@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_float32_at_real_value_scales(scale):
    """float32 quantiles of size ~1e3 (Atari returns) with τ = 0.03: finite, close to float64."""
    z_next, q_s, q_next, action, reward, d = (x * scale if x.dtype == jnp.float64 else x for x in _case(3))
    y64 = ops.munchausen_quantile_target(z_next, q_s, q_next, action, reward, d, alpha=0.9, tau=0.03)
    f32 = [x.astype(jnp.float32) if x.dtype == jnp.float64 else x for x in (z_next, q_s, q_next, action, reward, d)]
    y32 = ops.munchausen_quantile_target(*f32, alpha=0.9, tau=0.03)
    assert np.all(np.isfinite(y32))
    np.testing.assert_allclose(y32, y64, rtol=1e-5, atol=1e-4 * scale)
