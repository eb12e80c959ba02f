"""Regularized Bellman targets y(s, a) = r + bonus(q̄(s))[a] + d·v(q̄(s')) (ALGORITHMS.md §2).

Shapes: q-arrays are [..., A] (action axis last), `action`, `reward` and `discount` have the
leading shape [...], and every target returns that leading shape. `discount` is
γ·(1 − terminated): truncation by a time limit is NOT termination and keeps γ.
Coefficients (α, τ, λ, η, q-index, l0) may be floats or traced arrays aligned with the
leading axes. Targets are wrapped in `stop_gradient`: a loss `(q(s,a) − y)²` only trains
through q(s, a), even when the caller passes online-network values as "target" inputs.
Each target is a composition of the values and bonuses of `klrl.operators.values`, which the
tabular schemes call directly.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

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
    """x[..., action]: the entry of the taken action, for x [..., A] and integer action [...]."""
    chex.assert_equal_shape_prefix([x, action], action.ndim)
    return jnp.take_along_axis(x, action[..., None].astype(jnp.int32), axis=-1)[..., 0]


def _bootstrap(reward: Array, discount: Array, next_value: Array, bonus: Array | float = 0.0) -> Array:
    chex.assert_equal_shape([reward, discount, next_value])
    return jax.lax.stop_gradient(reward + bonus + discount * next_value)


def q_learning_target(q_target_next: Array, reward: Array, discount: Array) -> Array:
    """DQN (Mnih et al. 2015): y = r + d·max_a' q̄(s', a')."""
    return _bootstrap(reward, discount, greedy_value(q_target_next))


def double_q_target(q_online_next: Array, q_target_next: Array, reward: Array, discount: Array) -> Array:
    """Double DQN (van Hasselt et al. 2016): y = r + d·q̄(s', argmax_a' q(s', a')), online net picks."""
    chex.assert_equal_shape([q_online_next, q_target_next])
    next_action = jnp.argmax(q_online_next, axis=-1)
    return _bootstrap(reward, discount, select_action(q_target_next, next_action))


def soft_q_target(q_target_next: Array, reward: Array, discount: Array, *, tau: Numeric) -> Array:
    """Soft Q-learning (Haarnoja et al. 2017): y = r + d·τ·lse(q̄(s')/τ) = r + d<π̄, q̄ − τ ln π̄>."""
    return _bootstrap(reward, discount, soft_value(q_target_next, tau))


def kl_prior_target(
    q_target_next: Array, log_prior_next: Array, reward: Array, discount: Array, *, eta: Numeric
) -> Array:
    """KL to a fixed prior π_ref (Fox et al. 2016; Q♯'s soft-Q baseline): y = r + d·η·lse(q̄(s')/η + ln π_ref(s')).

    The fixed point policy is π ∝ π_ref·exp(Q/η). A uniform prior gives soft Q minus η ln A.
    """
    return _bootstrap(reward, discount, soft_value(q_target_next, eta, log_prior_next))


def advantage_learning_target(
    q_target_s: Array, q_target_next: Array, action: Array, reward: Array, discount: Array, *, alpha: Numeric
) -> Array:
    """Advantage learning (Bellemare et al. 2016): y = r + d·max q̄(s') − α(max_b q̄(s,b) − q̄(s,a)).

    The action gap of the fixed point grows by 1/(1−α).
    """
    penalty = _coef_lead(alpha, q_target_s) * select_action(action_gap(q_target_s), action)
    return _bootstrap(reward, discount, greedy_value(q_target_next), -penalty)


def persistent_advantage_learning_target(
    q_target_s: Array, q_target_next: Array, action: Array, reward: Array, discount: Array, *, alpha: Numeric
) -> Array:
    """Persistent AL (Bellemare et al. 2016): y = max(AL target, r + d·q̄(s', a)) (repeat the action)."""
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
    advantage learning with parameter α (when gaps stay above l0).
    """
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
    """
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
    """
    return _bootstrap(reward, discount, mirror_descent_value(q_target_next, log_pi_prev_next, lam=lam, tau=tau))
