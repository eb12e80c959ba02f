"""Q-networks (flax linen; parameters are plain pytrees, so a population is a vmap).

- `MLP` for vector observations (classic control): ReLU hidden layers, linear head.
- `MinAtarCNN` for MinAtar's 10x10xC binary planes: one 3x3 conv with 16 channels (as in
  the MinAtar paper's DQN), flatten, the MLP hidden layers, linear head.
The head has `num_actions * num_outputs` units; distributional agents reshape it to
`[A, N]` logits, scalar agents use `num_outputs = 1` and get `[A]` values.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
    hidden: Sequence[int]
    num_actions: int
    num_outputs: int = 1

    @nn.compact
    def __call__(self, obs):
        x = obs.astype(jnp.float32)
        for h in self.hidden:
            x = nn.relu(nn.Dense(h)(x))
        out = nn.Dense(self.num_actions * self.num_outputs)(x)
        if self.num_outputs == 1:
            return out
        return out.reshape(out.shape[:-1] + (self.num_actions, self.num_outputs))


class MinAtarCNN(nn.Module):
    hidden: Sequence[int]
    num_actions: int
    num_outputs: int = 1
    channels: int = 16

    @nn.compact
    def __call__(self, obs):
        x = obs.astype(jnp.float32)
        x = nn.relu(nn.Conv(self.channels, (3, 3), padding="VALID")(x))
        x = x.reshape(x.shape[:-3] + (-1,))
        return MLP(self.hidden, self.num_actions, self.num_outputs)(x)


def make_network(spec, hidden: Sequence[int], num_outputs: int = 1) -> nn.Module:
    """The Q-network for an environment spec (klrl.envs.EnvSpec)."""
    cls = MinAtarCNN if spec.pixels else MLP
    return cls(hidden=tuple(hidden), num_actions=spec.num_actions, num_outputs=num_outputs)
