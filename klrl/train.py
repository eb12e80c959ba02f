"""The whole training run of a population as one pure function, composed from public pieces.

`make_train(cfg)` returns a `Trainer`; `train(keys, hparams)` is `init` followed by
`lax.scan(run_chunk)` over chunks; a chunk scans vector steps and ends with evaluation. One
vector step, for every member at once:

    act on all envs, step them, observe          klrl.acting   (Acting.step)
    write the transitions                        klrl.data     (Data.add: replay, or nothing)
    the gradient updates due                     klrl.learner  (updates_due, make_update)
    the target update when its period is crossed klrl.learner  (target_due, target_step)
    evaluation statistics                        klrl.evaluation (Evaluator.observe)

The static config is klrl.static's (sections [env], [agent], [train], [eval]); traced hyperparameters
are float32 [M] arrays (klrl.static.HPARAMS), so a grid of them is one compiled population.
`make_train(cfg, env=, agent=, network=, evaluator=)` takes any of its pieces built elsewhere
(a bench's env, a test's toy agent) instead of the ones `cfg` names.

Population: every per-member array has the member axis M first; learner and actors are
vmapped over members (or `lax.map`ped, `train.member_map`); the environment is ONE backend
instance for [M, E (+ test envs)] and is never vmapped (a host pool cannot be). Members advance
in lockstep, so step counters, the replay write position and "update now?" are scalars.

Periods are in env steps per member: `learning_starts`, `update_every` (one gradient update
per `update_every` env steps: with E envs a vector step makes E/update_every of them),
`target_update_every`, the ε schedule.

Randomness: each member key is split into independent streams (init, acting + env, replay
sampling, evaluation, env reset, actor carry) with `fold_in`, so members never share
initialisation or exploration noise. In `shared` replay mode the sampling indices come from
one population stream (derived from member 0's key), so every member sees the same batch.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from klrl import actors as act_lib
from klrl import evaluation as ev
from klrl import reference as refs
from klrl.acting import ActorState, make_acting
from klrl.agents import AGENTS, Context
from klrl.agents.base import bind
from klrl.data import make_data
from klrl import envs as envs_lib
from klrl.envs import stacked_shape
from klrl.errors import ConfigError
from klrl.evaluation import FINAL_EVAL_SALT
from klrl.learner import (Learner, init_learner, make_optimizer, make_update, run_updates, target_due, target_step,
                          updates_due)
from klrl.placement import resolve as resolve_auto
from klrl.sharding import MEMBER, REPLICATED, SHARD, STATE, STATIC, Signature
# The engine's configuration (re-exported: klrl.train is where the engine's users look).
from klrl.static import (COMMON_HPARAMS, HPARAM_TABLE, HPARAMS, StaticConfig, check_members, hparams_used,
                         validate)

# ---- state ------------------------------------------------------------------------------------


class Keys(NamedTuple):
    sample: jax.Array         # [M, 2] data sampling and loss keys (per-member)
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
    signatures: dict          # function name -> klrl.sharding.Signature: the kinds of its arguments and result


# The kinds of the Trainer functions' arguments and results (klrl.sharding shards any of them).
SIGNATURES = {
    # (member keys, salt) -> (env state, first obs): one backend instance per shard
    "env_start": Signature(args=(MEMBER, STATIC), result=SHARD),
    # (keys, hparams, π_ref's params, env_start's result, active) -> state
    "init": Signature(args=(MEMBER, MEMBER, REPLICATED, SHARD, MEMBER), result=STATE),
    # (state, hparams) -> (state, metrics); the old state's buffers are reused
    "run_chunk": Signature(args=(STATE, MEMBER), result=(STATE, MEMBER), donate=(0,)),
    # (state, env_start's result) -> state
    "reenter": Signature(args=(STATE, SHARD), result=STATE),
    # (state, hparams, env_start's result) -> {name: [M]}
    "final_eval": Signature(args=(STATE, MEMBER, SHARD), result=MEMBER),
}


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


class EnvSource(NamedTuple):
    """An environment family as the trainer uses it: its spec, traits and a factory
    `make(members, envs) -> Env` (klrl.envs.base.Env)."""

    spec: Any
    traits: Any
    make: Callable[[int, int], Any]


def env_source(cfg: StaticConfig) -> EnvSource:
    """The env that `cfg` ([env]) names, from its backend's registry entry (klrl.envs.backend):
    the spec is computed once, here, without building an env."""
    b, name = envs_lib.backend(cfg.env.backend), cfg.env.name
    options = envs_lib.options_from(cfg.env)
    return EnvSource(spec=b.spec(name, options), traits=b.traits,
                     make=lambda members, envs: b.make(name, members, envs, options))


def over_members(fn: Callable, in_axes: tuple, mode: str) -> Callable:
    """`fn` applied to every member: `jax.vmap(fn, in_axes)` (mode "vmap"), or a sequential
    `lax.map` over the arguments whose axis is 0 (mode "map"; the others are closed over).
    Same numbers to rounding. Why both: XLA lowers a vmapped convolution to a grouped one,
    which on CPU costs more per member than a member's own program (klrl bench atari). "auto"
    (a config nobody resolved, klrl.placement) is vmap."""
    if mode in ("vmap", "auto"):
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


def default_evaluator(cfg: StaticConfig, forward: Callable, eval_actor, env: EnvSource) -> ev.Evaluator:
    """The evaluator `cfg.eval.mode` names: concurrent test envs, or fresh in-graph episodes."""
    if cfg.eval.mode == "concurrent":
        return ev.concurrent(cfg.eval.envs, cfg.env.num_envs)
    return ev.episodes(cfg.eval.episodes, forward, eval_actor, env.make, env.spec)


def chunk_stats(acted, n_updates, loss_sum, aux_sum, num_envs: int) -> dict:
    """One vector step's training sums per member: returns of the training episodes that ended,
    and the losses of its updates."""
    st = jax.tree.map(lambda x: x[:, :num_envs], acted.step)
    M = loss_sum.shape[0]
    return dict(ret_sum=jnp.sum(jnp.where(st.episode_end, st.episode_return, 0.0), axis=1),
                ret_count=jnp.sum(st.episode_end, axis=1).astype(jnp.float32),
                loss_sum=loss_sum, loss_count=jnp.full((M,), n_updates, jnp.float32), aux_sum=aux_sum)


def make_train(cfg: StaticConfig, *, env: EnvSource | None = None, agent=None, network=None,
               evaluator: ev.Evaluator | None = None) -> Trainer:
    """Build the pure training program for `cfg` (see module docstring); nothing is compiled.
    Keys left at `auto` take this platform's choice (klrl.placement.resolve)."""
    cfg = resolve_auto(cfg)
    validate(cfg)
    agent = AGENTS[cfg.agent.name] if agent is None else agent
    env = env_source(cfg) if env is None else env
    spec, traits, E, t = env.spec, env.traits, cfg.env.num_envs, cfg.train
    net = agent.network(cfg, spec.num_actions) if network is None else network
    q_values = functools.partial(agent.q_values, cfg=cfg)
    actor = (agent.actor(cfg, spec, q_values) if agent.actor is not None
             else act_lib.configured(cfg.agent.acting, q_values, t.total_steps))
    eval_actor = (agent.eval_actor(cfg, spec, q_values) if agent.eval_actor is not None
                  else act_lib.evaluation(q_values, cfg.eval.epsilon))
    forward = over_members(lambda p, obs, key: agent.forward(bind(net, p), obs, key, cfg), (0, 0, 0),
                           t.member_map)
    evaluator = default_evaluator(cfg, forward, eval_actor, env) if evaluator is None else evaluator
    E_all = E + evaluator.test_envs
    env_instance = functools.lru_cache(maxsize=None)(lambda members, instance: env.make(members, E_all))
    env_for = lambda members: env_instance(members, 0)   # noqa: E731 (a pool's handle lives in the env state)
    acting = make_acting(forward, actor, eval_actor, env_for, num_envs=E, test_envs=evaluator.test_envs,
                         frame_stack=spec.frame_stack, in_graph_reset=traits.in_graph_reset)
    data = make_data(cfg, spec, agent.data(cfg, spec) if agent.data is not None else None)
    member_update = over_members(make_update(cfg, net, agent), (0, None if data.shared_batch else 0, 0, 0, None),
                                 t.member_map)
    final = ev.make_final_eval(forward, eval_actor, env_for, spec, envs=E_all, episodes=cfg.eval.final_episodes,
                               in_graph_reset=traits.in_graph_reset)
    keep_prev = "prev_target" in agent.extra_nets
    reference = refs.for_config(cfg)
    per_step = E // t.update_every if E % t.update_every == 0 else None

    def ctx_of(ref_params) -> Context:
        return Context(log_ref=None if reference is None else (lambda obs: reference.log_probs(ref_params, obs)))

    def env_start(keys: jax.Array, salt: int = 0, instance: int = 0):
        """(env state, first obs) of backend instance `instance`; each `salt` a new reset (a host call for pools)."""
        keys = jnp.asarray(keys, jnp.uint32)
        base = jax.vmap(lambda kk: jax.random.fold_in(jax.random.fold_in(kk, _RESET), salt))(keys)
        return env_instance(keys.shape[0], instance).reset(jax.vmap(lambda kk: jax.random.split(kk, E_all))(base))

    def learn(learner, keys: Keys, replay, carry, hp, ctx):
        """One gradient update of every member: (learner, keys, loss [M], aux {name: [M]})."""
        batch, sample, shared, loss_keys = data.sample(replay, keys.sample, keys.shared, carry)
        learner, loss, aux = member_update(learner, batch, hp, loss_keys, ctx)
        return learner, keys._replace(sample=sample, shared=shared), loss, aux

    def vector_step(carry, hp, ctx, aux_zero):
        state, acc, eval_acc = carry
        actor, env_state, acted = acting.step(state.actor, state.env, state.learner.params, hp,
                                              state.counters.vstep * E, ctx)
        replay = data.add(state.replay, acted)
        vstep = state.counters.vstep + 1
        n_updates = updates_due(vstep, E, t.update_every, t.learning_starts)

        # Only the learner, keys and sums pass through the loop: the replay and the actor are
        # read-only operands there, so XLA never copies them (an Atari frame store is tens of MB).
        def one_update(_, c):
            learner, keys, loss_sum, aux_sum = c
            learner, keys, loss, aux = learn(learner, keys, replay, actor.carry, hp, ctx)
            return learner, keys, loss_sum + loss, jax.tree.map(jnp.add, aux_sum, aux)

        zeros = jnp.zeros(state.learner.diverged.shape, jnp.float32)
        learner, keys, loss_sum, aux_sum = run_updates(n_updates, per_step, one_update,
                                                       (state.learner, state.keys, zeros, aux_zero))
        learner = jax.lax.cond(target_due(vstep, E, t.target_update_every),
                               functools.partial(target_step, hard=t.target_update == "hard", keep_prev=keep_prev),
                               lambda lr: lr, learner)
        state = state._replace(learner=learner, actor=actor, env=env_state, replay=replay, keys=keys,
                               counters=state.counters._replace(vstep=vstep))
        acc = jax.tree.map(jnp.add, acc, chunk_stats(acted, n_updates, loss_sum, aux_sum, E))
        return (state, acc, evaluator.observe(eval_acc, acted, ctx)), None

    def init(keys: jax.Array, hparams: dict, ref_params: Any = (), env_start_state=None,
             active: jax.Array | None = None) -> TrainState:
        """The state before training. `active` (bool [M], default all): members with False are
        padding (klrl.sharding) and start frozen (flagged diverged), so they never train."""
        keys = jnp.asarray(keys, jnp.uint32)
        M = keys.shape[0]
        prepare_hparams(hparams, M)  # shape/name check only
        stream = lambda i: jax.vmap(lambda kk: jax.random.fold_in(kk, i))(keys)  # noqa: E731
        dummy = jnp.zeros(stacked_shape(spec), spec.obs_dtype)
        learner = init_learner(net, stream(_INIT), dummy, t.max_grad_norm, keep_prev, active)
        if env_start_state is None:
            if not traits.in_graph_reset:
                raise ValueError("init: this env resets on the host; pass env_start_state=trainer.env_start(keys)")
            env_start_state = env_start(keys)
        env_state, frame = env_start_state
        return TrainState(
            learner=learner, actor=acting.init(frame, stream(_CARRY), stream(_ACT), spec.obs_dtype),
            env=env_state, replay=data.init(M),
            keys=Keys(sample=stream(_SAMPLE), shared=jax.random.fold_in(keys[0], _SHARED), eval=stream(_EVAL)),
            counters=Counters(vstep=jnp.zeros((), jnp.int32), chunk=jnp.zeros((), jnp.int32)), reference=ref_params)

    def run_chunk(state: TrainState, hparams: dict) -> tuple[TrainState, dict]:
        M = state.learner.diverged.shape[0]
        hp, ctx = prepare_hparams(hparams, M), ctx_of(state.reference)
        # The aux metrics' names and shapes, from the loss's abstract evaluation (no compute).
        aux_zero = jax.tree.map(lambda x: jnp.zeros((M,), jnp.float32), jax.eval_shape(
            lambda s: learn(s.learner, s.keys, s.replay, s.actor.carry, hp, ctx)[3], state))
        f32 = jnp.zeros((M,), jnp.float32)
        acc0 = dict(ret_sum=f32, ret_count=f32, loss_sum=f32, loss_count=f32, aux_sum=aux_zero)
        (state, acc, eval_acc), _ = jax.lax.scan(
            lambda c, _: vector_step(c, hp, ctx, aux_zero), (state, acc0, evaluator.init(M, ctx.log_ref is not None)),
            None, length=t.chunk_steps // E)
        eval_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(state.keys.eval, state.counters.chunk)
        metrics = {"step": jnp.full((M,), state.counters.vstep * E, jnp.float32),
                   "train_return": ev.mean_or_nan(acc["ret_sum"], acc["ret_count"]),
                   **evaluator.end_of_chunk(eval_acc, state.learner.params, eval_keys, hp, ctx),
                   "loss": ev.mean_or_nan(acc["loss_sum"], acc["loss_count"]),
                   "diverged": state.learner.diverged.astype(jnp.float32)}
        metrics.update({name: ev.mean_or_nan(total, acc["loss_count"]) for name, total in acc["aux_sum"].items()})
        return state._replace(counters=state.counters._replace(chunk=state.counters.chunk + 1)), metrics

    def final_eval(state: TrainState, hparams: dict, env_start_state) -> dict:
        """After training: ⌈eval.final_episodes / E'⌉ episodes on every env of the pool, freshly
        reset by `env_start_state` (klrl.evaluation.make_final_eval)."""
        M = state.learner.diverged.shape[0]
        key = jax.vmap(jax.random.fold_in, in_axes=(0, None))(state.keys.eval, FINAL_EVAL_SALT)
        ret_sum, episodes = final(state.learner.params, key, prepare_hparams(hparams, M), ctx_of(state.reference),
                                  env_start_state)
        return {"step": jnp.full((M,), state.counters.vstep * E, jnp.float32),
                "final_eval_return": ret_sum / jnp.maximum(episodes, 1.0), "final_eval_episodes": episodes}

    def reenter(state: TrainState, env_start_state) -> TrainState:
        """`state` continued on freshly reset envs (a resumed host pool; klrl.acting)."""
        env_state, frame = env_start_state
        return state._replace(env=env_state, actor=acting.reenter(state.actor, frame))

    def train(keys: jax.Array, hparams: dict, ref_params: Any = ()) -> tuple[TrainState, dict]:
        state = init(keys, hparams, ref_params)
        return jax.lax.scan(lambda s, _: run_chunk(s, hparams), state, None, length=t.total_steps // t.chunk_steps)

    return Trainer(init=init, run_chunk=run_chunk, num_chunks=t.total_steps // t.chunk_steps, train=train,
                   spec=spec, traits=traits, reference=reference, env_start=env_start, reenter=reenter,
                   final_eval=final_eval, layout=state_layout, signatures=SIGNATURES)


__all__ = ["FINAL_EVAL_SALT", "COMMON_HPARAMS", "HPARAM_TABLE", "HPARAMS", "ActorState", "Counters", "EnvSource",
           "Keys", "Learner", "SIGNATURES", "StaticConfig", "TrainState", "Trainer", "check_members", "env_source",
           "hparams_used", "make_optimizer", "make_train", "make_update", "over_members", "prepare_hparams",
           "state_layout", "validate"]
