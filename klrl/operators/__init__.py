"""Regularized Bellman operators on q-arrays with the action axis last (`[..., A]`).

Written once, used by the tabular checks (klrl.tabular) and the deep agents (klrl.agents).
Each function's docstring gives its equation, its paper and its arguments' shapes;
docs/algorithms.md explains the operators together and docs/conventions.md the array
conventions (discount d = γ·(1 − terminated), shapes, dtypes, shift-stable numerics).
"""

from klrl.operators.distributional import (
    categorical_cross_entropy,
    categorical_mean,
    categorical_projection,
    categorical_td_target,
    entropic_q,
    guided_logits,
)
from klrl.operators.quantile import munchausen_quantile_target, quantile_huber_loss, quantile_q_learning_target
from klrl.operators.policies import (
    exp_q,
    log_q,
    mirror_descent_log_policy,
    scaled_log_softmax,
    soft_value,
    softmax_policy,
    sparsemax,
    tsallis_entropy,
    tsallis_policy,
)
from klrl.operators.targets import (
    advantage_learning_target,
    double_q_target,
    kl_prior_target,
    mirror_descent_target,
    munchausen_target,
    persistent_advantage_learning_target,
    q_learning_target,
    select_action,
    soft_q_target,
    tsallis_munchausen_target,
)
from klrl.operators.values import (
    action_gap,
    greedy_value,
    mirror_descent_value,
    munchausen_bonus,
    tsallis_greedy_policy,
    tsallis_munchausen_bonus,
    tsallis_value,
)

__all__ = [
    "action_gap", "advantage_learning_target", "categorical_cross_entropy", "categorical_mean", "categorical_projection",
    "categorical_td_target", "double_q_target", "entropic_q", "exp_q", "greedy_value",
    "guided_logits", "kl_prior_target", "log_q", "mirror_descent_log_policy",
    "mirror_descent_target", "mirror_descent_value", "munchausen_bonus", "munchausen_target",
    "munchausen_quantile_target", "persistent_advantage_learning_target", "q_learning_target", "quantile_huber_loss",
    "quantile_q_learning_target", "scaled_log_softmax",
    "select_action", "soft_q_target", "soft_value", "softmax_policy", "sparsemax",
    "tsallis_entropy", "tsallis_greedy_policy", "tsallis_munchausen_bonus", "tsallis_munchausen_target",
    "tsallis_policy", "tsallis_value",
]
