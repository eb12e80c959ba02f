"""Q-networks (flax linen; parameters are plain pytrees, so a population is a vmap).

The torso is an explicit config choice (`agent.torso`), never inferred from the env name:
- `mlp`: ReLU hidden layers (`hidden`) on the flattened observation (classic control, tabular);
- `minatar_cnn`: one 3x3 conv with 16 channels on MinAtar's 10x10xC planes (the MinAtar
  paper's DQN), then the MLP layers;
- `nature_cnn`: the DQN Nature torso (Mnih et al. 2015) on [84, 84, k] frames: conv 32 8x8/4,
  conv 64 4x4/2, conv 64 3x3/1, then the MLP layers (the paper's one layer of 512).
Observations are cast to float32 and multiplied by `obs_scale` inside the network (1/255 for
uint8 pixels), so replay keeps the storage dtype. The head has `num_actions * num_outputs`
units; distributional agents reshape it to `[A, N]` logits, scalar agents get `[A]` values.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

TORSOS = ("mlp", "minatar_cnn", "nature_cnn")


class QNetwork(nn.Module):
    torso: str
    hidden: Sequence[int]
    num_actions: int
    num_outputs: int = 1
    obs_scale: float = 1.0

    @nn.compact
    def __call__(self, obs):
        x = obs.astype(jnp.float32) * self.obs_scale
        if self.torso == "minatar_cnn":
            x = nn.relu(nn.Conv(16, (3, 3), padding="VALID")(x))
        elif self.torso == "nature_cnn":
            for features, kernel, stride in ((32, 8, 4), (64, 4, 2), (64, 3, 1)):
                x = nn.relu(nn.Conv(features, (kernel, kernel), (stride, stride), padding="VALID")(x))
        if self.torso != "mlp":
            x = x.reshape(x.shape[:-3] + (-1,))
        for h in self.hidden:
            x = nn.relu(nn.Dense(h)(x))
        out = nn.Dense(self.num_actions * self.num_outputs)(x)
        if self.num_outputs == 1:
            return out
        return out.reshape(out.shape[:-1] + (self.num_actions, self.num_outputs))


def make_network(torso: str, hidden: Sequence[int], num_actions: int, num_outputs: int = 1,
                 obs_scale: float = 1.0) -> nn.Module:
    """The Q-network: `torso` (one of TORSOS), MLP `hidden` layers, a linear head."""
    if torso not in TORSOS:
        raise ValueError(f"torso: got {torso!r}; allowed {', '.join(TORSOS)}")
    return QNetwork(torso=torso, hidden=tuple(hidden), num_actions=num_actions, num_outputs=num_outputs,
                    obs_scale=float(obs_scale))
