"""The whole training run of a population as one pure function, composed from small pieces.

`make_train(StaticConfig)` returns a `Trainer`; `train(keys, hparams)` is `init` followed by
`lax.scan(run_chunk)` over chunks; each chunk scans vector steps and ends with evaluation.
The static config and the traced hyperparameters are declared in klrl.static (sections
[env], [agent], [train]: `cfg.env.name`, `cfg.agent.loss`, `cfg.train.batch_size`, ...).
The pieces, each testable alone:
- the learner update (`make_update`): agent loss -> gradients -> an optax chain built from
  traced hyperparameters (optional global-norm clip, Adam with eps, learning rate), with a
  divergence guard that costs one finiteness test of the loss and the gradient norm;
- actors (klrl.actors; an agent may bring its own): act on [E] envs, return log-probabilities;
- the data source: the run's replay (klrl.replay: frame-stack or transitions store,
  per-member or shared) or what the agent's actor records (Q♯ rollout labels);
- evaluators: in-graph episodes on fresh envs (`episodes`, gymnax/tabular), or test envs
  inside the training pool stepped concurrently with ε_eval (`concurrent`, any backend: an
  emulator pool cannot be reset in-graph), whose episodes run across chunk boundaries.

Population: every per-member array has the member axis M first; the learner and actors are
`vmap`ped over members; the environment is ONE backend instance for [M, E (+ test envs)] and
is never vmapped (klrl.envs.base: a host pool cannot be). All members advance in lockstep, so
step counters, the replay write position and the "update now?" decisions are scalars.

Periods are in env steps per member: `learning_starts`, `update_every` (one gradient update
per `update_every` env steps; with E envs a vector step makes E/update_every of them, so
`update_every = 1` is one update per env step), `target_update_every`, the ε schedule.

Randomness: each member key is split into independent streams (init, acting+env, replay
sampling, evaluation, env reset, actor carry) with `fold_in`, so members never share
initialisation or exploration noise. In `shared` replay mode the sampling indices come from
one population stream (derived from member 0's key), so every member sees the same batch.

Divergence: an update whose loss or gradient norm is non-finite is not applied; the member is
flagged `diverged` and frozen from then on, the others are unaffected.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from klrl import actors as act_lib
from klrl import reference as refs
from klrl import replay as rb
from klrl.agents import AGENTS, Context, Nets
from klrl.envs import TRAITS, env_spec, make_env, stacked_shape
from klrl.errors import ConfigError
from klrl.networks import make_network
from klrl.sharding import MEMBER, REPLICATED, SHARD
# The engine's configuration (re-exported: klrl.train is where the engine's users look).
from klrl.static import (COMMON_HPARAMS, HPARAM_TABLE, HPARAMS, StaticConfig, check_members, hparams_used,
                         validate)

# ---- state ------------------------------------------------------------------------------------

class Learner(NamedTuple):
    """Per-member networks and optimizer (leaves [M, ...])."""

    params: Any
    target_params: Any
    prev_target_params: Any   # previous target network (agents with extra_nets = ("prev_target",)), else ()
    opt_state: Any
    diverged: jax.Array       # bool [M]


class ActorState(NamedTuple):
    """What acting needs between steps, for all [M, E + test] envs."""

    obs: jax.Array            # [M, E', *stacked]: the (frame-stacked) observation to act on
    first: jax.Array          # bool [M, E']: obs is the first of an episode (zero-padded stack)
    carry: Any                # the training actor's per-member carry (train envs only)
    key: jax.Array            # [M, 2] acting + env-step stream


class Keys(NamedTuple):
    sample: jax.Array         # [M, 2] data sampling (per-member)
    shared: jax.Array         # [2] population sampling stream (shared replay)
    eval: jax.Array           # [M, 2]


class Counters(NamedTuple):
    vstep: jax.Array          # int32 scalar: vector steps done (env steps per member = vstep·E)
    chunk: jax.Array          # int32 scalar: chunks done


class TrainState(NamedTuple):
    """Full state of a run; jax arrays only (orbax-saveable). Member axis M leads."""

    learner: Learner
    actor: ActorState
    env: Any                  # backend state (not saved when the backend is not checkpointable)
    replay: Any               # klrl.replay state, or () when the agent brings its own data
    keys: Keys
    counters: Counters
    reference: Any            # π_ref's parameters (an argument of the program), () without one


class Trainer(NamedTuple):
    init: Callable[..., TrainState]
    run_chunk: Callable[[TrainState, dict], tuple[TrainState, dict]]
    num_chunks: int
    train: Callable[..., tuple[TrainState, dict]]
    spec: Any                 # klrl.envs.EnvSpec
    traits: Any               # klrl.envs.Traits: in_graph_reset, checkpointable
    reference: Any            # klrl.reference.Reference | None (its `load()` gives the params)
    env_start: Callable[[jax.Array, int], tuple[Any, jax.Array]]   # (member keys, salt) -> (env state, obs)
    reenter: Callable[[TrainState, tuple[Any, jax.Array]], TrainState]  # continue on freshly reset envs
    final_eval: Callable[..., dict]   # (state, hparams, env_start(keys, FINAL_EVAL_SALT)) -> {name: [M]}
    layout: Callable[[TrainState], TrainState]   # the kind of every leaf (klrl.sharding), see `state_layout`


def state_layout(state: TrainState) -> TrainState:
    """The declared layout of a TrainState, leaf by leaf (klrl.sharding's kinds): per-member
    leaves (axis M first) are MEMBER; what one backend instance or one shared buffer holds (the
    env state, which names its pool; the replay store, shared or per-member; the shared
    sampling key) is SHARD, one per device shard; the step counters and π_ref's parameters are
    REPLICATED. Declared by field, never inferred from shapes."""
    def kind(tree, k):
        return jax.tree.map(lambda _: k, tree)

    return TrainState(learner=kind(state.learner, MEMBER), actor=kind(state.actor, MEMBER),
                      env=kind(state.env, SHARD), replay=kind(state.replay, SHARD),
                      keys=Keys(sample=MEMBER, shared=SHARD, eval=MEMBER),
                      counters=kind(state.counters, REPLICATED), reference=kind(state.reference, REPLICATED))


# The env reset of the final evaluation: a salt no resume (salt = chunks done) ever uses.
FINAL_EVAL_SALT = 2**31 - 1


def over_members(fn: Callable, in_axes: tuple, mode: str) -> Callable:
    """`fn` applied to every member: `jax.vmap(fn, in_axes)` (mode "vmap"), or a sequential
    `lax.map` over the arguments whose axis is 0 (mode "map"; the others are closed over).
    Same numbers to rounding. Why both: XLA lowers a vmapped convolution to a grouped one,
    which on CPU costs more per member than a member's own program (klrl bench atari)."""
    if mode == "vmap":
        return jax.vmap(fn, in_axes=in_axes)

    def mapped(*args):
        xs = tuple(a for a, ax in zip(args, in_axes) if ax == 0)

        def one(x):
            it = iter(x)
            return fn(*(next(it) if ax == 0 else a for a, ax in zip(args, in_axes)))

        return jax.lax.map(one, xs)

    return mapped


# Key streams split from each member key.
_INIT, _ACT, _SAMPLE, _EVAL, _RESET, _SHARED, _CARRY = range(7)


def prepare_hparams(hparams: dict, members: int) -> dict:
    """Fill defaults, check names and shapes; returns name -> float32 [M] for every HPARAMS name."""
    unknown = sorted(set(hparams) - set(HPARAMS))
    if unknown:
        raise ConfigError(f"hparams: got {unknown[0]!r}; allowed {', '.join(HPARAMS)}")
    out = {}
    for name, default in HPARAMS.items():
        v = jnp.asarray(hparams.get(name, default), jnp.float32)
        if v.ndim == 0:
            v = jnp.full((members,), v)
        if v.shape != (members,):
            raise ConfigError(f"hparams.{name}: got shape {v.shape}; allowed ({members},) (one value per member)")
        out[name] = v
    return out


# ---- pieces -------------------------------------------------------------------------------------

def make_optimizer(hp: dict, max_grad_norm: float) -> optax.GradientTransformation:
    """optax chain from one member's traced hyperparameters: [clip] -> Adam(eps) -> −lr."""
    parts = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm > 0 else []
    parts += [optax.scale_by_adam(eps=hp["adam_eps"]), optax.scale_by_learning_rate(hp["learning_rate"])]
    return optax.chain(*parts)


def make_update(cfg: StaticConfig, net, agent) -> Callable:
    """One member's gradient step: (learner leaves, batch, hp, ctx) -> (learner, loss, aux).

    The guard: a non-finite loss or gradient norm withholds the step and flags the member
    diverged; it stays frozen at its last finite parameters from then on. Its cost is one
    finiteness test of two scalars and ONE select per parameter, fused into the `p + u` kernel
    the update runs anyway (no select over gradients or optimizer state: a frozen member's
    optimizer state may become non-finite, and it is never used again).
    """

    def update(learner: Learner, batch, hp: dict, ctx: Context):
        params, target, prev_target = learner.params, learner.target_params, learner.prev_target_params

        def loss_fn(p):
            nets = Nets(
                online=lambda o: net.apply(p, o),
                online_frozen=lambda o: net.apply(jax.lax.stop_gradient(p), o),
                target=lambda o: net.apply(target, o),
                prev_target=lambda o: net.apply(prev_target, o),
            )
            return agent.loss(nets, batch, hp, cfg, ctx)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        ok = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
        updates, opt_state = make_optimizer(hp, cfg.train.max_grad_norm).update(grads, learner.opt_state, params)
        apply = ok & ~learner.diverged
        params = jax.tree.map(lambda p, u: jnp.where(apply, p + u, p), params, updates)
        if cfg.train.target_update == "polyak":
            target = jax.tree.map(lambda t, p: t + hp["polyak"] * (p - t), target, params)
        new = learner._replace(params=params, target_params=target, opt_state=opt_state,
                               diverged=learner.diverged | ~ok)
        return new, loss, aux

    return update


def make_train(cfg: StaticConfig) -> Trainer:
    """Build the pure training program for `cfg` (see module docstring); nothing is compiled."""
    validate(cfg)
    agent = AGENTS[cfg.agent.name]
    E = cfg.env.num_envs
    E_test = cfg.eval.envs if cfg.eval.mode == "concurrent" else 0
    steps_per_chunk = cfg.train.chunk_steps // E
    num_chunks = cfg.train.total_steps // cfg.train.chunk_steps
    shared = cfg.train.replay_mode == "shared"
    reference = refs.for_config(cfg)
    ref_fn = reference.log_probs if reference is not None else None

    @functools.lru_cache(maxsize=None)
    def env_instance(members: int, instance: int):
        """Backend instance `instance` for [members, E + test envs] (a host pool each; one per
        device shard of a sharded population, klrl.sharding)."""
        return make_env(cfg.env.name, members, E + E_test, cfg.env.backend, preset=cfg.env.preset)

    def env_for(members: int):
        """The backend the program is traced with. Which pool a step drives is named by the env
        state (a host pool's handle), so this one serves every instance of its shape."""
        return env_instance(members, 0)

    spec = env_spec(cfg.env.name, cfg.env.backend, preset=cfg.env.preset)
    traits = TRAITS[cfg.env.backend]
    k = spec.frame_stack
    obs_shape = stacked_shape(spec)
    num_actions = spec.num_actions
    acfg = cfg.agent
    net = make_network(acfg.torso, acfg.hidden, num_actions, agent.num_outputs(acfg), acfg.obs_scale, acfg.conv)

    def q_values(out):
        return agent.q_values(out, cfg.agent)

    actor = (agent.actor(cfg, spec, q_values) if agent.actor is not None
             else act_lib.configured(cfg.agent.acting, q_values, cfg.train.total_steps))
    eval_actor = (agent.eval_actor(cfg, spec, q_values) if agent.eval_actor is not None
                  else act_lib.evaluation(q_values, cfg.eval.epsilon))
    own_data = agent.data(cfg, spec) if agent.data is not None else None
    update = make_update(cfg, net, agent)
    keeps_prev = "prev_target" in agent.extra_nets

    def ctx_of(ref_params) -> Context:
        return Context(log_ref=None if ref_fn is None else (lambda obs: ref_fn(ref_params, obs)))

    @functools.lru_cache(maxsize=None)
    def store_for(members: int):
        """The replay store for a population of `members` (shared mode sizes its columns by M)."""
        return rb.make_replay(cfg.train.replay_store, obs_shape=spec.obs_shape, obs_dtype=spec.obs_dtype,
                              frame_stack=k, members=members, envs=E, capacity=cfg.train.buffer_size,
                              mode=cfg.train.replay_mode)

    def reset_keys(keys: jax.Array, salt: int) -> jax.Array:
        """[M, E', 2] env keys from the member keys; each `salt` gives a new set (a pool's re-reset)."""
        base = jax.vmap(lambda kk: jax.random.fold_in(jax.random.fold_in(kk, _RESET), salt))(keys)
        return jax.vmap(lambda kk: jax.random.split(kk, E + E_test))(base)

    def env_start(keys: jax.Array, salt: int = 0, instance: int = 0):
        """(env state, first obs) for the population `keys` on backend instance `instance`; a
        host call for pools."""
        keys = jnp.asarray(keys, jnp.uint32)
        return env_instance(keys.shape[0], instance).reset(reset_keys(keys, salt))

    def push(stack, frame, first):
        return rb.push_frame(stack, frame, first, k)

    def newest_frame(stack):
        return stack[..., stack.shape[-1] - spec.obs_shape[-1]:] if k > 1 else stack

    # ---- learning ----------------------------------------------------------------------------
    mode = cfg.train.member_map
    member_update = over_members(update, (0, None if shared and own_data is None else 0, 0, None), mode)
    forward = over_members(net.apply, (0, 0), mode)        # the network on [M, envs, ...] observations

    def learn(state: TrainState, hp, ctx):
        """One gradient update of every member; returns (state, loss [M], aux {name: [M]})."""
        keys = state.keys
        if own_data is not None:
            split = jax.vmap(jax.random.split)(keys.sample)
            keys = keys._replace(sample=split[:, 0])
            batch = jax.vmap(own_data, in_axes=(0, 0, None))(state.actor.carry, split[:, 1], cfg.train.batch_size)
        elif shared:
            new_shared, sub = jax.random.split(keys.shared)
            keys = keys._replace(shared=new_shared)
            batch, _ = store_for(state.learner.diverged.shape[0]).sample(state.replay, sub, cfg.train.batch_size)
        else:
            split = jax.vmap(jax.random.split)(keys.sample)
            keys = keys._replace(sample=split[:, 0])
            batch, _ = store_for(state.learner.diverged.shape[0]).sample(state.replay, split[:, 1], cfg.train.batch_size)
        learner, loss, aux = member_update(state.learner, batch, hp, ctx)
        return state._replace(learner=learner, keys=keys), loss, aux

    def update_target(learner: Learner) -> Learner:
        """Every target_update_every env steps: π₋ ← target, and (hard mode) target ← online."""
        target = learner.params if cfg.train.target_update == "hard" else learner.target_params
        prev = learner.target_params if keeps_prev else learner.prev_target_params
        return learner._replace(prev_target_params=prev, target_params=target)

    # ---- one vector step of the whole population ----------------------------------------------
    def vector_step(carry, hp, ctx, aux_zero):
        state, acc = carry
        env = env_for(state.learner.diverged.shape[0])
        env_steps = state.counters.vstep * E
        split = jax.vmap(lambda kk: jax.random.split(kk, 5))(state.actor.key)        # [M, 5, 2]
        new_key, k_act, k_test, k_env, k_obs = (split[:, i] for i in range(5))
        a = state.actor
        out = forward(state.learner.params, a.obs)                                     # one forward, all envs
        actions, log_probs = jax.vmap(actor.act, in_axes=(0, 0, 0, 0, 0, None, None))(
            out[:, :E], a.obs[:, :E], a.carry, k_act, hp, env_steps, ctx)
        if E_test:
            test_actions, test_log_probs = jax.vmap(eval_actor.act, in_axes=(0, 0, None, 0, 0, None, None))(
                out[:, E:], a.obs[:, E:], (), k_test, hp, env_steps, ctx)
            actions_all = jnp.concatenate([actions, test_actions], axis=1)
        else:
            actions_all = actions
        env_keys = (jax.vmap(lambda kk: jax.random.split(kk, E + E_test))(k_env) if traits.in_graph_reset else None)
        env_state, st = env.step(state.env, actions_all, env_keys)
        st_train = jax.tree.map(lambda x: x[:, :E], st)
        carry_new = jax.vmap(actor.observe)(a.carry, a.obs[:, :E], actions, st_train, k_obs)
        replay = state.replay
        if own_data is None:
            replay = store_for(actions.shape[0]).add(replay, newest_frame(a.obs[:, :E]), a.first[:, :E], actions, st_train)
        first = ~st.valid
        actor_state = ActorState(obs=push(a.obs, st.obs, first), first=first, carry=carry_new, key=new_key)
        vstep = state.counters.vstep + 1
        state = state._replace(actor=actor_state, env=env_state, replay=replay,
                               counters=state.counters._replace(vstep=vstep))

        # Gradient updates due in this vector step: one per `update_every` env steps per member.
        M = actions.shape[0]
        due = (vstep * E) // cfg.train.update_every - ((vstep - 1) * E) // cfg.train.update_every
        n_updates = jnp.where(vstep * E >= cfg.train.learning_starts, due, 0)

        # Only the learner, the sampling keys and the sums pass through the loop / cond: the
        # replay, the envs and the actor are read-only operands there, so XLA never copies them
        # (an Atari frame store is tens of MB per member; carried, it was copied every step).
        def one_update(_, c):
            learner, keys, loss_sum, aux_sum = c
            s, loss, aux = learn(state._replace(learner=learner, keys=keys), hp, ctx)
            return s.learner, s.keys, loss_sum + loss, jax.tree.map(jnp.add, aux_sum, aux)

        zeros = jnp.zeros((M,), jnp.float32)
        carried = (state.learner, state.keys, zeros, aux_zero)
        if E % cfg.train.update_every == 0:
            # A fixed number of updates per vector step once learning has started: a cond around
            # an unrolled loop.
            def run_updates(c):
                for _ in range(E // cfg.train.update_every):
                    c = one_update(0, c)
                return c

            learner, keys, loss_sum, aux_sum = jax.lax.cond(n_updates > 0, run_updates, lambda c: c, carried)
        else:
            learner, keys, loss_sum, aux_sum = jax.lax.fori_loop(0, n_updates, one_update, carried)
        state = state._replace(learner=learner, keys=keys)
        crossed = (vstep * E) // cfg.train.target_update_every != ((vstep - 1) * E) // cfg.train.target_update_every
        state = state._replace(learner=jax.lax.cond(crossed, update_target, lambda lr: lr, state.learner))

        ended = st_train.episode_end
        stats = dict(
            ret_sum=jnp.sum(jnp.where(ended, st_train.episode_return, 0.0), axis=1),
            ret_count=jnp.sum(ended, axis=1).astype(jnp.float32),
            loss_sum=loss_sum, loss_count=jnp.full((M,), n_updates, jnp.float32),
            aux_sum=aux_sum,
        )
        if E_test:
            st_test = jax.tree.map(lambda x: x[:, E:], st)
            test_ended = st_test.episode_end
            stats["eval_sum"] = jnp.sum(jnp.where(test_ended, st_test.episode_return, 0.0), axis=1)
            stats["eval_count"] = jnp.sum(test_ended, axis=1).astype(jnp.float32)
            if ctx.log_ref is not None:   # per-step KL(π‖π_ref) of the evaluation policy along test episodes
                kl = act_lib.kl(test_log_probs, ctx.log_ref(a.obs[:, E:]))
                stats["kl_sum"] = jnp.sum(jnp.where(st_test.valid, kl, 0.0), axis=1)
                stats["kl_count"] = jnp.sum(st_test.valid, axis=1).astype(jnp.float32)
        acc = jax.tree.map(jnp.add, acc, stats)
        return (state, acc), None

    # ---- in-graph evaluation episodes -----------------------------------------------------------
    def evaluate_episodes(params, eval_key, hp, ctx):
        """Mean return of `eval_episodes` fresh episodes per member (in-graph envs, played to their
        first end or the time limit) and the per-step KL(π‖π_ref) along them."""
        n = cfg.eval.episodes
        M = eval_key.shape[0]
        env = make_env(cfg.env.name, M, n, cfg.env.backend, preset=cfg.env.preset)
        split = jax.vmap(lambda kk: jax.random.split(kk, n + 1))(eval_key)              # [M, n+1, 2]
        env_state, obs = env.reset(split[:, 1:])
        obs = push(jnp.zeros((M, n) + obs_shape, spec.obs_dtype), obs, jnp.ones((M, n), bool))

        def cond(c):
            return (c[0] < spec.max_episode_steps) & ~jnp.all(c[3])

        def body(c):
            t, env_state, obs, done, ret, key, kl_sum, kl_n = c
            s = jax.vmap(lambda kk: jax.random.split(kk, n + 2))(key)
            out = forward(params, obs)
            actions, log_probs = jax.vmap(eval_actor.act, in_axes=(0, 0, None, 0, 0, None, None))(
                out, obs, (), s[:, n + 1], hp, 0, ctx)
            env_state, st = env.step(env_state, actions, s[:, 1:n + 1])
            ret = jnp.where(~done & st.done, st.episode_return, ret)
            if ctx.log_ref is not None:
                kl = act_lib.kl(log_probs, ctx.log_ref(obs))
                kl_sum, kl_n = kl_sum + jnp.where(done, 0.0, kl), kl_n + jnp.where(done, 0.0, 1.0)
            return (t + 1, env_state, push(obs, st.obs, ~st.valid), done | st.done, ret, s[:, 0], kl_sum, kl_n)

        zeros = jnp.zeros((M, n), jnp.float32)
        init = (jnp.zeros((), jnp.int32), env_state, obs, jnp.zeros((M, n), bool), zeros, split[:, 0], zeros, zeros)
        out = jax.lax.while_loop(cond, body, init)
        # Every episode ends by the time limit (truncated there), so `ret` holds all n returns.
        ret = out[4]
        kl_per_step = jnp.sum(out[6], axis=1) / jnp.maximum(jnp.sum(out[7], axis=1), 1.0)
        return jnp.mean(ret, axis=1), kl_per_step

    # ---- the final evaluation (train.final_eval_episodes) --------------------------------------------
    def final_eval(state: TrainState, hparams: dict, env_start_state) -> dict:
        """After training, every env of the pool (train and test, E' per member, freshly reset
        by `env_start_state`) plays k = ceil(n / E') episodes at eval_epsilon; a member's score
        is the mean raw return of its k·E' >= n episodes. A fixed count per env, not the first
        n to end, so short episodes are not favoured. Episodes end per game (episode_end); every
        one is capped by the env's time limit, which bounds the loop."""
        M = state.learner.diverged.shape[0]
        hp = prepare_hparams(hparams, M)
        ctx = ctx_of(state.reference)
        env = env_for(M)
        E_all = E + E_test
        n_per_env = -(-cfg.eval.final_episodes // E_all)
        env_state, frame = env_start_state
        first = jnp.ones((M, E_all), bool)
        obs = push(jnp.zeros((M, E_all) + obs_shape, spec.obs_dtype), frame, first)
        key = jax.vmap(jax.random.fold_in, in_axes=(0, None))(state.keys.eval, FINAL_EVAL_SALT)
        max_steps = n_per_env * (spec.max_episode_steps + 1) + 1

        def cond(c):
            return (c[0] < max_steps) & ~jnp.all(c[4] >= n_per_env)

        def body(c):
            t, env_state, obs, ret_sum, count, key = c
            s = jax.vmap(lambda kk: jax.random.split(kk, 3))(key)
            out = forward(state.learner.params, obs)
            actions, _ = jax.vmap(eval_actor.act, in_axes=(0, 0, None, 0, 0, None, None))(
                out, obs, (), s[:, 1], hp, 0, ctx)
            env_keys = jax.vmap(lambda kk: jax.random.split(kk, E_all))(s[:, 2]) if traits.in_graph_reset else None
            env_state, st = env.step(env_state, actions, env_keys)
            take = st.episode_end & (count < n_per_env)
            ret_sum = ret_sum + jnp.where(take, st.episode_return, 0.0)
            return (t + 1, env_state, push(obs, st.obs, ~st.valid), ret_sum, count + take, s[:, 0])

        zeros = jnp.zeros((M, E_all), jnp.float32)
        init_c = (jnp.zeros((), jnp.int32), env_state, obs, zeros, jnp.zeros((M, E_all), jnp.int32), key)
        _, _, _, ret_sum, count, _ = jax.lax.while_loop(cond, body, init_c)
        episodes = jnp.sum(count, axis=1).astype(jnp.float32)
        return {"step": jnp.full((M,), state.counters.vstep * E, jnp.float32),
                "final_eval_return": jnp.sum(ret_sum, axis=1) / jnp.maximum(episodes, 1.0),
                "final_eval_episodes": episodes}

    # ---- the Trainer's functions ------------------------------------------------------------------
    def init(keys: jax.Array, hparams: dict, ref_params: Any = (), env_start_state=None,
             active: jax.Array | None = None) -> TrainState:
        """The state before training. `active` (bool [M], default all): members with False are
        padding (klrl.sharding) and start frozen (flagged diverged), so they never train."""
        keys = jnp.asarray(keys, jnp.uint32)
        M = keys.shape[0]
        prepare_hparams(hparams, M)  # shape/name check only
        stream = lambda i: jax.vmap(lambda kk: jax.random.fold_in(kk, i))(keys)  # noqa: E731
        dummy = jnp.zeros(obs_shape, spec.obs_dtype)
        params = jax.vmap(lambda kk: net.init(kk, dummy))(stream(_INIT))
        opt_state = jax.vmap(make_optimizer(HPARAMS, cfg.train.max_grad_norm).init)(params)
        if env_start_state is None:
            if not traits.in_graph_reset:
                raise ValueError("init: this env resets on the host; pass env_start_state=trainer.env_start(keys)")
            env_start_state = env_start(keys)
        env_state, frame = env_start_state
        E_all = E + E_test
        first = jnp.ones((M, E_all), bool)
        obs = push(jnp.zeros((M, E_all) + obs_shape, spec.obs_dtype), frame, first)
        carry = jax.vmap(actor.init, in_axes=(0, None))(stream(_CARRY), E)
        if own_data is None:
            replay = store_for(M).init()
        else:
            replay = ()
        learner = Learner(params=params, target_params=params, prev_target_params=params if keeps_prev else (),
                          opt_state=opt_state,
                          diverged=jnp.zeros((M,), bool) if active is None else ~jnp.asarray(active, bool))
        return TrainState(
            learner=learner, actor=ActorState(obs=obs, first=first, carry=carry, key=stream(_ACT)),
            env=env_state, replay=replay,
            keys=Keys(sample=stream(_SAMPLE), shared=jax.random.fold_in(keys[0], _SHARED), eval=stream(_EVAL)),
            counters=Counters(vstep=jnp.zeros((), jnp.int32), chunk=jnp.zeros((), jnp.int32)),
            reference=ref_params)

    def run_chunk(state: TrainState, hparams: dict) -> tuple[TrainState, dict]:
        M = state.learner.diverged.shape[0]
        hp = prepare_hparams(hparams, M)
        ctx = ctx_of(state.reference)
        # The aux metrics' names and shapes, from the loss's abstract evaluation (no compute).
        aux_zero = jax.tree.map(lambda x: jnp.zeros((M,), jnp.float32),
                                jax.eval_shape(lambda s: learn(s, hp, ctx)[2], state))
        f32 = jnp.zeros((M,), jnp.float32)
        acc0 = dict(ret_sum=f32, ret_count=f32, loss_sum=f32, loss_count=f32, aux_sum=aux_zero)
        if E_test:
            acc0.update(eval_sum=f32, eval_count=f32)
            if ctx.log_ref is not None:
                acc0.update(kl_sum=f32, kl_count=f32)
        (state, acc), _ = jax.lax.scan(lambda c, _: vector_step(c, hp, ctx, aux_zero), (state, acc0), None,
                                       length=steps_per_chunk)
        nan = jnp.float32(jnp.nan)
        mean = lambda s, n: jnp.where(n > 0, s / jnp.maximum(n, 1.0), nan)  # noqa: E731
        metrics = {
            "step": jnp.full((M,), state.counters.vstep * E, jnp.float32),
            "train_return": mean(acc["ret_sum"], acc["ret_count"]),
        }
        if E_test:
            metrics["eval_return"] = mean(acc["eval_sum"], acc["eval_count"])
            if ctx.log_ref is not None:
                metrics["kl_ref"] = mean(acc["kl_sum"], acc["kl_count"])
        else:
            eval_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(state.keys.eval, state.counters.chunk)
            eval_return, eval_kl = evaluate_episodes(state.learner.params, eval_keys, hp, ctx)
            metrics["eval_return"] = eval_return
            if ctx.log_ref is not None:
                metrics["kl_ref"] = eval_kl
        metrics["loss"] = mean(acc["loss_sum"], acc["loss_count"])
        metrics["diverged"] = state.learner.diverged.astype(jnp.float32)
        for name, total in acc["aux_sum"].items():
            metrics[name] = mean(total, acc["loss_count"])
        return state._replace(counters=state.counters._replace(chunk=state.counters.chunk + 1)), metrics

    def reenter(state: TrainState, env_start_state) -> TrainState:
        """`state` continued on freshly reset envs (a resumed host pool): every env starts an
        episode, so the acting stacks restart and the next replay slot is an episode start."""
        env_state, frame = env_start_state
        first = jnp.ones(state.actor.first.shape, bool)
        obs = push(jnp.zeros_like(state.actor.obs), frame, first)
        # The actor key advances so the restarted episodes draw fresh switch steps.
        split = jax.vmap(jax.random.split)(state.actor.key)
        carry = jax.vmap(actor.restart)(state.actor.carry, split[:, 1])
        return state._replace(env=env_state, actor=state.actor._replace(obs=obs, first=first, carry=carry,
                                                                         key=split[:, 0]))

    def train(keys: jax.Array, hparams: dict, ref_params: Any = ()) -> tuple[TrainState, dict]:
        state = init(keys, hparams, ref_params)
        return jax.lax.scan(lambda s, _: run_chunk(s, hparams), state, None, length=num_chunks)

    return Trainer(init=init, run_chunk=run_chunk, num_chunks=num_chunks, train=train, spec=spec, traits=traits, reenter=reenter,
                   reference=reference, env_start=env_start, final_eval=final_eval, layout=state_layout)


__all__ = ["FINAL_EVAL_SALT", "COMMON_HPARAMS", "HPARAM_TABLE", "HPARAMS", "ActorState", "Counters", "Keys", "Learner",
           "StaticConfig", "TrainState", "Trainer", "hparams_used", "state_layout", "make_optimizer", "make_train", "make_update",
           "check_members", "prepare_hparams", "validate"]
