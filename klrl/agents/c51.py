"""C51, categorical distributional DQN (Bellemare, Dabney & Munos 2017).

The network outputs logits [A, N] over fixed atoms linspace(v_min, v_max, N). Target:
Π(r + d·Z(s', a*)), a* = argmax_a' E[Z̄(s', a')] from the target net (the operator
`categorical_td_target` with one-hot weights). Loss: cross-entropy −Σ_i y_i ln p_i(s, a).
"""

import jax
import jax.numpy as jnp

from klrl import operators as ops
from klrl.agents.base import AgentSpec, discount, q_network, weighted_mean


def atoms(agent_cfg) -> jax.Array:
    """The fixed support linspace(v_min, v_max, num_atoms) of the [agent] section."""
    return jnp.linspace(agent_cfg.v_min, agent_cfg.v_max, agent_cfg.num_atoms, dtype=jnp.float32)


def target_distribution(nets, batch, hp, cfg) -> jax.Array:
    """Projected target distribution [B, N] (stop-gradient)."""
    z = atoms(cfg.agent)
    logits_next = nets.target(batch.next_obs)                       # [B, A, N]
    greedy = jnp.argmax(ops.categorical_mean(logits_next, z), axis=-1)
    weights = jax.nn.one_hot(greedy, logits_next.shape[-2], dtype=logits_next.dtype)
    probs_next = jax.nn.softmax(logits_next, axis=-1)
    return ops.categorical_td_target(z, probs_next, weights, batch.reward, discount(batch, hp))


def _loss(nets, batch, hp, cfg, ctx, key=None):
    y = jax.lax.stop_gradient(target_distribution(nets, batch, hp, cfg))
    logits = nets.online(batch.obs)                                  # [B, A, N]
    ce = ops.categorical_cross_entropy(logits, batch.action, y)
    logits_sa = jnp.take_along_axis(logits, batch.action[:, None, None].astype(jnp.int32), axis=1)[:, 0]
    q_sa = jnp.sum(jax.nn.softmax(logits_sa, axis=-1) * atoms(cfg.agent), axis=-1)
    w = batch.weight
    return weighted_mean(ce, w), {"q_mean": weighted_mean(q_sa, w),
                                  "target_mean": weighted_mean(y @ atoms(cfg.agent), w)}


def categorical_network(cfg, num_actions: int):
    """The Q-network with `num_atoms` logits per action ([..., A, N])."""
    return q_network(cfg, num_actions, cfg.agent.num_atoms)


C51 = AgentSpec(name="c51", hparams=(), loss=_loss, network=categorical_network,
            q_values=lambda out, cfg: ops.categorical_mean(out, atoms(cfg.agent)))
