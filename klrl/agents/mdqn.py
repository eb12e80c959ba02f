"""Munchausen DQN (Vieillard, Pietquin & Geist, NeurIPS 2020).

y = r + α·clip(τ ln π̄(a|s), l0, 0) + d·τ·lse(q̄(s')/τ), π̄ = softmax(q̄/τ) of the target net.
Paper defaults α = 0.9, τ = 0.03, l0 = −1 (the `clip_min` hyperparameter).
"""

from klrl import operators as ops
from klrl.agents.base import discount, target_at_s_and_next, value_agent


def _target(nets, batch, hp, cfg, ctx):
    return ops.munchausen_target(*target_at_s_and_next(nets, batch), batch.action,
                                 batch.reward, discount(batch, hp),
                                 alpha=hp["alpha"], tau=hp["tau"], clip_min=hp["clip_min"])


MDQN = value_agent("mdqn", ("alpha", "tau", "clip_min"), _target)
