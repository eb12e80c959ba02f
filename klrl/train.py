"""The whole training run of a population as one pure function.

`make_train(StaticConfig)` returns a `Trainer` whose `train(keys, hparams)` is
`init` followed by `lax.scan(run_chunk)` over `num_chunks` chunks; each chunk is a
`lax.scan` over vector steps (act, env step, replay insert, gradient update, target update,
ε schedule) followed by greedy evaluation episodes. No Python runs in the hot loop.
The interface is fixed by .notes/train_contract.md (keys [M, 2], hparams name -> [M]).

Population: every per-member array has the member axis M first. The learner (acting,
loss, optimizer) is `vmap`ped over members; the environments are stepped as one batch
[M, E] through the `klrl.envs.VecEnv` interface (so a non-vmappable envpool pool can sit
behind it); all members advance in lockstep, so step counters, the replay write position
and the "learn now?" / "update the target now?" decisions are scalars shared by the
population (real `lax.cond`s, not per-member selects).

Randomness: each member key is split into independent streams (init, acting+env,
replay sampling, evaluation, env reset) with `fold_in`, so members never share
initialisation or exploration noise. In `shared` replay mode the sampling indices come from
one population stream (derived from member 0's key), so every member sees the same batch.

Divergence: an update whose loss or gradient is non-finite is not applied; the member is
flagged `diverged` and its parameters stay frozen (finite), the others are unaffected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from klrl import reference
from klrl import replay as rb
from klrl.agents import AGENTS, LOSSES, Nets, Transition
from klrl.envs import ENVS, make_env
from klrl.errors import ConfigError
from klrl.networks import make_network

TARGET_UPDATES = ("hard", "polyak")
ACTING = ("epsilon_greedy", "softmax")


@dataclass(frozen=True)
class StaticConfig:
    """Everything that changes shapes or the compiled program (hashable)."""

    env: str = "CartPole-v1"
    agent: str = "mdqn"
    num_envs: int = 10
    total_steps: int = 500_000
    chunk_steps: int = 50_000
    buffer_size: int = 10_000
    batch_size: int = 128
    learning_starts: int = 10_000
    train_every: int = 1
    target_update_every: int = 500
    hidden: tuple[int, ...] = (120, 84)
    loss: str = "huber"
    target_update: str = "hard"
    acting: str = "epsilon_greedy"
    replay_mode: str = "per-member"
    num_atoms: int = 51
    v_min: float = -10.0
    v_max: float = 10.0
    eval_episodes: int = 10
    consistent_weight: bool = False
    # qsharp: the fixed reference policy π_ref (klrl.reference) and Q♯'s critic training mode
    # (klrl.agents.qsharp). With a reference set, every agent also reports `kl_ref`.
    reference: str = "none"              # none | uniform | softmax | epsilon_greedy
    reference_run: str = ""              # `klrl train` run directory holding Q_ref's checkpoint
    reference_member: int = 0            # member of that run (config.json `members`)
    reference_temperature: float = 1.0   # softmax: π_ref = softmax(Q_ref/T)
    reference_epsilon: float = 0.1       # epsilon_greedy: π_ref = (1−ε)·greedy + ε/A
    qsharp_mode: str = "td"              # td | rollout
    qsharp_switch_horizon: int = 0       # rollout: h ~ U{0..H−1}; 0 = the env's time limit


# Traced hyperparameters (float32 [M] each) and their defaults.
COMMON_HPARAMS: dict[str, float] = {
    "learning_rate": 2.5e-4,
    "gamma": 0.99,
    "adam_eps": 1e-8,
    "epsilon_start": 1.0,
    "epsilon_end": 0.05,
    "epsilon_fraction": 0.5,    # of total_steps, linear decay from step 0
    "polyak": 0.005,            # target += polyak·(online − target) per update (target_update=polyak)
    "softmax_temperature": 0.1,  # acting="softmax": a ~ softmax(q / temperature)
}
AGENT_HPARAMS: dict[str, float] = {
    "alpha": 0.9,          # Munchausen / AL coefficient (M-DQN paper)
    "tau": 0.03,           # entropy temperature (M-DQN paper)
    "clip_min": -1.0,      # l0, the lower clip of the Munchausen bonus
    "entropic_index": 2.0,  # Tsallis q of MVI(q); 2 = sparsemax
    "lam": 0.27,           # KL weight λ of mdkl (β = λ/(λ+τ) = 0.9 with τ = 0.03)
    "eta": 1.0,            # qsharp: KL weight η toward the fixed π_ref (qsharp, qsharp_cd, kl_prior)
}
HPARAMS: dict[str, float] = {**COMMON_HPARAMS, **AGENT_HPARAMS}


def hparams_used(cfg: StaticConfig) -> tuple[str, ...]:
    """The traced hyperparameters that influence a run with this static config."""
    names = ["learning_rate", "gamma", "adam_eps"]
    if getattr(AGENTS[cfg.agent], "behaviour", None) is not None:
        pass  # qsharp: the agent acts with its own (guided) policy, not ε-greedy/softmax
    elif cfg.acting == "epsilon_greedy":
        names += ["epsilon_start", "epsilon_end", "epsilon_fraction"]
    else:
        names += ["softmax_temperature"]
    if cfg.target_update == "polyak":
        names += ["polyak"]
    return tuple(names) + AGENTS[cfg.agent].hparams


class TrainState(NamedTuple):
    """Full learner state; jax arrays only (orbax-saveable). Member axis M leads."""

    params: Any
    target_params: Any
    prev_target_params: Any   # previous target network (used by mdkl; kept for all agents)
    opt_state: Any
    replay: rb.ReplayState
    env_state: Any            # [M, E, ...]
    obs: jax.Array            # [M, E, *obs_shape]
    act_key: jax.Array        # [M, 2] acting + env-step stream
    sample_key: jax.Array     # [M, 2] replay sampling stream (per-member mode)
    shared_sample_key: jax.Array  # [2] population sampling stream (shared mode)
    eval_key: jax.Array       # [M, 2]
    vstep: jax.Array          # int32 scalar: vector steps done (env steps = vstep·E)
    chunk: jax.Array          # int32 scalar: chunks done
    diverged: jax.Array       # bool [M]
    agent_state: Any = None   # qsharp: per-member carry of an agent's Behaviour ([M] zeros when unused)


class Trainer(NamedTuple):
    init: Callable[[jax.Array, dict], TrainState]
    run_chunk: Callable[[TrainState, dict], tuple[TrainState, dict]]
    num_chunks: int
    train: Callable[[jax.Array, dict], tuple[TrainState, dict]]


# Key streams split from each member key.
_INIT, _ACT, _SAMPLE, _EVAL, _RESET, _SHARED = range(6)
_CARRY = 6   # qsharp: an agent Behaviour's carry (e.g. rollout switch steps)


def _check(cond: bool, field: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"{field}: got {value!r}; allowed {allowed}")


def validate(cfg: StaticConfig) -> None:
    """Structural checks of a static config (ConfigError, one line)."""
    _check(cfg.env in ENVS, "env", cfg.env, ", ".join(ENVS))
    _check(cfg.agent in AGENTS, "agent", cfg.agent, ", ".join(AGENTS))
    _check(cfg.loss in LOSSES, "loss", cfg.loss, ", ".join(LOSSES))
    _check(cfg.target_update in TARGET_UPDATES, "target_update", cfg.target_update, ", ".join(TARGET_UPDATES))
    _check(cfg.acting in ACTING, "acting", cfg.acting, ", ".join(ACTING))
    _check(cfg.replay_mode in rb.MODES, "replay_mode", cfg.replay_mode, ", ".join(rb.MODES))
    for name in ("num_envs", "total_steps", "chunk_steps", "buffer_size", "batch_size", "train_every",
                 "target_update_every", "eval_episodes"):
        v = getattr(cfg, name)
        _check(isinstance(v, int) and v >= 1, name, v, "an integer >= 1")
    _check(isinstance(cfg.learning_starts, int) and cfg.learning_starts >= 0, "learning_starts",
           cfg.learning_starts, "an integer >= 0")
    _check(cfg.total_steps % cfg.chunk_steps == 0, "chunk_steps", cfg.chunk_steps,
           f"a divisor of total_steps={cfg.total_steps}")
    _check(cfg.chunk_steps % cfg.num_envs == 0, "chunk_steps", cfg.chunk_steps,
           f"a multiple of num_envs={cfg.num_envs}")
    _check(len(cfg.hidden) >= 1 and all(isinstance(h, int) and h >= 1 for h in cfg.hidden), "hidden",
           cfg.hidden, "a non-empty tuple of integers >= 1")
    _check(cfg.buffer_size >= cfg.num_envs, "buffer_size", cfg.buffer_size, f">= num_envs={cfg.num_envs}")
    if AGENTS[cfg.agent].num_outputs(cfg) > 1:  # categorical critics (c51, qsharp, qsharp_cd)
        _check(isinstance(cfg.num_atoms, int) and cfg.num_atoms >= 2, "num_atoms", cfg.num_atoms, "an integer >= 2")
        _check(cfg.v_min < cfg.v_max, "v_min", cfg.v_min, f"< v_max={cfg.v_max}")
    # qsharp: reference policy (reads the reference run's config.json only) and agent checks.
    reference.check(cfg)
    agent_check = getattr(AGENTS[cfg.agent], "validate", None)
    if agent_check is not None:
        agent_check(cfg)


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


def epsilon(env_steps: jax.Array, hp: dict, total_steps: int) -> jax.Array:
    """Linear ε schedule: ε_start → ε_end over epsilon_fraction·total_steps env steps."""
    duration = jnp.maximum(hp["epsilon_fraction"] * total_steps, 1.0)
    frac = jnp.clip(env_steps.astype(jnp.float32) / duration, 0.0, 1.0)
    return hp["epsilon_start"] + frac * (hp["epsilon_end"] - hp["epsilon_start"])


def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def make_train(cfg: StaticConfig) -> Trainer:
    """Build the pure training program for `cfg` (see module docstring)."""
    validate(cfg)
    env = make_env(cfg.env)
    spec = env.spec
    agent = AGENTS[cfg.agent]
    net = make_network(spec, cfg.hidden, agent.num_outputs(cfg))
    num_actions = spec.num_actions
    E = cfg.num_envs
    steps_per_chunk = cfg.chunk_steps // E
    num_chunks = cfg.total_steps // cfg.chunk_steps
    shared = cfg.replay_mode == "shared"

    def q_values(params, obs):
        return agent.q_values(net.apply(params, obs), cfg)

    # qsharp: extension points for agents that act with their own policy (klrl.agents.qsharp):
    # `behaviour` (per-member carry in TrainState.agent_state, acting, per-step bookkeeping,
    # optional own minibatch sampling) and `policy_logits` (their policy in evaluation).
    # With a reference policy configured, evaluation also measures KL(π‖π_ref) per step.
    behaviour = agent.behaviour(cfg, spec) if getattr(agent, "behaviour", None) is not None else None
    policy_logits = getattr(agent, "policy_logits", None)
    ref = reference.for_config(cfg)

    # ---- acting (one member) -------------------------------------------------------------
    def act(params, obs, key, hp, env_steps):
        """Actions [E] for one member's envs: ε-greedy (floor(u·A), not randint) or softmax."""
        q = q_values(params, obs)
        k1, k2 = jax.random.split(key)
        if cfg.acting == "epsilon_greedy":
            explore = jax.random.uniform(k1, q.shape[:-1]) < epsilon(env_steps, hp, cfg.total_steps)
            random_a = jnp.minimum((jax.random.uniform(k2, q.shape[:-1]) * num_actions).astype(jnp.int32),
                                   num_actions - 1)
            return jnp.where(explore, random_a, jnp.argmax(q, axis=-1).astype(jnp.int32))
        return jax.random.categorical(k1, q / hp["softmax_temperature"], axis=-1).astype(jnp.int32)

    # ---- learning (one member) -----------------------------------------------------------
    def update(params, target, prev_target, opt_state, batch, hp, diverged):
        def loss_fn(p):
            nets = Nets(
                online=lambda o: net.apply(p, o),
                online_frozen=lambda o: net.apply(jax.lax.stop_gradient(p), o),
                target=lambda o: net.apply(target, o),
                prev_target=lambda o: net.apply(prev_target, o),
            )
            return agent.loss(nets, batch, hp, cfg)

        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, new_opt = optax.scale_by_adam(eps=hp["adam_eps"]).update(grads, opt_state)
        new_params = jax.tree.map(lambda p, u: p - hp["learning_rate"] * u, params, updates)
        ok = jnp.isfinite(loss) & _all_finite(grads)
        apply = ok & ~diverged
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)
        params, opt_state = keep(new_params, params), keep(new_opt, opt_state)
        if cfg.target_update == "polyak":
            target = jax.tree.map(lambda t, p: t + hp["polyak"] * (p - t), target, params)
        return params, target, opt_state, loss, diverged | ~ok

    member_update = jax.vmap(update, in_axes=(0, 0, 0, 0, None if shared else 0, 0, 0))

    def learn(state: TrainState, hp):
        if shared:
            key, sub = jax.random.split(state.shared_sample_key)
            data, _ = rb.sample(state.replay, sub, cfg.batch_size, cfg.replay_mode)
            sample_key = state.sample_key
            shared_key = key
        else:
            split = jax.vmap(jax.random.split)(state.sample_key)
            sample_key, subs = split[:, 0], split[:, 1]
            if behaviour is not None and behaviour.sample is not None:   # qsharp: e.g. rollout labels
                data = jax.vmap(behaviour.sample, in_axes=(0, 0, None))(state.agent_state, subs, cfg.batch_size)
            else:
                data, _ = rb.sample(state.replay, subs, cfg.batch_size, cfg.replay_mode)
            shared_key = state.shared_sample_key
        params, target, opt_state, loss, diverged = member_update(
            state.params, state.target_params, state.prev_target_params, state.opt_state, data, hp,
            state.diverged)
        state = state._replace(params=params, target_params=target, opt_state=opt_state, diverged=diverged,
                               sample_key=sample_key, shared_sample_key=shared_key)
        return state, loss

    def update_target(state: TrainState) -> TrainState:
        """Every target_update_every env steps: π₋ ← target, and (hard mode) target ← online."""
        new_target = state.params if cfg.target_update == "hard" else state.target_params
        return state._replace(prev_target_params=state.target_params, target_params=new_target)

    # ---- one vector step of the whole population ----------------------------------------
    def vector_step(state: TrainState, hp):
        env_steps = state.vstep * E
        split = jax.vmap(lambda k: jax.random.split(k, 3))(state.act_key)        # [M, 3, 2]
        act_key, k_act, k_env = split[:, 0], split[:, 1], split[:, 2]
        if behaviour is None:
            actions = jax.vmap(act, in_axes=(0, 0, 0, 0, None))(state.params, state.obs, k_act, hp, env_steps)
        else:  # qsharp: the agent's own policy (may depend on its carry)
            actions = jax.vmap(lambda p, o, c, k, h: behaviour.act(net.apply(p, o), o, c, k, h))(
                state.params, state.obs, state.agent_state, k_act, hp)
        env_keys = jax.vmap(lambda k: jax.random.split(k, E))(k_env)            # [M, E, 2]
        env_state, st = env.step(state.env_state, actions, env_keys)
        if behaviour is not None:
            k_obs = jax.vmap(lambda k: jax.random.fold_in(k, 1))(k_act)
            state = state._replace(agent_state=jax.vmap(behaviour.observe)(
                state.agent_state, state.obs, actions, st.reward, st.terminated | st.truncated, k_obs))
        items = Transition(obs=state.obs, action=actions, reward=st.reward,
                           terminated=st.terminated.astype(jnp.float32), next_obs=st.next_obs)
        replay = rb.add(state.replay, items, cfg.replay_mode)
        vstep = state.vstep + 1
        state = state._replace(env_state=env_state, obs=st.obs, replay=replay, act_key=act_key, vstep=vstep)

        M = actions.shape[0]
        learn_now = (vstep * E >= cfg.learning_starts) & (vstep % cfg.train_every == 0)
        state, loss = jax.lax.cond(learn_now, learn, lambda s, h: (s, jnp.full((M,), jnp.nan, jnp.float32)),
                                   state, hp)
        crossed = (vstep * E) // cfg.target_update_every != ((vstep - 1) * E) // cfg.target_update_every
        state = jax.lax.cond(crossed, update_target, lambda s: s, state)

        done = st.terminated | st.truncated
        stats = dict(
            ret_sum=jnp.sum(jnp.where(done, st.episode_return, 0.0), axis=1),
            ret_count=jnp.sum(done, axis=1).astype(jnp.float32),
            loss_sum=jnp.where(learn_now, loss, 0.0),
            loss_count=jnp.full((M,), learn_now, jnp.float32),
        )
        return state, stats

    # ---- greedy evaluation ----------------------------------------------------------------
    def eval_actions(params, obs, key, hp):
        """Evaluation actions [M, n] and per-step KL(π‖π_ref) [M, n] (zeros without a reference).

        Greedy for ordinary agents; agents with `policy_logits` (qsharp) are evaluated with
        their own stochastic policy, sampled. The KL is that of the policy acted with
        (greedy: −ln π_ref(argmax)).
        """
        if policy_logits is None:
            q = jax.vmap(q_values)(params, obs)
            actions = jnp.argmax(q, axis=-1).astype(jnp.int32)
            logits = jnp.where(jax.nn.one_hot(actions, num_actions, dtype=bool), 0.0, -jnp.inf)
        else:
            logits = jax.vmap(lambda p, o, h: policy_logits(net.apply(p, o), o, h, cfg))(params, obs, hp)
            actions = jax.vmap(lambda k, lg: jax.random.categorical(k, lg, axis=-1))(key, logits).astype(jnp.int32)
        kl = (reference.kl_to_reference(logits, ref.log_probs(obs)) if ref is not None
              else jnp.zeros(actions.shape, jnp.float32))
        return actions, kl

    def evaluate(params, eval_key, hp):
        """Mean undiscounted return of `eval_episodes` greedy episodes per member (parallel envs),
        and (qsharp) the mean per-step KL(π‖π_ref) along them."""
        n = cfg.eval_episodes
        M = eval_key.shape[0]
        split = jax.vmap(lambda k: jax.random.split(k, n + 1))(eval_key)        # [M, n+1, 2]
        env_state, obs = env.reset(split[:, 1:])

        def cond(c):
            t, done = c[0], c[3]
            return (t < spec.max_episode_steps) & ~jnp.all(done)

        def body(c):
            t, env_state, obs, done, ret, key, kl_sum, kl_n = c
            s = jax.vmap(lambda k: jax.random.split(k, n + 1))(key)
            # Policy-sampling key: fold_in(key, n+1) is outside split(key, n+1) = fold_in(key,
            # 0..n), so it never coincides with an env key or the carried key s[:, 0].
            k_pol = jax.vmap(lambda k: jax.random.fold_in(k, n + 1))(key)
            actions, kl = eval_actions(params, obs, k_pol, hp)
            env_state, st = env.step(env_state, actions, s[:, 1:])
            ret = ret + jnp.where(done, 0.0, st.reward)
            kl_sum, kl_n = kl_sum + jnp.where(done, 0.0, kl), kl_n + jnp.where(done, 0.0, 1.0)
            return t + 1, env_state, st.obs, done | st.terminated | st.truncated, ret, s[:, 0], kl_sum, kl_n

        zeros = jnp.zeros((M, n), jnp.float32)
        init = (jnp.zeros((), jnp.int32), env_state, obs, jnp.zeros((M, n), bool), zeros, split[:, 0], zeros, zeros)
        out = jax.lax.while_loop(cond, body, init)
        kl_per_step = jnp.sum(out[6], axis=1) / jnp.maximum(jnp.sum(out[7], axis=1), 1.0)
        return jnp.mean(out[4], axis=1), kl_per_step

    # ---- the contract's functions ----------------------------------------------------------
    def init(keys: jax.Array, hparams: dict) -> TrainState:
        keys = jnp.asarray(keys, jnp.uint32)
        M = keys.shape[0]
        prepare_hparams(hparams, M)  # shape/name check only
        stream = lambda i: jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)
        dummy = jnp.zeros(spec.obs_shape, spec.obs_dtype)
        params = jax.vmap(lambda k: net.init(k, dummy))(stream(_INIT))
        opt_state = jax.vmap(optax.scale_by_adam().init)(params)
        reset_keys = jax.vmap(lambda k: jax.random.split(k, E))(stream(_RESET))
        env_state, obs = env.reset(reset_keys)
        example = Transition(obs=dummy, action=jnp.zeros((), jnp.int32), reward=jnp.zeros((), jnp.float32),
                             terminated=jnp.zeros((), jnp.float32), next_obs=dummy)
        replay = rb.init(example, cfg.buffer_size, members=M, mode=cfg.replay_mode)
        return TrainState(
            params=params, target_params=params, prev_target_params=params, opt_state=opt_state,
            replay=replay, env_state=env_state, obs=obs, act_key=stream(_ACT), sample_key=stream(_SAMPLE),
            shared_sample_key=jax.random.fold_in(keys[0], _SHARED), eval_key=stream(_EVAL),
            vstep=jnp.zeros((), jnp.int32), chunk=jnp.zeros((), jnp.int32), diverged=jnp.zeros((M,), bool),
            agent_state=(jax.vmap(behaviour.init, in_axes=(0, None))(stream(_CARRY), E) if behaviour is not None
                         else jnp.zeros((M,), jnp.int32)))

    def run_chunk(state: TrainState, hparams: dict) -> tuple[TrainState, dict]:
        M = state.diverged.shape[0]
        hp = prepare_hparams(hparams, M)
        state, stats = jax.lax.scan(lambda s, _: vector_step(s, hp), state, None, length=steps_per_chunk)
        stats = jax.tree.map(lambda x: jnp.sum(x, axis=0), stats)
        eval_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(state.eval_key, state.chunk)
        eval_return, eval_kl = evaluate(state.params, eval_keys, hp)
        nan = jnp.float32(jnp.nan)
        metrics = {
            "step": jnp.full((M,), state.vstep * E, jnp.float32),
            "train_return": jnp.where(stats["ret_count"] > 0, stats["ret_sum"] / jnp.maximum(stats["ret_count"], 1), nan),
            "eval_return": eval_return,
            "loss": jnp.where(stats["loss_count"] > 0, stats["loss_sum"] / jnp.maximum(stats["loss_count"], 1), nan),
            "diverged": state.diverged.astype(jnp.float32),
        }
        if ref is not None:   # qsharp: per-step KL(π‖π_ref) along the evaluation episodes
            metrics["kl_ref"] = eval_kl
        return state._replace(chunk=state.chunk + 1), metrics

    def train(keys: jax.Array, hparams: dict) -> tuple[TrainState, dict]:
        state = init(keys, hparams)
        return jax.lax.scan(lambda s, _: run_chunk(s, hparams), state, None, length=num_chunks)

    return Trainer(init=init, run_chunk=run_chunk, num_chunks=num_chunks, train=train)


__all__ = ["AGENT_HPARAMS", "COMMON_HPARAMS", "HPARAMS", "StaticConfig", "TrainState", "Trainer",
           "epsilon", "hparams_used", "make_train", "prepare_hparams", "validate"]

