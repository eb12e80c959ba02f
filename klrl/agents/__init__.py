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

AGENTS: dict[str, AgentSpec] = {}


def _declare(spec: AgentSpec) -> None:
    """Add the hyperparameters `spec` declares to AGENT_HPARAMS (one declaration per name)."""
    for name, h in spec.declares.items():
        if AGENT_HPARAMS.get(name, h) != h:
            raise ConfigError(f"hparams.{name}: got a second declaration by agent {spec.name}; "
                              "allowed one declaration per name")
    AGENT_HPARAMS.update(spec.declares)


def register(spec: AgentSpec) -> AgentSpec:
    """Add `spec` to AGENTS under `spec.name`, with the hyperparameters it declares (a name
    already taken is a ConfigError)."""
    if spec.name in AGENTS:
        raise ConfigError(f"agent.name: got {spec.name!r}, already registered; allowed a new name")
    _declare(spec)
    AGENTS[spec.name] = spec
    return spec


for _spec in (DQN, DOUBLE_DQN, SOFT_DQN, AL, PAL, MDQN, MVI, MDKL, C51, QSHARP, QSHARP_CD, KL_PRIOR, IQN, MIQN):
    register(_spec)
_BUILT_IN = frozenset(AGENTS)
_SHARED = frozenset(AGENT_HPARAMS)


def unregister(name: str) -> None:
    """Remove an agent added by `register`, and the hyperparameters only it declared (built-in
    agents stay)."""
    if name in _BUILT_IN or name not in AGENTS:
        return
    spec = AGENTS.pop(name)
    still = {n for a in AGENTS.values() for n in a.declares}
    for n in spec.declares:
        if n not in still and n not in _SHARED:
            AGENT_HPARAMS.pop(n, None)


def agent_options() -> dict:
    """The agents' own config sections: SECTION -> Section class (shared classes once)."""
    return {a.options.SECTION: a.options for a in AGENTS.values() if a.options is not None}


__all__ = ["AGENTS", "AGENT_HPARAMS", "LOSSES", "AgentSpec", "Context", "Nets", "agent_options", "register",
           "unregister"]
