"""A new agent with its own config keys and its own network, added without touching the engine:
the agent's module (here, this file) and one registry call (`klrl.agents.register`)."""

from dataclasses import dataclass
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klrl import operators as ops
from klrl.agents import AGENTS, AgentSpec, register, unregister
from klrl.agents.base import discount, regression_loss, weighted_mean
from klrl.config import build_experiment
from klrl.errors import ConfigError
from klrl.sections import Section, ranged
from klrl.train import make_train


# ---- the toy agent's module -----------------------------------------------------------------------

@dataclass(frozen=True)
class ToyConfig(Section):
    """[toy]: the toy agent's own keys."""

    SECTION: ClassVar[str] = "toy"
    width: int = ranged(8, lo=1, doc="units of the toy network's one hidden layer")
    bias: float = ranged(0.0, doc="a constant added to every Q-value")


class ToyNet(nn.Module):
    width: int
    num_actions: int
    bias: float

    @nn.compact
    def __call__(self, obs):
        return nn.Dense(self.num_actions, name="head")(nn.tanh(nn.Dense(self.width, name="wide")(obs))) + self.bias


def toy_network(cfg, num_actions):
    o = cfg.section("toy")
    return ToyNet(width=o.width, num_actions=num_actions, bias=o.bias)


def toy_loss(nets, batch, hp, cfg, ctx, key=None):
    y = jax.lax.stop_gradient(ops.q_learning_target(nets.target(batch.next_obs), batch.reward, discount(batch, hp)))
    q_sa = ops.select_action(nets.online(batch.obs), batch.action)
    return regression_loss(q_sa, y, "l2", batch.weight), {"q_mean": weighted_mean(q_sa, batch.weight)}


TOY = AgentSpec(name="toy", hparams=(), loss=toy_loss, network=toy_network, options=ToyConfig)


# ---- the test -------------------------------------------------------------------------------------

@pytest.fixture
def toy_registered():
    register(TOY)
    try:
        yield TOY
    finally:
        unregister("toy")
    assert "toy" not in AGENTS


RAW = {"env": {"name": "CartPole-v1", "num_envs": 2}, "agent": {"name": "toy"}, "toy": {"width": 5, "bias": 0.5},
       "train": {"total_steps": 80, "chunk_steps": 40, "buffer_size": 40, "batch_size": 4, "learning_starts": 8,
                 "update_every": 2, "target_update_every": 8}, "eval": {"episodes": 1}}


def test_toy_agent_with_own_keys_and_network(toy_registered):
    exp = build_experiment(RAW)
    assert exp.resolved()["toy"] == {"width": 5, "bias": 0.5}
    tr = make_train(exp.static)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    state, metrics = jax.jit(tr.train)(keys, {})
    params = state.learner.params["params"]
    assert params["wide"]["kernel"].shape == (2, 4, 5) and params["head"]["kernel"].shape == (2, 5, 2)
    assert np.all(np.isfinite(metrics["loss"])) and "loss/q_mean" not in metrics and "q_mean" in metrics
    with pytest.raises(ConfigError, match=r"^toy\.width: got 0; allowed"):
        build_experiment({**RAW, "toy": {"width": 0}})


def test_unregistered_agent_and_its_section_are_unknown(toy_registered):
    unregister("toy")
    with pytest.raises(ConfigError, match="^toy: got an unknown section"):
        build_experiment(RAW)
    register(TOY)
    assert make_train(build_experiment(RAW).static, agent=TOY).spec.num_actions == 2
    with pytest.raises(ConfigError, match="already registered"):
        register(TOY)
    unregister("dqn")                      # built-in agents stay
    assert "dqn" in AGENTS
