"""Q♯ (Zhou et al. 2025) and its baselines: KL-regularized control toward a FIXED π_ref.

The optimum of max_π E_π[Σ r] − η·Σ KL(π‖π_ref) is π*(a|s) ∝ π_ref(a|s)·exp(Q*(s, a)/η);
on a deterministic MDP with γ = 1, Q*(s, a) = η ln E[exp(Z(s, a)/η)] with Z the return of
π_ref after (s, a) (docs/algorithms.md §4; the exact identity and its biases are documented
and tested in `klrl.tabular.qsharp`). So Q♯ never improves a policy inside its critic: it
learns π_ref's return DISTRIBUTION on fixed atoms and acts with the guided policy

    π(·|s) = softmax(ln π_ref(·|s) + Q_η(s, ·)/η),   Q_η = η·lse_i(ln p_i + z_i/η)

(`klrl.operators.entropic_q`, `guided_logits`). η is the traced hyperparameter `eta`
(sweepable in one compiled population). Agents (`klrl.agents.AGENTS`):

- `qsharp`     categorical critic of π_ref, entropic guidance (the method);
- `qsharp_cd`  the same critic, "CD" guidance: E[Z] in place of Q_η;
- `kl_prior`   scalar soft Q with prior (TD): y = r + d·η·lse(q̄(s')/η + ln π_ref(s'))
               (`kl_prior_target`), acting with π ∝ π_ref·exp(Q/η);
- plain `c51` (klrl.agents.c51) is the unregularized baseline.

Two ways to train the categorical critic (`agent.qsharp_mode`):
- `td`: distributional expected SARSA under π_ref from the replay buffer, C51 projection:
  target Π(r + d·Z̄'), Z̄' ~ Σ_a' π_ref(a'|s')·p̄(s', a') (`categorical_td_target` with
  weights π_ref(·|s'), target network). Off-policy and cheap; bootstraps (through time
  limits too, like every klrl agent).
- `rollout`: the Q♯ recipe. Each environment draws a switch step h ~ Uniform{0..H−1}
  (H = `qsharp_switch_horizon`, 0 meaning the env's time limit) at every episode start,
  rolls in with the current guided policy, takes a_h ~ π_ref at step h and follows π_ref
  to the episode's end; the switch point is labelled with the return G = Σ_{t≥h} r_t
  (undiscounted, the γ = 1 identity) and enters an aggregated per-member label store
  when the episode ends (episodes that end before h give no label; a truncated episode's
  label is its return up to the time limit). The critic maximizes the likelihood of the
  projected label, Π(G) = `categorical_projection(atoms, ·, G, 0)`: cross-entropy
  −Σ_i Π(G)_i ln p_i(s_h, a_h). No target network, no bootstrapping.

The label store is a per-environment ring of `buffer_size // num_envs` labels inside the
agent's carry (part of the TrainState, so runs resume exactly): labels arrive at a
variable rate per member, which klrl.replay's lockstep writes cannot express.

Practical notes (measured on CartPole, results/qsharp_frontier/README.md):
- A softmax-parameterized categorical critic puts positive mass on every atom, and
  Q_η ≥ z_N + η·ln p_N: for η small against (z_N − E[Z])/|ln p_N| the entropic value is
  set by the tail mass the network happens to give the far atoms, not by the data, and the
  guidance stops sharpening as η decreases. Keep v_max near the largest plausible return.
- rollout mode yields at most one label per episode (against one transition per step for
  td), so at equal env steps its critic sees far less data.

How the trainer sees them (klrl.agents.base.AgentSpec, no special cases): `actor` is the
guided policy (td) or the roll-in/roll-out actor whose carry holds the label store (rollout);
`eval_actor` samples the guided policy; `data` (rollout only) samples the actor's labels in
place of the replay; π_ref comes in as `ctx.log_ref`, its parameters an argument of the program.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from klrl import actors
from klrl import operators as ops
from klrl import rng
from klrl.agents.base import AgentSpec, discount, regression_loss, weighted_mean
from klrl.agents.c51 import atoms, categorical_network  # the same fixed support as C51
from klrl.errors import ConfigError
from klrl.sections import Hparam

MODES = ("td", "rollout")
ETA = {"eta": Hparam("agent", 1.0, lo=0.0, lo_open=True,
                     doc="KL weight η toward the fixed π_ref (qsharp, qsharp_cd, kl_prior)")}


class LabelBatch(NamedTuple):
    """A minibatch of rollout labels: (s_h, a_h, G) and a weight (0 while a member has none)."""

    obs: jax.Array
    action: jax.Array
    ret: jax.Array
    weight: jax.Array


class RolloutCarry(NamedTuple):
    """Per-environment roll-in/roll-out bookkeeping and the label store of one member."""

    t: jax.Array            # [E] int32 step of the current episode
    h: jax.Array            # [E] int32 switch step of the current episode
    switched: jax.Array     # [E] bool: π_ref acts from step h on
    s_h: jax.Array          # [E, *obs] state at the switch
    a_h: jax.Array          # [E] action at the switch
    ret: jax.Array          # [E] return accumulated since the switch
    store_obs: jax.Array    # [E, K, *obs]
    store_action: jax.Array  # [E, K]
    store_ret: jax.Array    # [E, K]
    store_pos: jax.Array    # [E] next slot
    store_size: jax.Array   # [E] filled slots (valid labels are slots [0, size))


def check(cfg, name: str, distributional: bool) -> None:
    """The agent-specific config rules (ConfigError, one line). The mode's choices, the
    horizon's range (klrl.static.AgentConfig) and the need for a reference
    (`AgentSpec.needs_reference`, klrl.static.validate) are checked elsewhere."""
    mode = cfg.agent.qsharp_mode
    if not distributional and mode != "td":
        raise ConfigError(f"agent.qsharp_mode: got {mode!r}; allowed td for agent {name}")
    if mode == "rollout" and cfg.train.replay_mode != "per-member":
        raise ConfigError(f"train.replay_mode: got {cfg.train.replay_mode!r}; "
                          "allowed per-member with qsharp_mode rollout")


# ---- the categorical critic of π_ref --------------------------------------------------------

def _critic_loss(nets, batch, hp, cfg, ctx, key=None):
    """Cross-entropy of p(s, a) against the projected target: TD (expected SARSA under π_ref)
    or, in rollout mode, the labels Π(G) (maximum likelihood); weighted by `batch.weight`."""
    z = atoms(cfg.agent)
    if cfg.agent.qsharp_mode == "rollout":
        uniform = jnp.full(batch.ret.shape + z.shape, 1.0 / z.shape[0], z.dtype)
        # Π(G): a zero discount moves every atom onto G, whatever the probabilities.
        y = ops.categorical_projection(z, uniform, batch.ret, jnp.zeros_like(batch.ret))
    else:
        logits_next = nets.target(batch.next_obs)                              # [B, A, N]
        w = jnp.exp(ctx.log_ref(batch.next_obs))                                # π_ref(·|s')
        y = ops.categorical_td_target(z, jax.nn.softmax(logits_next, axis=-1), w, batch.reward,
                                      discount(batch, hp))
    y = jax.lax.stop_gradient(y)
    logits = nets.online(batch.obs)
    ce = ops.categorical_cross_entropy(logits, batch.action, y)
    logits_sa = jnp.take_along_axis(logits, batch.action[:, None, None].astype(jnp.int32), axis=1)[:, 0]
    return weighted_mean(ce, batch.weight), {
        "q_mean": weighted_mean(ops.categorical_mean(logits_sa[:, None], z)[:, 0], batch.weight)}


def _entropic_logits(cfg):
    """Q♯ guidance: ln π_ref + Q_η/η, Q_η = η ln E[exp(Z/η)]."""
    def logits(out, obs, hp, ctx):
        q_eta = ops.entropic_q(out, atoms(cfg.agent), hp["eta"])
        return ops.guided_logits(ctx.log_ref(obs), q_eta, hp["eta"])
    return logits


def _mean_logits(cfg):
    """"CD" guidance: ln π_ref + E[Z]/η."""
    def logits(out, obs, hp, ctx):
        return ops.guided_logits(ctx.log_ref(obs), ops.categorical_mean(out, atoms(cfg.agent)), hp["eta"])
    return logits


# ---- the rollout actor and its label sampler ------------------------------------------------

def rollout_actor(policy_logits, cfg, spec) -> actors.Actor:
    """Guided roll-in, switch to π_ref at h ~ U{0..H−1}, label (s_h, a_h) with the return."""
    horizon = cfg.agent.qsharp_switch_horizon or spec.max_episode_steps

    def draw_h(key, n):
        return jnp.minimum((jax.random.uniform(rng.wrap(key), (n,)) * horizon).astype(jnp.int32), horizon - 1)

    def init(key, num_envs):
        K = max(1, cfg.train.buffer_size // num_envs)
        E = num_envs
        obs_shape = spec.obs_shape[:-1] + (spec.obs_shape[-1] * spec.frame_stack,)
        obs = jnp.zeros((E,) + obs_shape, spec.obs_dtype)
        return RolloutCarry(
            t=jnp.zeros((E,), jnp.int32), h=draw_h(key, E), switched=jnp.zeros((E,), bool), s_h=obs,
            a_h=jnp.zeros((E,), jnp.int32), ret=jnp.zeros((E,), jnp.float32),
            store_obs=jnp.zeros((E, K) + obs_shape, spec.obs_dtype),
            store_action=jnp.zeros((E, K), jnp.int32), store_ret=jnp.zeros((E, K), jnp.float32),
            store_pos=jnp.zeros((E,), jnp.int32), store_size=jnp.zeros((E,), jnp.int32))

    def act(out, obs, carry, key, hp, env_steps, ctx):
        use_ref = carry.switched | (carry.t == carry.h)
        logits = jnp.where(use_ref[:, None], ctx.log_ref(obs), policy_logits(out, obs, hp, ctx))
        return actors.sample_logits(key, logits)

    def observe(carry: RolloutCarry, obs, actions, step, key):
        E, K = carry.store_action.shape
        expand = lambda m, x: m.reshape(m.shape + (1,) * (x.ndim - 1))  # noqa: E731
        done = step.done
        at_switch = ~carry.switched & (carry.t == carry.h)
        s_h = jnp.where(expand(at_switch, obs), obs, carry.s_h)
        a_h = jnp.where(at_switch, actions, carry.a_h)
        switched = carry.switched | at_switch
        ret = jnp.where(at_switch, 0.0, carry.ret) + jnp.where(switched, step.reward, 0.0)
        write = done & switched
        e, pos = jnp.arange(E), carry.store_pos
        put = lambda store, x: store.at[e, pos].set(jnp.where(expand(write, x), x, store[e, pos]))  # noqa: E731
        new = carry._replace(
            store_obs=put(carry.store_obs, s_h), store_action=put(carry.store_action, a_h),
            store_ret=put(carry.store_ret, ret),
            store_pos=jnp.where(write, (pos + 1) % K, pos),
            store_size=jnp.where(write, jnp.minimum(carry.store_size + 1, K), carry.store_size))
        new = new._replace(
            t=jnp.where(done, 0, carry.t + 1), h=jnp.where(done, draw_h(key, E), carry.h),
            switched=switched & ~done, s_h=s_h, a_h=a_h, ret=jnp.where(done, 0.0, ret))
        # An autoreset step (valid False) is no transition: its action was ignored.
        return jax.tree.map(lambda n, o: jnp.where(expand(step.valid, n), n, o), new, carry)

    def restart(carry: RolloutCarry, key):
        """Fresh episodes in every env (pool re-reset): a new switch step, nothing switched; the
        labels already stored are kept, the episodes in flight give none."""
        E = carry.t.shape[0]
        return carry._replace(t=jnp.zeros_like(carry.t), h=draw_h(key, E), switched=jnp.zeros_like(carry.switched),
                              ret=jnp.zeros_like(carry.ret))

    return actors.Actor(init, act, observe, restart)


def sample_labels(carry: RolloutCarry, key, batch_size):
    """Uniform over all labels of this member: env e ∝ its label count, then a slot."""
    k_env, k_slot = jax.random.split(rng.wrap(key))
    sizes = carry.store_size.astype(jnp.float32)
    has = jnp.sum(sizes) > 0
    logits = jnp.where(sizes > 0, jnp.log(jnp.maximum(sizes, 1.0)), -jnp.inf)
    logits = jnp.where(has, logits, 0.0)
    e = jax.random.categorical(k_env, logits, shape=(batch_size,))
    k = jnp.minimum((jax.random.uniform(k_slot, (batch_size,)) * sizes[e]).astype(jnp.int32),
                    jnp.maximum(carry.store_size[e] - 1, 0))
    return LabelBatch(obs=carry.store_obs[e, k], action=carry.store_action[e, k], ret=carry.store_ret[e, k],
                      weight=jnp.full((batch_size,), has, jnp.float32))


def _critic_agent(name: str, logits_of) -> AgentSpec:
    def actor(cfg, spec, q_values):
        if cfg.agent.qsharp_mode == "rollout":
            return rollout_actor(logits_of(cfg), cfg, spec)
        return actors.from_logits(logits_of(cfg))

    return AgentSpec(
        name=name, hparams=("eta",), loss=_critic_loss,
        network=categorical_network,
        q_values=lambda out, cfg: ops.categorical_mean(out, atoms(cfg.agent)),
        actor=actor, eval_actor=lambda cfg, spec, q_values: actors.from_logits(logits_of(cfg)),
        data=lambda cfg, spec: sample_labels if cfg.agent.qsharp_mode == "rollout" else None,
        needs_reference=True, check=lambda cfg: check(cfg, name, distributional=True), declares=ETA)


QSHARP = _critic_agent("qsharp", _entropic_logits)
QSHARP_CD = _critic_agent("qsharp_cd", _mean_logits)


# ---- soft Q with prior (TD baseline) --------------------------------------------------------

def _kl_prior_loss(nets, batch, hp, cfg, ctx, key=None):
    y = ops.kl_prior_target(nets.target(batch.next_obs), ctx.log_ref(batch.next_obs), batch.reward,
                            discount(batch, hp), eta=hp["eta"])
    y = jax.lax.stop_gradient(y)
    q_sa = ops.select_action(nets.online(batch.obs), batch.action)
    w = batch.weight
    return regression_loss(q_sa, y, cfg.agent.loss, w), {"q_mean": weighted_mean(q_sa, w),
                                                         "target_mean": weighted_mean(y, w)}


def _kl_prior_logits(out, obs, hp, ctx):
    """π ∝ π_ref·exp(Q/η): the fixed-point policy of the KL-prior operator."""
    return ops.guided_logits(ctx.log_ref(obs), out, hp["eta"])


KL_PRIOR = AgentSpec(
    name="kl_prior", hparams=("eta",), loss=_kl_prior_loss,
    actor=lambda cfg, spec, q_values: actors.from_logits(_kl_prior_logits),
    eval_actor=lambda cfg, spec, q_values: actors.from_logits(_kl_prior_logits), needs_reference=True,
    check=lambda cfg: check(cfg, "kl_prior", distributional=False), declares=ETA)


__all__ = ["KL_PRIOR", "LabelBatch", "MODES", "QSHARP", "QSHARP_CD", "RolloutCarry", "atoms", "check",
           "rollout_actor", "sample_labels"]
