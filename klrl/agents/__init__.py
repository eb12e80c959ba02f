"""Deep agents: network head + loss built from `klrl.operators`; no loop code here.

`AGENTS` maps the public agent names to `klrl.agents.base.AgentSpec`s; `AgentSpec.hparams`
lists the traced hyperparameters each agent uses, declared in `AGENT_HPARAMS` (the trainer's
common ones are in `klrl.static.COMMON_HPARAMS`).
"""

from klrl.agents.al import AL, PAL
from klrl.agents.base import AGENT_HPARAMS, LOSSES, AgentSpec, Context, Nets
from klrl.agents.c51 import C51
from klrl.agents.dqn import DOUBLE_DQN, DQN
from klrl.agents.mdkl import MDKL
from klrl.agents.mdqn import MDQN
from klrl.agents.mvi import MVI
from klrl.agents.qsharp import KL_PRIOR, QSHARP, QSHARP_CD
from klrl.agents.soft_dqn import SOFT_DQN

AGENTS: dict[str, AgentSpec] = {
    a.name: a for a in (DQN, DOUBLE_DQN, SOFT_DQN, AL, PAL, MDQN, MVI, MDKL, C51, QSHARP, QSHARP_CD, KL_PRIOR)}

__all__ = ["AGENTS", "AGENT_HPARAMS", "LOSSES", "AgentSpec", "Context", "Nets"]
