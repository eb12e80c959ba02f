"""What an agent is: a network head size + a loss built from `klrl.operators`.

Agents hold no loop code: the trainer (klrl.train) owns acting, replay, target updates and
optimisation. An agent says
- which traced hyperparameters its target uses (`hparams`; the common ones — learning rate,
  γ, Adam eps, ε schedule, Polyak rate, softmax temperature — are the trainer's),
- how many outputs per action its network has (1, or the number of atoms),
- whether it needs the previous target network (explicit mirror descent),
- its loss on a minibatch, and how to read action values from the network output.

Every target is computed by a function of `klrl.operators`; agents never re-derive the math.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from klrl.operators import select_action

LOSSES = ("huber", "l2")


class Transition(NamedTuple):
    """A minibatch of transitions, leaves [B, ...]. `terminated` is float32 (1 = terminal)."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    terminated: jax.Array
    next_obs: jax.Array


class Nets(NamedTuple):
    """Network evaluators for one member. `online` carries gradients; the others do not.

    Agents call only the evaluators they need, so unused forward passes are never traced.
    """

    online: Callable[[jax.Array], jax.Array]
    online_frozen: Callable[[jax.Array], jax.Array]   # online net, stop-gradient (double DQN)
    target: Callable[[jax.Array], jax.Array]
    prev_target: Callable[[jax.Array], jax.Array]     # previous target net (mdkl only)


class Agent(NamedTuple):
    name: str
    hparams: tuple[str, ...]                      # traced hyperparameters the target uses
    loss: Callable[[Nets, Transition, dict, Any], tuple[jax.Array, dict]]
    num_outputs: Callable[[Any], int] = lambda cfg: 1
    q_values: Callable[[jax.Array, Any], jax.Array] = lambda out, cfg: out
    needs_prev_target: bool = False


def discount(batch: Transition, hp: dict) -> jax.Array:
    """d = γ(1 − terminated): truncation is not termination, so only `terminated` cuts it."""
    return hp["gamma"] * (1.0 - batch.terminated)


def target_at_s_and_next(nets: Nets, batch: Transition) -> tuple[jax.Array, jax.Array]:
    """(q̄(s), q̄(s')) from ONE forward pass of the target net over [obs; next_obs].

    One [2B]-row matmul chain instead of two [B]-row ones: fewer, larger kernels.
    """
    both = nets.target(jnp.concatenate([batch.obs, batch.next_obs], axis=0))
    return both[: batch.obs.shape[0]], both[batch.obs.shape[0]:]


def per_example(hp: dict, names: tuple[str, ...], batch: Transition) -> dict:
    """The coefficients `names` broadcast to the batch shape [B].

    Operators accept scalar or per-example ([B]) coefficients; inside the population vmap a
    member's coefficient is a 0-d tracer, and passing it per example keeps every operator on
    its [B]-aligned code path.
    """
    return {k: (jnp.broadcast_to(v, batch.reward.shape) if k in names else v) for k, v in hp.items()}


def regression_loss(pred: jax.Array, target: jax.Array, kind: str) -> jax.Array:
    """Mean Huber (δ = 1, as in DQN) or ½-squared error between prediction and target."""
    if kind == "huber":
        return jnp.mean(optax.huber_loss(pred, target, delta=1.0))
    if kind == "l2":
        return jnp.mean(0.5 * jnp.square(pred - target))
    raise ValueError(f"loss: got {kind!r}; allowed {', '.join(LOSSES)}")


def value_agent(name: str, hparams: tuple[str, ...],
                target_fn: Callable[[Nets, Transition, dict, Any], jax.Array]) -> Agent:
    """A scalar-Q agent: loss = regression of q(s, a) onto `target_fn`'s (stop-gradient) y."""

    def loss(nets: Nets, batch: Transition, hp: dict, cfg: Any):
        y = jax.lax.stop_gradient(target_fn(nets, batch, per_example(hp, hparams, batch), cfg))
        q_sa = select_action(nets.online(batch.obs), batch.action)
        return regression_loss(q_sa, y, cfg.loss), {"q_mean": jnp.mean(q_sa), "target_mean": jnp.mean(y)}

    return Agent(name=name, hparams=hparams, loss=loss)
