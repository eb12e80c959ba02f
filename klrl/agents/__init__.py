"""Deep agents: network, loss built from `klrl.operators`, acting and data rules; no loop code.

`AGENTS` maps the public agent names to `klrl.agents.base.AgentSpec`s; `AgentSpec.hparams`
lists the traced hyperparameters each agent uses, declared in `AGENT_HPARAMS` (the trainer's
common ones are in `klrl.static.COMMON_HPARAMS`). An agent written outside this package joins
with `register(spec)` (then its name is a valid `agent.name`, and its `options` table a valid
section); `make_train(cfg, agent=spec)` uses one without registering it.
"""

from klrl.agents.al import AL, PAL
from klrl.agents.base import AGENT_HPARAMS, LOSSES, AgentSpec, Context, Nets
from klrl.agents.c51 import C51
from klrl.agents.dqn import DOUBLE_DQN, DQN
from klrl.agents.iqn import IQN, MIQN
from klrl.agents.mdkl import MDKL
from klrl.agents.mdqn import MDQN
from klrl.agents.mvi import MVI
from klrl.agents.qsharp import KL_PRIOR, QSHARP, QSHARP_CD
from klrl.agents.soft_dqn import SOFT_DQN
from klrl.errors import ConfigError

AGENTS: dict[str, AgentSpec] = {
    a.name: a for a in (DQN, DOUBLE_DQN, SOFT_DQN, AL, PAL, MDQN, MVI, MDKL, C51, QSHARP, QSHARP_CD, KL_PRIOR,
                        IQN, MIQN)}
_BUILT_IN = frozenset(AGENTS)


def register(spec: AgentSpec) -> AgentSpec:
    """Add `spec` to AGENTS under `spec.name` (a name already taken is a ConfigError)."""
    if spec.name in AGENTS:
        raise ConfigError(f"agent.name: got {spec.name!r}, already registered; allowed a new name")
    AGENTS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove an agent added by `register` (built-in agents stay)."""
    if name not in _BUILT_IN:
        AGENTS.pop(name, None)


def agent_options() -> dict:
    """The agents' own config sections: SECTION -> Section class (shared classes once)."""
    return {a.options.SECTION: a.options for a in AGENTS.values() if a.options is not None}


__all__ = ["AGENTS", "AGENT_HPARAMS", "LOSSES", "AgentSpec", "Context", "Nets", "agent_options", "register",
           "unregister"]
