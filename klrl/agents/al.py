"""Advantage learning and persistent AL (Bellemare et al. 2016).

AL:  y = r + d·max q̄(s') − α(max_b q̄(s, b) − q̄(s, a));  PAL: max(AL, r + d·q̄(s', a)).
"""

from klrl import operators as ops
from klrl.agents.base import discount, target_at_s_and_next, value_agent


def _al_target(nets, batch, hp, cfg, ctx):
    return ops.advantage_learning_target(*target_at_s_and_next(nets, batch), batch.action,
                                         batch.reward, discount(batch, hp), alpha=hp["alpha"])


def _pal_target(nets, batch, hp, cfg, ctx):
    return ops.persistent_advantage_learning_target(
        *target_at_s_and_next(nets, batch), batch.action, batch.reward,
        discount(batch, hp), alpha=hp["alpha"])


AL = value_agent("al", ("alpha",), _al_target)
PAL = value_agent("pal", ("alpha",), _pal_target)
