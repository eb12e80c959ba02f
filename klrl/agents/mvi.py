"""Tsallis Munchausen value iteration MVI(q) (Zhu et al., NeurIPS 2023), deep version.

y = r + α·max(τ ln_q π̄(a|s), l0) + d·<π̄, q̄ − τ ln_q π̄>(s'), π̄ the Tsallis policy of q̄/τ
(docs/algorithms.md §3, "sparsemax" convention). The entropic index q is a TRACED hyperparameter
(`entropic_index`), so a population can sweep it; q = 1 reproduces M-DQN. The Tsallis weight
convention is the static flag `agent.consistent_weight` (literal form by default).
"""

from klrl import operators as ops
from klrl.agents.base import discount, target_at_s_and_next, value_agent
from klrl.sections import Hparam


def _target(nets, batch, hp, cfg, ctx):
    return ops.tsallis_munchausen_target(
        *target_at_s_and_next(nets, batch), batch.action, batch.reward,
        discount(batch, hp), entropic_index=hp["entropic_index"], alpha=hp["alpha"], tau=hp["tau"],
        clip_min=hp["clip_min"], consistent_weight=cfg.agent.consistent_weight)


MVI = value_agent("mvi", ("alpha", "tau", "clip_min", "entropic_index"), _target, declares={
    "entropic_index": Hparam("agent", 2.0, lo=1.0, doc="Tsallis q of MVI(q); 2 = sparsemax")})
