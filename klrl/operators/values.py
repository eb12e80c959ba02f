"""Regularized state values v(q) and per-action bonuses: the pieces every target is built from.

A regularized Bellman target is `y(s, a) = r + bonus(q̄(s))[a] + d·v(q̄(s'))` (docs/algorithms.md).
The deep targets (klrl.operators.targets) evaluate `v` at a sampled next state; the tabular
schemes (klrl.tabular) evaluate it at every state and take the exact expectation `γ P v`.
Both call the functions below, so the tabular checks test the deep targets' mathematics.

Values return the leading shape of `q` ([..., A] -> [...]); bonuses return [..., A] (one
entry per action; targets pick the taken action).
"""

from __future__ import annotations

import chex
import jax.numpy as jnp

from klrl.operators.policies import (
    _coef,
    _coef_lead,
    _lse,
    _shift,
    log_q,
    mirror_descent_logits,
    scaled_log_softmax,
    soft_value,
    static_index,
    tsallis_policy,
)

Array = chex.Array
Numeric = chex.Numeric


def greedy_value(q: Array) -> Array:
    """v(s) = max_a q(s, a): the unregularized state value (Q-learning, Watkins 1989; DQN, Mnih et al. 2015).

    Args:
      q: action values [..., A], float.

    Returns:
      [...]: max over the action axis.
    """
    return jnp.max(q, axis=-1)


def action_gap(q: Array) -> Array:
    """max_b q(b) − q(a) ≥ 0 for every action a: the action gap advantage learning penalizes
    (Bellemare et al. 2016).

    Args:
      q: action values [..., A], float.

    Returns:
      [..., A]: max q − q(a), one entry per action.
    """
    return jnp.max(q, axis=-1, keepdims=True) - q


def mirror_descent_value(q: Array, log_pi_prev: Array, *, lam: Numeric, tau: Numeric) -> Array:
    """v = <π₊, q − λ ln(π₊/π₋) − τ ln π₊> at the mirror-descent policy π₊ (Vieillard et al. 2020).

    With u = (λ ln π₋ + q)/(λ+τ) and ln π₊ = u − lse(u), the bracket is the constant
    (λ+τ)·lse(u) on the support, so v = (λ+τ)·lse(q/(λ+τ) + β ln π₋), β = λ/(λ+τ): a soft value
    with temperature λ+τ and "prior" β ln π₋. That form is exact and needs no π₊ (stable when
    π₊ underflows). Requires λ + τ > 0.

    Args:
      q: action values [..., A], float.
      log_pi_prev: ln π₋ [..., A], the shape of `q`.
      lam: KL weight λ ≥ 0, a number or an array aligned with the leading axes of `q`.
      tau: entropy weight τ ≥ 0, a number or an array aligned with the leading axes of `q`.

    Returns:
      [...]: v(q).
    """
    # Same u and lse as `mirror_descent_log_policy`, so a program needing both computes it once;
    # u omits max q/(λ+τ), which is added back here exactly.
    u = mirror_descent_logits(q, log_pi_prev, lam=lam, tau=tau)
    return jnp.squeeze(_shift(q)[1] + (_coef(lam, q) + _coef(tau, q)) * _lse(u), -1)


def munchausen_bonus(q: Array, *, alpha: Numeric, tau: Numeric, clip_min: Numeric = -1.0) -> Array:
    """α·clip(τ ln π(a|s), l0, 0) with π = softmax(q/τ), for every action (Vieillard et al. 2020, M-DQN).

    The clip acts on τ ln π (not on ln π), as in the paper; `clip_min = -inf` gives the
    unclipped Munchausen VI bonus used in tabular checks.

    Args:
      q: action values [..., A], float.
      alpha: Munchausen scale α, a number or an array aligned with the leading axes of `q`.
      tau: temperature τ > 0, a number or an array aligned with the leading axes of `q`.
      clip_min: l0 ≤ 0 (−inf: no clip), a number or an array aligned with the leading axes of `q`.

    Returns:
      [..., A]: the bonus of every action.
    """
    scaled = scaled_log_softmax(q, tau)
    return _coef(alpha, q) * jnp.clip(scaled, _coef(clip_min, q), 0.0)


def tsallis_greedy_policy(q: Array, *, tau: Numeric, entropic_index: Numeric,
                          consistent_weight: bool = False) -> Array:
    """The regularized greedy policy of MVI(q) on q-values (Zhu et al. 2023).

    Literal form (default): π = tsallis_policy(q/τ), greedy for the Tsallis weight τ/k.
    Consistent form: π = tsallis_policy(q/(k τ)), the maximizer of <π, q> + τ S_k(π).
    At k = 1 both are softmax(q/τ).

    Args:
      q: action values [..., A], float.
      tau: temperature τ > 0, a number or an array aligned with the leading axes of `q`.
      entropic_index: Tsallis index k ≥ 1 (may be traced), a number or an array aligned with the leading axes of `q`.
      consistent_weight: static bool, the weight convention above.

    Returns:
      [..., A]: π, rows summing to 1.
    """
    temperature = _coef(tau, q) * _coef(entropic_index, q) if consistent_weight else _coef(tau, q)
    return tsallis_policy(_shift(q)[0] / temperature, entropic_index)   # shift before dividing by τ


def _tsallis_scaled_log(q: Array, tau: Numeric, entropic_index: Numeric, consistent_weight: bool):
    """(π, τ·ln_q π) for the MVI(q) greedy policy of q (`tsallis_greedy_policy`).

    At k = 1, τ ln π is computed by the stable scaled_log_softmax.
    """
    tau_c = _coef(tau, q)
    k = _coef(entropic_index, q)
    pi = tsallis_greedy_policy(q, tau=tau, entropic_index=entropic_index, consistent_weight=consistent_weight)
    general = tau_c * log_q(pi, jnp.where(k == 1.0, 2.0, k))
    k_static = static_index(entropic_index, q.dtype)
    if k_static is not None and k_static != 1:
        return pi, general
    return pi, jnp.where(k == 1.0, scaled_log_softmax(q, tau), general)


def tsallis_value(q: Array, *, tau: Numeric, entropic_index: Numeric, consistent_weight: bool = False) -> Array:
    """v = <π, q − τ ln_q π> with π the Tsallis policy of q̄ (Zhu et al. 2023, MVI(q)).

    Index 1 gives τ·lse(q/τ) (soft value). The literal form takes π = tsallis_policy(q/τ),
    which is greedy for the Tsallis weight τ/k while the value uses τ (the MVI(q) target);
    `consistent_weight=True` takes π greedy for weight τ, making v = max_π <π,q> + τ S_k(π).

    Args:
      q: action values [..., A], float.
      tau: temperature τ > 0, a number or an array aligned with the leading axes of `q`.
      entropic_index: Tsallis index k ≥ 1 (may be traced), a number or an array aligned with the leading axes of `q`.
      consistent_weight: static bool, the weight convention above.

    Returns:
      [...]: v(q).
    """
    pi, scaled_logq = _tsallis_scaled_log(q, tau, entropic_index, consistent_weight)
    # max q + <π, (q − max q) − τ ln_q π>: Σπ − 1 (a few ulp) then multiplies the spread of q, not |q|.
    shifted, m = _shift(q)
    general = jnp.squeeze(m, -1) + jnp.sum(pi * (shifted - scaled_logq), axis=-1)
    k_static = static_index(entropic_index, q.dtype)
    if k_static is not None:
        return soft_value(q, tau) if k_static == 1 else general
    is_one = _coef_lead(entropic_index, q) == 1.0
    return jnp.where(is_one, soft_value(q, tau), general)


def tsallis_munchausen_bonus(
    q: Array,
    *,
    alpha: Numeric,
    tau: Numeric,
    entropic_index: Numeric,
    clip_min: Numeric = -1.0,
    consistent_weight: bool = False,
) -> Array:
    """α·max(τ ln_q π(a|s), l0) for every action, π the Tsallis policy of q (MVI(q), Zhu et al. 2023).

    ln_q π ≤ 0, so max(·, l0) equals the M-DQN clip to [l0, 0]; index 1 reproduces
    `munchausen_bonus` exactly. With index 2, τ ln_2 π = τ(π − 1) ∈ [−τ, 0] is bounded anyway.

    Args:
      q: action values [..., A], float.
      alpha: Munchausen scale α, a number or an array aligned with the leading axes of `q`.
      tau: temperature τ > 0, a number or an array aligned with the leading axes of `q`.
      entropic_index: Tsallis index k ≥ 1 (may be traced), a number or an array aligned with the leading axes of `q`.
      clip_min: l0 ≤ 0 (−inf: no clip), a number or an array aligned with the leading axes of `q`.
      consistent_weight: static bool (see `tsallis_value`).

    Returns:
      [..., A]: the bonus of every action.
    """
    _, scaled_logq = _tsallis_scaled_log(q, tau, entropic_index, consistent_weight)
    return _coef(alpha, q) * jnp.clip(scaled_logq, _coef(clip_min, q), 0.0)
