"""Regularized Bellman targets y(s, a) = r + bonus(q̄(s))[a] + d·v(q̄(s')).

Each target composes a state value and, for the Munchausen family, a per-action bonus from
`klrl.operators.values`, the functions the tabular schemes call directly (docs/algorithms.md
gives every equation and its paper; docs/conventions.md the array conventions).

Common arguments (rlax style; `[...]` is any leading shape, `A` the number of actions):
  q_target_s:    q̄(s) [..., A], float, from the target network (or any frozen values).
  q_target_next: q̄(s') [..., A], float.
  action:        a [...], integer in [0, A). Concrete values out of range are refused; under
                 `jit` an out-of-range action is a precondition (≥ A reads NaN, < 0 wraps).
  reward:        r [...], float.
  discount:      d = γ·(1 − terminated) [...], float, shaped like `reward`. Truncation by a
                 time limit is NOT termination and keeps γ. A scalar is refused when `reward`
                 is batched (it would bootstrap through terminal states): pass
                 `jnp.full_like(reward, γ)` if no transition terminates.
  coefficients:  α, τ, λ, η, the entropic index and l0 are Python numbers or arrays (traced
                 or not) aligned with the leading axes of the q-arrays.
Every target returns y [...] in the dtype of the q-arrays, wrapped in `stop_gradient`: a loss
(q(s, a) − y)² trains only through q(s, a). Bad shapes raise a one-line ValueError naming the
argument (`klrl.operators.checks`).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from klrl.operators.checks import check_action, check_transition
from klrl.operators.policies import _coef_lead, soft_value
from klrl.operators.values import (
    action_gap,
    greedy_value,
    mirror_descent_value,
    munchausen_bonus,
    tsallis_munchausen_bonus,
    tsallis_value,
)

Array = chex.Array
Numeric = chex.Numeric


def select_action(x: Array, action: Array) -> Array:
    """x[..., action]: the entry of the taken action.

    Args:
      x: per-action values [..., A], any dtype.
      action: integer actions [...] (the leading shape of `x`), in [0, A). A concrete
        out-of-range action raises a one-line ValueError; a traced one is a precondition
        that `jax.experimental.checkify.checkify` checks (klrl.operators.checks); unchecked,
        ≥ A reads NaN and < 0 counts from the end.

    Returns:
      [...]: `x` at the taken actions.
    """
    check_action(action, x.shape[-1], x.shape[:-1])
    return jnp.take_along_axis(x, action[..., None].astype(jnp.int32), axis=-1)[..., 0]


def _bootstrap(reward: Array, discount: Array, next_value: Array, bonus: Array | float = 0.0) -> Array:
    """stop_gradient(r + bonus + d·v(s')); the shapes were checked by the caller."""
    return jax.lax.stop_gradient(reward + bonus + discount * next_value)


def q_learning_target(q_target_next: Array, reward: Array, discount: Array) -> Array:
    """DQN (Mnih et al. 2015): y = r + d·max_a' q̄(s', a').

    Args:
      q_target_next: q̄(s') [..., A], float.
      reward: r [...], float.
      discount: γ·(1 − terminated) [...], float, shaped like `reward` (a scalar is refused:
        it would bootstrap through terminal states).

    Returns:
      y [...], in the dtype of the q-arrays, stop-gradient.
    """
    check_transition(reward, discount, q_target_next=q_target_next)
    return _bootstrap(reward, discount, greedy_value(q_target_next))


def double_q_target(q_online_next: Array, q_target_next: Array, reward: Array, discount: Array) -> Array:
    """Double DQN (van Hasselt et al. 2016): y = r + d·q̄(s', argmax_a' q(s', a')).

    The online network chooses the next action, the target network evaluates it.

    Args:
      q_online_next: q(s') [..., A], float, from the online network.
      q_target_next: q̄(s') [..., A], the shape of `q_online_next`.
      reward: r [...], float.
      discount: γ·(1 − terminated) [...], float, shaped like `reward` (a scalar is refused:
        it would bootstrap through terminal states).

    Returns:
      y [...], in the dtype of the q-arrays, stop-gradient.
    """
    check_transition(reward, discount, q_online_next=q_online_next, q_target_next=q_target_next)
    chex.assert_equal_shape([q_online_next, q_target_next])
    next_action = jnp.argmax(q_online_next, axis=-1)
    return _bootstrap(reward, discount, select_action(q_target_next, next_action))


def soft_q_target(q_target_next: Array, reward: Array, discount: Array, *, tau: Numeric) -> Array:
    """Soft Q-learning (Haarnoja et al. 2017): y = r + d·τ·lse(q̄(s')/τ) = r + d<π̄, q̄ − τ ln π̄>.

    Args:
      q_target_next: q̄(s') [..., A], float.
      reward: r [...], float.
      discount: γ·(1 − terminated) [...], float, shaped like `reward` (a scalar is refused:
        it would bootstrap through terminal states).
      tau: entropy weight τ > 0.

    Returns:
      y [...], in the dtype of the q-arrays, stop-gradient.
    """
    check_transition(reward, discount, q_target_next=q_target_next)
    return _bootstrap(reward, discount, soft_value(q_target_next, tau))


def kl_prior_target(
    q_target_next: Array, log_prior_next: Array, reward: Array, discount: Array, *, eta: Numeric
) -> Array:
    """KL to a fixed prior π_ref (Fox et al. 2016): y = r + d·η·lse(q̄(s')/η + ln π_ref(s')).

    The fixed-point policy is π ∝ π_ref·exp(Q/η); a uniform prior gives soft Q minus η ln A.
    It is the TD soft-Q baseline of Q♯ (Zhou et al. 2025).

    Args:
      q_target_next: q̄(s') [..., A], float.
      log_prior_next: ln π_ref(·|s') [..., A], float, the shape of `q_target_next`.
      reward: r [...], float.
      discount: γ·(1 − terminated) [...], float, shaped like `reward` (a scalar is refused:
        it would bootstrap through terminal states).
      eta: KL temperature η > 0.

    Returns:
      y [...], in the dtype of the q-arrays, stop-gradient.
    """
    check_transition(reward, discount, q_target_next=q_target_next, log_prior_next=log_prior_next)
    return _bootstrap(reward, discount, soft_value(q_target_next, eta, log_prior_next))


def advantage_learning_target(
    q_target_s: Array, q_target_next: Array, action: Array, reward: Array, discount: Array, *, alpha: Numeric
) -> Array:
    """Advantage learning (Bellemare et al. 2016): y = r + d·max q̄(s') − α(max_b q̄(s,b) − q̄(s,a)).

    The action gap of the fixed point grows by 1/(1−α).

    Args:
      q_target_s: q̄(s) [..., A], float.
      q_target_next: q̄(s') [..., A], float.
      action: a [...], integer in [0, A) (see `select_action`).
      reward: r [...], float.
      discount: γ·(1 − terminated) [...], float, shaped like `reward` (a scalar is refused:
        it would bootstrap through terminal states).
      alpha: gap scale α ∈ [0, 1).

    Returns:
      y [...], in the dtype of the q-arrays, stop-gradient.
    """
    check_transition(reward, discount, q_target_s=q_target_s, q_target_next=q_target_next)
    penalty = _coef_lead(alpha, q_target_s) * select_action(action_gap(q_target_s), action)
    return _bootstrap(reward, discount, greedy_value(q_target_next), -penalty)


def persistent_advantage_learning_target(
    q_target_s: Array, q_target_next: Array, action: Array, reward: Array, discount: Array, *, alpha: Numeric
) -> Array:
    """Persistent AL (Bellemare et al. 2016): y = max(AL target, r + d·q̄(s', a)) (repeat the action).

    Args: as `advantage_learning_target`.

    Returns:
      y [...], in the dtype of the q-arrays, stop-gradient.
    """
    al = advantage_learning_target(q_target_s, q_target_next, action, reward, discount, alpha=alpha)
    persist = _bootstrap(reward, discount, select_action(q_target_next, action))
    return jnp.maximum(al, persist)


def munchausen_target(
    q_target_s: Array,
    q_target_next: Array,
    action: Array,
    reward: Array,
    discount: Array,
    *,
    alpha: Numeric = 0.9,
    tau: Numeric = 0.03,
    clip_min: Numeric = -1.0,
) -> Array:
    """M-DQN (Vieillard et al. 2020): y = r + α·clip(τ ln π̄(a|s), l0, 0) + d·τ·lse(q̄(s')/τ).

    π̄ = softmax(q̄/τ) from the TARGET network at s and s'. The bonus is added on terminal
    transitions too (it belongs to (s, a), not to s'). α = 0 gives soft Q; τ → 0 tends to
    advantage learning with parameter α (when gaps stay within |l0|).

    Args:
      q_target_s: q̄(s) [..., A], float.
      q_target_next: q̄(s') [..., A], float.
      action: a [...], integer in [0, A) (see `select_action`).
      reward: r [...], float.
      discount: γ·(1 − terminated) [...], float, shaped like `reward` (a scalar is refused:
        it would bootstrap through terminal states).
      alpha: Munchausen scale α (paper: 0.9).
      tau: entropy weight τ > 0 (paper: 0.03).
      clip_min: l0 ≤ 0, the lower clip of τ ln π̄ (paper: −1).

    Returns:
      y [...], in the dtype of the q-arrays, stop-gradient.
    """
    check_transition(reward, discount, q_target_s=q_target_s, q_target_next=q_target_next)
    bonus = select_action(munchausen_bonus(q_target_s, alpha=alpha, tau=tau, clip_min=clip_min), action)
    return _bootstrap(reward, discount, soft_value(q_target_next, tau), bonus)


def tsallis_munchausen_target(
    q_target_s: Array,
    q_target_next: Array,
    action: Array,
    reward: Array,
    discount: Array,
    *,
    entropic_index: Numeric = 2.0,
    alpha: Numeric = 0.9,
    tau: Numeric = 0.03,
    clip_min: Numeric = -1.0,
    consistent_weight: bool = False,
) -> Array:
    """MVI(q) (Zhu et al., NeurIPS 2023): y = r + α·max(τ ln_q π̄(a|s), l0) + d·<π̄, q̄ − τ ln_q π̄>(s').

    π̄ is the Tsallis policy of q̄/τ (literal weight; see `tsallis_value` for the
    `consistent_weight` option). Index 1 equals `munchausen_target`; α = 0 with index 2 is
    the sparse-max Bellman target.

    Args:
      q_target_s: q̄(s) [..., A], float.
      q_target_next: q̄(s') [..., A], float.
      action: a [...], integer in [0, A) (see `select_action`).
      reward: r [...], float.
      discount: γ·(1 − terminated) [...], float, shaped like `reward` (a scalar is refused:
        it would bootstrap through terminal states).
      entropic_index: Tsallis index q ≥ 1 (1: M-DQN, 2: sparsemax); may be traced.
      alpha: Munchausen scale α.
      tau: entropy weight τ > 0.
      clip_min: l0 ≤ 0, the lower clip of τ ln_q π̄.
      consistent_weight: static; True makes π̄ greedy for the weight τ (policy of q̄/(qτ)).

    Returns:
      y [...], in the dtype of the q-arrays, stop-gradient.
    """
    check_transition(reward, discount, q_target_s=q_target_s, q_target_next=q_target_next)
    bonus = tsallis_munchausen_bonus(
        q_target_s, alpha=alpha, tau=tau, entropic_index=entropic_index, clip_min=clip_min,
        consistent_weight=consistent_weight,
    )
    value = tsallis_value(q_target_next, tau=tau, entropic_index=entropic_index, consistent_weight=consistent_weight)
    return _bootstrap(reward, discount, value, select_action(bonus, action))


def mirror_descent_target(
    q_target_next: Array, log_pi_prev_next: Array, reward: Array, discount: Array, *, lam: Numeric, tau: Numeric
) -> Array:
    """Explicit mirror descent, "DQN-KL"/MD-DQN (Vieillard et al. 2020, Leverage the Average):

    y = r + d·<π₊, q̄ − λ ln(π₊/π₋) − τ ln π₊>(s'), ln π₊ = log_softmax((λ ln π₋ + q̄)/(λ+τ)),
    with π₋ the policy of the PREVIOUS target network at s' (callers must store it).

    Args:
      q_target_next: q̄(s') [..., A], float.
      log_pi_prev_next: ln π₋(·|s') [..., A], float, the shape of `q_target_next`.
      reward: r [...], float.
      discount: γ·(1 − terminated) [...], float, shaped like `reward` (a scalar is refused:
        it would bootstrap through terminal states).
      lam: KL weight λ ≥ 0.
      tau: entropy weight τ ≥ 0, with λ + τ > 0.

    Returns:
      y [...], in the dtype of the q-arrays, stop-gradient.
    """
    check_transition(reward, discount, q_target_next=q_target_next, log_pi_prev_next=log_pi_prev_next)
    return _bootstrap(reward, discount, mirror_descent_value(q_target_next, log_pi_prev_next, lam=lam, tau=tau))
