"""Categorical (C51) return distributions and the Q♯ entropic value.

Atoms `z_1 < … < z_N` are fixed and evenly spaced (spacing Δ), a float array [N]. A return
distribution is a probability vector over the atoms on the LAST axis: probs [..., N];
per-action distributions are [..., A, N] (actions second to last). `reward` and `discount`
follow `klrl.operators.targets`: [...] each, `discount` = γ·(1 − terminated) shaped like
`reward` (a scalar is refused when `reward` is batched). The equations and papers are in
docs/algorithms.md (C51; Q♯).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from klrl.operators.checks import check_action, check_transition
from klrl.operators.policies import _coef, _shift, soft_value

Array = chex.Array
Numeric = chex.Numeric


def categorical_projection(atoms: Array, probs: Array, reward: Array, discount: Array) -> Array:
    """Project the distribution of r + d·Z onto the atoms (Bellemare et al. 2017, C51).

    Each shifted atom Tz_j = clip(r + d·z_j, z_1, z_N) splits its mass p_j between its two
    neighbouring atoms in proportion to closeness: the weight on atom i is
    max(0, 1 − |Tz_j − z_i|/Δ). Mass is conserved (rows sum to 1).

    Args:
      atoms: z [N], float, evenly spaced and increasing.
      probs: p [..., N], the distribution of Z (rows sum to 1).
      reward: r [...].
      discount: γ·(1 − terminated) [...], shaped like `reward`.

    Returns:
      [..., N]: the projected distribution (stop-gradient).
    """
    chex.assert_rank(atoms, 1)
    check_transition(reward, discount, probs=probs)
    spacing = atoms[1] - atoms[0]
    shifted = reward[..., None] + discount[..., None] * atoms  # [..., N]
    shifted = jnp.clip(shifted, atoms[0], atoms[-1])
    # weights[..., j, i]: share of source atom j landing on target atom i.
    weights = jnp.clip(1.0 - jnp.abs(shifted[..., :, None] - atoms) / spacing, 0.0, 1.0)
    projected = jnp.einsum("...j,...ji->...i", probs, weights)
    return jax.lax.stop_gradient(projected)


def categorical_td_target(
    atoms: Array, probs_next: Array, next_action_weights: Array, reward: Array, discount: Array
) -> Array:
    """Projected distributional target for a mixture over next actions.

    Target = Π(r + d·Z'), Z' ~ Σ_a' w(a') p(s', a'). One-hot argmax weights give C51
    (Bellemare et al. 2017); w = π_ref(·|s') gives distributional expected SARSA under π_ref,
    the off-policy Q♯ critic (Zhou et al. 2025).

    Args:
      atoms: z [N], float, evenly spaced and increasing.
      probs_next: p(s', ·) [..., A, N], per-action next-state distributions.
      next_action_weights: w [..., A], rows summing to 1 (one-hot or π_ref(·|s')).
      reward: r [...].
      discount: γ·(1 − terminated) [...], shaped like `reward`.

    Returns:
      [..., N]: the projected target distribution (stop-gradient).
    """
    chex.assert_equal_shape_prefix([probs_next, next_action_weights], next_action_weights.ndim)
    mixture = jnp.einsum("...a,...an->...n", next_action_weights, probs_next)
    return categorical_projection(atoms, mixture, reward, discount)


def categorical_mean(logits: Array, atoms: Array) -> Array:
    """E[Z] = Σ_i p_i z_i with p = softmax(logits): a categorical critic's action value (C51,
    Bellemare et al. 2017).

    Args:
      logits: [..., A, N], unnormalized log-probabilities over the atoms.
      atoms: z [N].

    Returns:
      [..., A]: the mean return of each action.
    """
    return jnp.sum(jax.nn.softmax(logits, axis=-1) * atoms, axis=-1)


def entropic_q(logits: Array, atoms: Array, eta: Numeric) -> Array:
    """Q♯ entropic value Q_η = η ln E[exp(Z/η)] = η·lse_i(ln p_i + z_i/η) (Zhou et al. 2025).

    For π_ref's return distribution Z(s, a) on a deterministic MDP with an undiscounted KL,
    this is exactly the KL-regularized optimum Q*(s, a) toward π_ref at temperature η.
    It tends to E[Z] as η → ∞ and to the largest supported atom as η → 0.

    Args:
      logits: [..., A, N], unnormalized log-probabilities over the atoms.
      atoms: z [N].
      eta: temperature η > 0, a number or an array aligned with the leading axes.

    Returns:
      [..., A]: Q_η of each action.
    """
    log_p = jax.nn.log_softmax(logits, axis=-1)
    # η·lse(z/η + ln p) is a soft value over atoms with "prior" ln p; the η here must align with
    # the leading axes of logits, so build it on the [..., A] shape.
    eta_full = jnp.broadcast_to(_coef(eta, logits[..., 0]), logits.shape[:-1])
    return soft_value(jnp.broadcast_to(atoms, logits.shape), eta_full, log_p)


def guided_logits(log_pi_ref: Array, q_eta: Array, eta: Numeric) -> Array:
    """Logits of the guided policy π ∝ π_ref·exp(Q_η/η): ln π_ref + (Q_η − max Q_η)/η (Zhou et al. 2025).

    The constant max Q_η/η is dropped (the policy is unchanged), so large returns over a
    small η do not cost float32 precision in the logits.

    Args:
      log_pi_ref: ln π_ref(·|s) [..., A].
      q_eta: Q_η(s, ·) [..., A] (`entropic_q`).
      eta: temperature η > 0.

    Returns:
      [..., A]: logits of the guided policy.
    """
    chex.assert_equal_shape([log_pi_ref, q_eta])
    return log_pi_ref + _shift(q_eta)[0] / _coef(eta, q_eta)


def categorical_cross_entropy(logits: Array, action: Array, target: Array) -> Array:
    """−Σ_i y_i ln p_i(s, a), p(s, a) = softmax(logits[a]): the categorical critic's loss (C51,
    Bellemare et al. 2017; Q♯'s critic, Zhou et al. 2025) against a target distribution y.

    Args:
      logits: [B, A, N], float, unnormalized log-probabilities over the atoms per action.
      action: a [B], integer in [0, A) (concrete values out of range are refused; traced ones
        are a checkify-able precondition, klrl.operators.checks).
      target: y [B, N], float, rows summing to 1 (callers stop its gradient).

    Returns:
      [B]: the cross-entropy per example.
    """
    chex.assert_rank([logits, action, target], [3, 1, 2])
    check_action(action, logits.shape[1], logits.shape[:1])
    logits_sa = jnp.take_along_axis(logits, action[:, None, None].astype(jnp.int32), axis=1)[:, 0]
    return -jnp.sum(target * jax.nn.log_softmax(logits_sa, axis=-1), axis=-1)
