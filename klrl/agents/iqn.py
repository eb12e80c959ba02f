"""IQN (Dabney, Ostrovski, Silver & Munos 2018) and Munchausen-IQN (Vieillard, Pietquin & Geist 2020).

The network (klrl.networks.ImplicitQuantileNetwork) gives quantile values Z_τ(s, a) at any
fractions τ ∈ (0, 1). Per update and per transition the loss draws N fractions τ_i for the
online network and N' fractions τ'_j for the target network, and minimizes the quantile Huber
loss (κ = 1) of Z_{τ_i}(s, a) against the N' target samples:

    IQN     y_j = r + d·Z̄_{τ'_j}(s', a*),  a* = argmax_a q̄(s', a)
    M-IQN   y_j = r + α·clip(τ ln π̄(a|s), l0, 0) + d·Σ_a' π̄(a'|s')·(Z̄_{τ'_j}(s', a') − τ ln π̄(a'|s'))

with d = γ(1 − terminated), q̄ = the mean of the target network's N' quantile values (one
forward pass over [s; s'] at the same fractions) and π̄ = softmax(q̄/τ). M-IQN with α = 0 is
the soft IQN target. Acting reads q(s, ·) = the mean over K fractions drawn at every step.
Defaults are the papers' (and Dopamine's): N = N' = 64, K = 32, a cosine embedding of 64,
κ = 1; M-IQN's α = 0.9, τ = 0.03, l0 = −1 (shared with M-DQN's hyperparameters).
Own config keys: the `[iqn]` table (`IQNConfig`), used by both agents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from klrl import operators as ops
from klrl import rng
from klrl.agents.base import AgentSpec, discount, weighted_mean
from klrl.errors import ConfigError
from klrl.networks import ImplicitQuantileNetwork
from klrl.sections import Section, ranged


@dataclass(frozen=True)
class IQNConfig(Section):
    """[iqn]: the quantile fractions and their embedding (IQN and M-IQN)."""

    SECTION: ClassVar[str] = "iqn"
    num_quantiles: int = ranged(64, lo=1, doc="N: online fractions per transition in the loss")
    num_target_quantiles: int = ranged(64, lo=1, doc="N': target fractions per transition in the loss")
    num_act_quantiles: int = ranged(32, lo=1, doc="K: fractions whose mean is q(s, ·) when acting")
    embedding_dim: int = ranged(64, lo=1, doc="n: cosines cos(π·i·τ), i = 0 … n−1, embedding a fraction")
    kappa: float = ranged(1.0, lo=0.0, lo_open=True, doc="κ of the quantile Huber loss")


class Network(NamedTuple):
    """flax-style `init(key, obs)` / `apply(params, obs, taus)` of an IQN network."""

    init: object
    apply: object


def network(cfg, num_actions: int) -> Network:
    """The implicit quantile network of the [agent] torso and hidden layers and the [iqn] embedding."""
    a, o = cfg.agent, cfg.section("iqn")
    module = ImplicitQuantileNetwork(torso=a.torso, hidden=tuple(a.hidden), num_actions=num_actions,
                                     embedding_dim=o.embedding_dim, obs_scale=float(a.obs_scale), conv=a.conv)
    return Network(init=lambda key, obs: module.init(key, obs, jnp.full((1,), 0.5, jnp.float32)),
                   apply=module.apply)


def forward(apply, obs, key, cfg):
    """q(s, ·) = the mean of Z_τ(s, ·) over K fractions τ ~ U(0, 1) (shared by a member's envs)."""
    taus = jax.random.uniform(rng.wrap(key), (cfg.section("iqn").num_act_quantiles,))
    return jnp.mean(apply(obs, taus), axis=-2)


def _loss(munchausen: bool):
    def loss(nets, batch, hp, cfg, ctx, key):
        o = cfg.section("iqn")
        B = batch.reward.shape[0]
        k_online, k_target = jax.random.split(rng.wrap(key))
        taus = jax.random.uniform(k_online, (B, o.num_quantiles))
        z_sa = ops.select_action(nets.online(batch.obs, taus), jnp.broadcast_to(batch.action[:, None], taus.shape))
        taus_t = jax.random.uniform(k_target, (2 * B, o.num_target_quantiles))
        z_target = nets.target(jnp.concatenate([batch.obs, batch.next_obs], axis=0), taus_t)   # [2B, N', A]
        q_target = jnp.mean(z_target, axis=-2)
        d = discount(batch, hp)
        if munchausen:
            y = ops.munchausen_quantile_target(z_target[B:], q_target[:B], q_target[B:], batch.action, batch.reward,
                                               d, alpha=hp["alpha"], tau=hp["tau"], clip_min=hp["clip_min"])
        else:
            y = ops.quantile_q_learning_target(z_target[B:], q_target[B:], batch.reward, d)
        y = jax.lax.stop_gradient(y)
        w = batch.weight
        return weighted_mean(ops.quantile_huber_loss(z_sa, taus, y, o.kappa), w), {
            "q_mean": weighted_mean(jnp.mean(z_sa, axis=-1), w), "target_mean": weighted_mean(jnp.mean(y, axis=-1), w)}

    return loss


def check(cfg) -> None:
    if cfg.agent.torso == "mlp" and not cfg.agent.hidden:
        raise ConfigError("agent.hidden: got []; allowed at least one layer for an IQN with the mlp torso "
                          "(its first layer is the state embedding ψ)")


IQN = AgentSpec(name="iqn", hparams=(), loss=_loss(munchausen=False), network=network, forward=forward,
                options=IQNConfig, check=check)
MIQN = AgentSpec(name="miqn", hparams=("alpha", "tau", "clip_min"), loss=_loss(munchausen=True), network=network,
                 forward=forward, options=IQNConfig, check=check)

__all__ = ["IQN", "IQNConfig", "MIQN", "forward", "network"]
