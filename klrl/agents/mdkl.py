"""Explicit mirror-descent DQN, "DQN-KL" (Vieillard, Kozuno, Scherrer, Pietquin, Munos &
Geist, "Leverage the Average", NeurIPS 2020).

y = r + d·<π₊, q̄ − λ ln(π₊/π₋) − τ ln π₊>(s'), ln π₊ = log_softmax((λ ln π₋ + q̄)/(λ+τ)).

π₋ is "the policy of the previous target network". The trainer keeps the previous target
parameters (`extra_nets`) (set to the old target at every target update) and this module turns them into
a policy. Choice (documented, unverified against the paper's code): π₋ is the same
regularized greedy step applied to the previous target's values with a uniform previous
policy, i.e. ln π₋ = log_softmax(q̄₋(s')/(λ+τ)) — `mirror_descent_log_policy` with a uniform
prior. Storing only one previous network truncates the recursion π_k(π_{k−1}(…)) at depth one.
Defaults λ = 0.27, τ = 0.03 give β = λ/(λ+τ) = 0.9, the mirror-descent twin of
M-DQN(α = 0.9, τ_M = λ + τ = 0.3) (Vieillard et al. 2020, "Leverage the Average"; docs/algorithms.md §5).
"""

import jax.numpy as jnp

from klrl import operators as ops
from klrl.agents.base import AgentSpec, discount, value_agent
from klrl.sections import Hparam


def previous_log_policy(q_prev_target_next, hp):
    """ln π₋(·|s') from the previous target network's values (see module docstring)."""
    num_actions = q_prev_target_next.shape[-1]
    log_uniform = jnp.full_like(q_prev_target_next, -jnp.log(num_actions))
    return ops.mirror_descent_log_policy(q_prev_target_next, log_uniform, lam=hp["lam"], tau=hp["tau"])


def _target(nets, batch, hp, cfg, ctx):
    log_pi_prev = previous_log_policy(nets.prev_target(batch.next_obs), hp)
    return ops.mirror_descent_target(nets.target(batch.next_obs), log_pi_prev, batch.reward,
                                     discount(batch, hp), lam=hp["lam"], tau=hp["tau"])


MDKL: AgentSpec = value_agent("mdkl", ("lam", "tau"), _target, extra_nets=("prev_target",), declares={
    "lam": Hparam("agent", 0.27, lo=0.0, doc="KL weight λ of mdkl (β = λ/(λ+τ) = 0.9 with τ = 0.03)")})
