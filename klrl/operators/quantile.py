"""Quantile return distributions: the IQN loss and targets (Dabney et al. 2018; Vieillard et al. 2020).

A return distribution is represented by its values Z_τ at quantile fractions τ ∈ (0, 1); the
arrays are [..., N, A] (fractions second to last, actions last), so the action-axis operators
of this package apply to them unchanged. The Q-value is the mean over fractions drawn
uniformly, q(s, a) ≈ (1/N) Σ_i Z_{τ_i}(s, a).
"""

from __future__ import annotations

import chex
import jax.numpy as jnp

from klrl.operators.checks import check_transition
from klrl.operators.policies import scaled_log_softmax, softmax_policy
from klrl.operators.targets import select_action
from klrl.operators.values import munchausen_bonus

Array = chex.Array
Numeric = chex.Numeric


def quantile_huber_loss(z_sa: Array, taus: Array, target: Array, kappa: float = 1.0) -> Array:
    """Quantile Huber loss (Dabney et al. 2018, IQN):

        loss = Σ_i (1/N') Σ_j ρ^κ_{τ_i}(y_j − Z_{τ_i}),   ρ^κ_τ(δ) = |τ − 1{δ < 0}|·L_κ(δ)/κ,

    with L_κ the Huber loss of threshold κ (½δ² for |δ| ≤ κ, κ(|δ| − ½κ) beyond): summed over
    the N predicted fractions, averaged over the N' target samples.

    Args:
      z_sa: predicted quantile values Z_τ(s, a) [B, N], float.
      taus: their fractions τ ∈ (0, 1) [B, N], float, the shape of `z_sa`.
      target: target samples y_j [B, N'], float (held fixed by the caller: stop its gradient).
      kappa: Huber threshold κ > 0, a Python float.

    Returns:
      [B]: the loss per example.
    """
    chex.assert_rank([z_sa, taus, target], 2)
    chex.assert_equal_shape([z_sa, taus])
    delta = target[:, None, :] - z_sa[:, :, None]                        # [B, N, N']
    abs_delta = jnp.abs(delta)
    huber = jnp.where(abs_delta <= kappa, 0.5 * delta ** 2, kappa * (abs_delta - 0.5 * kappa))
    weight = jnp.abs(taus[:, :, None] - (delta < 0).astype(delta.dtype))
    return jnp.sum(jnp.mean(weight * huber / kappa, axis=2), axis=1)


def quantile_q_learning_target(z_target_next: Array, q_target_next: Array, reward: Array, discount: Array) -> Array:
    """IQN's target (Dabney et al. 2018), one sample per target fraction j:

        y_j = r + d·Z̄_j(s', a*),   a* = argmax_a q̄(s', a).

    Args:
      z_target_next: target-network quantile values Z̄(s') [B, N', A], float.
      q_target_next: q̄(s') [B, A], float, the action values a* is chosen from.
      reward: r [B], float.
      discount: γ·(1 − terminated) [B], float, shaped like `reward` (a scalar is refused: it
        would bootstrap through terminal states).

    Returns:
      [B, N']: the target samples (no stop_gradient: the caller holds them fixed).
    """
    check_transition(reward, discount, q_target_next=q_target_next)
    chex.assert_rank([z_target_next, q_target_next, reward, discount], [3, 2, 1, 1])
    greedy = jnp.argmax(q_target_next, axis=-1)
    z_next = select_action(z_target_next, jnp.broadcast_to(greedy[:, None], z_target_next.shape[:2]))
    return reward[:, None] + discount[:, None] * z_next


def munchausen_quantile_target(z_target_next: Array, q_target_s: Array, q_target_next: Array, action: Array,
                               reward: Array, discount: Array, *, alpha: Numeric = 0.9, tau: Numeric = 0.03,
                               clip_min: Numeric = -1.0) -> Array:
    """Munchausen-IQN (Vieillard et al. 2020), per target fraction j:

        y_j = r + α·clip(τ ln π̄(a|s), l0, 0) + d·Σ_a' π̄(a'|s')·(Z̄_j(s', a') − τ ln π̄(a'|s')),

    π̄ = softmax(q̄/τ) of the target network's action values at s and s'. α = 0 gives the
    soft (entropy-regularized) IQN target.

    Args:
      z_target_next: target-network quantile values Z̄(s') [B, N', A], float.
      q_target_s: q̄(s) [B, A], float.
      q_target_next: q̄(s') [B, A], float.
      action: a [B], integer in [0, A) (concrete values out of range are refused; traced
        ones are a checkify-able precondition, klrl.operators.checks).
      reward: r [B], float.
      discount: γ·(1 − terminated) [B], float, shaped like `reward` (a scalar is refused).
      alpha: Munchausen scale α (paper: 0.9), a number or an array [B].
      tau: entropy weight τ > 0 (paper: 0.03), a number or an array [B].
      clip_min: l0 ≤ 0 (paper: −1), a number or an array [B].

    Returns:
      [B, N']: the target samples (no stop_gradient: the caller holds them fixed).
    """
    check_transition(reward, discount, q_target_s=q_target_s, q_target_next=q_target_next)
    chex.assert_rank([z_target_next, q_target_s, q_target_next, action, reward, discount], [3, 2, 2, 1, 1, 1])
    bonus = select_action(munchausen_bonus(q_target_s, alpha=alpha, tau=tau, clip_min=clip_min), action)
    pi_next = softmax_policy(q_target_next, tau)                        # [B, A]
    scaled_log_pi = scaled_log_softmax(q_target_next, tau)              # τ ln π̄(·|s'), finite as τ → 0
    soft_next = jnp.sum(pi_next[:, None, :] * (z_target_next - scaled_log_pi[:, None, :]), axis=-1)
    return (reward + bonus)[:, None] + discount[:, None] * soft_next


__all__ = ["munchausen_quantile_target", "quantile_huber_loss", "quantile_q_learning_target"]
