"""Soft DQN: entropy-regularized Q-learning, y = r + d·τ·lse(q̄(s')/τ)."""

from klrl import operators as ops
from klrl.agents.base import discount, value_agent


def _target(nets, batch, hp, cfg, ctx):
    return ops.soft_q_target(nets.target(batch.next_obs), batch.reward, discount(batch, hp), tau=hp["tau"])


SOFT_DQN = value_agent("soft_dqn", ("tau",), _target)
