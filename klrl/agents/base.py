"""What an agent is (`AgentSpec`): its network, a loss built from `klrl.operators`, and, where
it is not the trainer's configured rule, how it acts and where its data comes from.

Agents hold no loop code: the trainer (klrl.train) owns stepping, replay, target updates and
optimisation, and reads only the fields below (no attribute probing):
- `hparams`: the traced hyperparameters its loss or actor uses; `declares` gives the section,
  default and range of those only it reads (those several agents share are in `AGENT_HPARAMS`
  below; the trainer's — learning rate, γ, Adam eps, ε schedule, Polyak rate, softmax
  temperature — in `klrl.static.COMMON_HPARAMS`);
- `network(cfg, num_actions)`: the network it learns, anything with flax's
  `init(key, obs)` / `apply(params, obs, *inputs)` (default: the Q-network of klrl.networks
  with one output per action); a reference run's network is rebuilt by the same function
  from the config its config.json records (klrl.reference);
- `forward(apply, obs, key, cfg)`: the output actors read, from `apply(obs, *inputs)`
  (default `apply(obs)`; IQN averages quantiles at sampled fractions drawn from `key`);
- `q_values(out, cfg)`: action values from that output;
- `options`: the Section class of its own config keys (a TOML table of their own, e.g.
  `[iqn]`, read as `cfg.section(SECTION)`), or None;
- `loss(nets, batch, hp, cfg, ctx, key) -> (loss, aux)`: `key` is this update's own stream;
  aux metrics (q_mean, target_mean, …) are averaged over a chunk's updates and written to
  metrics.csv as `loss/<name>`; `cfg` is the whole `klrl.static.StaticConfig`;
- `actor(cfg, spec, q_values)` / `eval_actor(...)`: a `klrl.actors.Actor` for training /
  evaluation, or None for the configured rule (ε-greedy or softmax; greedy or ε_eval);
- `data(cfg, spec)`: a sampler `(actor_carry, key, batch_size) -> batch` when the agent
  learns from something its actor records (Q♯ rollout labels), None for the run's replay;
- `extra_nets`: ("prev_target",) when the loss needs the previous target network (mdkl);
- `needs_reference`: the agent needs a fixed reference policy π_ref (`ctx.log_ref`);
- `check(cfg)`: its own config rules, run by `klrl.static.validate` (one-line ConfigError).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from klrl.operators import select_action
from klrl.sections import Hparam

LOSSES = ("huber", "l2")

# The agents' traced hyperparameters (float32 [M] per member, sweepable in one population): the
# ones several agents share are declared here; an agent declares those only it reads in its
# `AgentSpec.declares`, and `klrl.agents` adds them to this table.
AGENT_HPARAMS: dict[str, Hparam] = {
    "alpha": Hparam("agent", 0.9, lo=0.0, hi=1.0, doc="Munchausen / AL coefficient (M-DQN paper)"),
    "tau": Hparam("agent", 0.03, lo=0.0, lo_open=True, doc="entropy temperature (M-DQN paper)"),
    "clip_min": Hparam("agent", -1.0, hi=0.0, doc="l0, the lower clip of the Munchausen bonus"),
}


class Nets(NamedTuple):
    """Network evaluators `(obs, *inputs) -> out` for one member (the agent's own network
    applied with each set of parameters). `online` carries gradients; the others do not.

    Agents call only the evaluators they need, so unused forward passes are never traced.
    """

    online: Callable[..., jax.Array]
    online_frozen: Callable[..., jax.Array]   # online net, stop-gradient (double DQN)
    target: Callable[..., jax.Array]
    prev_target: Callable[..., jax.Array]     # previous target net (extra_nets = ("prev_target",))


def bind(network, params) -> Callable[..., jax.Array]:
    """`(obs, *inputs) -> network.apply(params, obs, *inputs)`."""
    return lambda obs, *inputs: network.apply(params, obs, *inputs)


def q_network(cfg, num_actions: int, num_outputs: int = 1):
    """The Q-network of the [agent] section (klrl.networks: torso, hidden layers, a linear head
    of `num_actions · num_outputs` units)."""
    from klrl.networks import make_network

    a = cfg.agent
    return make_network(a.torso, a.hidden, num_actions, num_outputs, a.obs_scale, a.conv)


def plain_forward(apply, obs, key, cfg):
    """The network's output at `obs` (no sampled inputs)."""
    return apply(obs)


class Context(NamedTuple):
    """What agents get besides networks and data: ln π_ref(·|obs) of the fixed reference
    policy (None without one). Its parameters are an argument of the compiled program."""

    log_ref: Callable[[jax.Array], jax.Array] | None = None


@dataclass(frozen=True)
class AgentSpec:
    name: str
    hparams: tuple[str, ...]
    loss: Callable[..., tuple[jax.Array, dict]]
    network: Callable[[Any, int], Any] = q_network
    forward: Callable[..., jax.Array] = plain_forward
    q_values: Callable[[jax.Array, Any], jax.Array] = lambda out, cfg: out
    actor: Callable[..., Any] | None = None
    eval_actor: Callable[..., Any] | None = None
    data: Callable[..., Any] | None = None
    extra_nets: tuple[str, ...] = ()
    needs_reference: bool = False
    check: Callable[[Any], None] = lambda cfg: None   # agent-specific config rules (ConfigError)
    options: Any = None                                # Section class of its own keys, or None
    declares: dict = field(default_factory=dict, compare=False)   # name -> Hparam it introduces


def discount(batch, hp: dict) -> jax.Array:
    """d = γ(1 − terminated): truncation is not termination, so only `terminated` cuts it."""
    return hp["gamma"] * (1.0 - batch.terminated)


def target_at_s_and_next(nets: Nets, batch) -> tuple[jax.Array, jax.Array]:
    """(q̄(s), q̄(s')) from ONE forward pass of the target net over [obs; next_obs].

    One [2B]-row matmul chain instead of two [B]-row ones: fewer, larger kernels.
    """
    both = nets.target(jnp.concatenate([batch.obs, batch.next_obs], axis=0))
    return both[: batch.obs.shape[0]], both[batch.obs.shape[0]:]


def per_example(hp: dict, names: tuple[str, ...], batch) -> dict:
    """The coefficients `names` broadcast to the batch shape [B].

    Operators accept scalar or per-example ([B]) coefficients; inside the population vmap a
    member's coefficient is a 0-d tracer, and passing it per example keeps every operator on
    its [B]-aligned code path.
    """
    return {k: (jnp.broadcast_to(v, batch.reward.shape) if k in names else v) for k, v in hp.items()}


def weighted_mean(x: jax.Array, weight: jax.Array) -> jax.Array:
    """Σ w·x / max(Σ w, 1): the mean over the batch's real transitions (weight 0 = excluded slot)."""
    return jnp.sum(weight * x) / jnp.maximum(jnp.sum(weight), 1.0)


def regression_loss(pred: jax.Array, target: jax.Array, kind: str, weight: jax.Array) -> jax.Array:
    """Weighted mean Huber (δ = 1, as in DQN) or ½-squared error between prediction and target."""
    if kind == "huber":
        return weighted_mean(optax.huber_loss(pred, target, delta=1.0), weight)
    if kind == "l2":
        return weighted_mean(0.5 * jnp.square(pred - target), weight)
    raise ValueError(f"loss: got {kind!r}; allowed {', '.join(LOSSES)}")


def value_agent(name: str, hparams: tuple[str, ...], target_fn: Callable[..., jax.Array], **fields) -> AgentSpec:
    """A scalar-Q agent: loss = regression of q(s, a) onto `target_fn`'s (stop-gradient) y."""

    def loss(nets: Nets, batch, hp: dict, cfg: Any, ctx: Context, key=None):
        y = jax.lax.stop_gradient(target_fn(nets, batch, per_example(hp, hparams, batch), cfg, ctx))
        q_sa = select_action(nets.online(batch.obs), batch.action)
        w = batch.weight
        return regression_loss(q_sa, y, cfg.agent.loss, w), {"q_mean": weighted_mean(q_sa, w),
                                                             "target_mean": weighted_mean(y, w)}

    return AgentSpec(name=name, hparams=hparams, loss=loss, **fields)
