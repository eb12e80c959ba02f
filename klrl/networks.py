"""Q-networks (flax linen; parameters are plain pytrees, so a population is a vmap).

The torso is an explicit config choice (`agent.torso`), never inferred from the env name:
- `mlp`: ReLU hidden layers (`hidden`) on the flattened observation (classic control, tabular);
- `minatar_cnn`: one 3x3 conv with 16 channels on MinAtar's 10x10xC planes (the MinAtar
  paper's DQN), then the MLP layers;
- `nature_cnn`: the DQN Nature torso (Mnih et al. 2015) on [84, 84, k] frames: conv 32 8x8/4,
  conv 64 4x4/2, conv 64 3x3/1, then the MLP layers (the paper's one layer of 512).
Observations are cast to float32 and multiplied by `obs_scale` inside the network (1/255 for
uint8 pixels), so replay keeps the storage dtype.

Convolutions (`agent.conv`): `lax` is flax's `nn.Conv` (XLA's convolution); `patches` is the
same layer as strided slices (im2col) and one matmul, with the same parameters under the same
names (a checkpoint of one loads into the other; outputs agree to float32 rounding). Why: on
XLA:CPU a convolution inside a loop body (the trainer's scan over steps) falls off its fast path
(jax-ml/jax#12868): a Nature-CNN update measured 483 ms inside a scan vs 53 ms alone, and 42 ms
inside a scan as patches (this project's 2-core CPU; klrl bench atari). `auto` (the config's
default) is patches on CPU and lax elsewhere (klrl.placement; the trainer resolves it first).
The head has `num_actions * num_outputs` units; distributional agents reshape it to `[A, N]`
logits, scalar agents get `[A]` values.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

TORSOS = ("mlp", "minatar_cnn", "nature_cnn")
CONVS = ("lax", "patches")


class PatchConv(nn.Module):
    """VALID convolution as im2col: y[.., i, j, :] = patch(x, i, j) · W + b, where patch is the
    [kernel, kernel, C] window at (i·stride, j·stride) flattened in (row, column, channel) order,
    W = kernel.reshape(kernel²·C, features): nn.Conv's parameters, shapes and names."""

    features: int
    kernel: int
    stride: int

    @nn.compact
    def __call__(self, x):
        k, s, c = self.kernel, self.stride, x.shape[-1]
        w = self.param("kernel", nn.initializers.lecun_normal(), (k, k, c, self.features))
        b = self.param("bias", nn.initializers.zeros, (self.features,))
        oh, ow = (x.shape[-3] - k) // s + 1, (x.shape[-2] - k) // s + 1
        # Slices, not a convolution: their gradient is a pad-and-add, so no conv runs in a loop.
        cols = [x[..., i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s, :] for i in range(k) for j in range(k)]
        patches = jnp.stack(cols, axis=-2).reshape(x.shape[:-3] + (oh, ow, k * k * c))
        return patches @ w.reshape(k * k * c, self.features) + b


_CONV_LAYERS = {"mlp": (), "minatar_cnn": ((16, 3, 1),), "nature_cnn": ((32, 8, 4), (64, 4, 2), (64, 3, 1))}


def conv_features(obs, torso: str, conv: str, obs_scale: float):
    """The torso's convolutions (ReLU after each), flattened; the scaled observation for `mlp`.
    Called inside a module's compact method, so its layers are named Conv_i in that module."""
    x = obs.astype(jnp.float32) * obs_scale
    if conv == "auto" and _CONV_LAYERS[torso]:
        from klrl.placement import resolve_conv

        conv = resolve_conv()
    for i, (features, kernel, stride) in enumerate(_CONV_LAYERS[torso]):
        if conv == "patches":
            x = PatchConv(features, kernel, stride, name=f"Conv_{i}")(x)
        else:
            x = nn.Conv(features, (kernel, kernel), (stride, stride), padding="VALID", name=f"Conv_{i}")(x)
        x = nn.relu(x)
    return x if torso == "mlp" else x.reshape(x.shape[:-3] + (-1,))


class QNetwork(nn.Module):
    torso: str
    hidden: Sequence[int]
    num_actions: int
    num_outputs: int = 1
    obs_scale: float = 1.0
    conv: str = "lax"

    @nn.compact
    def __call__(self, obs):
        x = conv_features(obs, self.torso, self.conv, self.obs_scale)
        for h in self.hidden:
            x = nn.relu(nn.Dense(h)(x))
        out = nn.Dense(self.num_actions * self.num_outputs)(x)
        if self.num_outputs == 1:
            return out
        return out.reshape(out.shape[:-1] + (self.num_actions, self.num_outputs))


class ImplicitQuantileNetwork(nn.Module):
    """Z_τ(s, a) = f(ψ(s) ⊙ φ(τ))_a (Dabney et al. 2018, IQN), for fractions τ [..., N].

    ψ: the torso's flattened convolutions (Dopamine's Atari IQN), or, for `mlp`, the first
    hidden layer; φ(τ)_k = ReLU(Σ_i cos(π·i·τ)·w_ik + b_k), i = 0 … n−1 (n = `embedding_dim`),
    as wide as ψ; f: the remaining hidden layers and a linear head. obs [..., *obs] and taus
    [N] or [..., N] -> [..., N, A] (fractions second to last, actions last).
    """

    torso: str
    hidden: Sequence[int]
    num_actions: int
    embedding_dim: int = 64
    obs_scale: float = 1.0
    conv: str = "lax"

    @nn.compact
    def __call__(self, obs, taus):
        x = conv_features(obs, self.torso, self.conv, self.obs_scale)
        hidden = tuple(self.hidden)
        if self.torso == "mlp":
            x, hidden = nn.relu(nn.Dense(hidden[0])(x)), hidden[1:]
        i = jnp.arange(self.embedding_dim, dtype=jnp.float32)
        phi = nn.relu(nn.Dense(x.shape[-1], name="quantile_embedding")(jnp.cos(jnp.pi * i * taus[..., None])))
        x = x[..., None, :] * phi                                            # [..., N, D]
        for h in hidden:
            x = nn.relu(nn.Dense(h)(x))
        return nn.Dense(self.num_actions)(x)


def make_network(torso: str, hidden: Sequence[int], num_actions: int, num_outputs: int = 1,
                 obs_scale: float = 1.0, conv: str = "lax") -> nn.Module:
    """The Q-network: `torso` (one of TORSOS), MLP `hidden` layers, a linear head; `conv` (one
    of CONVS, or auto) says how its convolutions are computed."""
    if torso not in TORSOS:
        raise ValueError(f"torso: got {torso!r}; allowed {', '.join(TORSOS)}")
    if conv not in ("auto",) + CONVS:
        raise ValueError(f"conv: got {conv!r}; allowed auto, {', '.join(CONVS)}")
    return QNetwork(torso=torso, hidden=tuple(hidden), num_actions=num_actions, num_outputs=num_outputs,
                    obs_scale=float(obs_scale), conv=conv)
