"""DQN (Mnih et al. 2015) and double DQN (van Hasselt et al. 2016) targets."""

from klrl import operators as ops
from klrl.agents.base import discount, value_agent


def _dqn_target(nets, batch, hp, cfg, ctx):
    """y = r + d·max_a' q̄(s', a')."""
    return ops.q_learning_target(nets.target(batch.next_obs), batch.reward, discount(batch, hp))


def _double_target(nets, batch, hp, cfg, ctx):
    """y = r + d·q̄(s', argmax_a' q(s', a')): the online net picks, the target net evaluates."""
    return ops.double_q_target(nets.online_frozen(batch.next_obs), nets.target(batch.next_obs),
                               batch.reward, discount(batch, hp))


DQN = value_agent("dqn", (), _dqn_target)
DOUBLE_DQN = value_agent("double_dqn", (), _double_target)
