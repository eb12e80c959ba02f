"""What the benchmarks share: timing, a population's inputs, the time guard, provenance, JSON,
and the two programs they time, built from the engine's public pieces.

Timing: compilation is timed apart from the runs (`compile_timed`: `jax.jit(fn).lower(*args)
.compile()`); a run is timed with its outputs ready (`timed`), and a bench keeps the best of
several (`best_of`), since on a shared machine a run can only be slowed by others.

Programs:
- `update_program(cfg, members)`: ONE population gradient update on a synthetic replay batch,
  built as `klrl.train.make_train` builds it: the network is `agent.network(cfg, A)`, the
  learner `klrl.learner.init_learner` (the previous target kept iff the agent lists
  "prev_target" in `extra_nets`), the update `klrl.learner.make_update` applied over members by
  `klrl.train.over_members` in `train.member_map`, one loss key per member;
- `compile_training(cfg, keys, hparams, env=)`: the whole run `make_train(cfg, env=env).train`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from klrl.provenance import provenance

# ---- timing ------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall seconds, process CPU seconds) of `fn()` with its outputs ready."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t0, time.process_time() - c0


def compile_timed(fn: Callable, *args, **jit_kwargs) -> tuple[Any, float]:
    """(`jax.jit(fn, **jit_kwargs).lower(*args).compile()`, its seconds): compilation alone."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn, **jit_kwargs).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def best_of(call: Callable[[], Any], repeats: int) -> tuple[list[float], list[float], Any]:
    """Wall and process-CPU seconds of `repeats` calls of `call()`, and the last result."""
    runs, cpu, out = [], [], None
    for _ in range(repeats):
        out, s, c = timed(call)
        runs.append(s)
        cpu.append(c)
    return runs, cpu, out


def load_average() -> float:
    """The 1-minute load average: how shared the machine was around a measurement."""
    return os.getloadavg()[0]


# ---- a population's inputs ---------------------------------------------------------------------


def fold_in_keys(members: int, seed: int = 0) -> jax.Array:
    """uint32 [M, 2]: fold_in(PRNGKey(seed), m) for member m."""
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(jnp.arange(members))


def seed_keys(members: int) -> jax.Array:
    """uint32 [M, 2]: the keys `klrl train` gives members with seeds 0..M−1 at grid point 0."""
    from klrl.population import member_keys

    return jnp.asarray(member_keys(np.arange(members), np.zeros(members)))


def population_hparams(hparams: dict[str, float], members: int) -> dict[str, jax.Array]:
    """name -> float32 [M], every member with the same value."""
    return {k: jnp.full((members,), v, jnp.float32) for k, v in hparams.items()}


# ---- the time guard ----------------------------------------------------------------------------


class Budget:
    """The time guard: `seconds` from its creation (or from `start`, a time.perf_counter()
    value); None never stops anything."""

    def __init__(self, seconds: float | None, start: float | None = None):
        self.seconds, self.start = seconds, time.perf_counter() if start is None else start

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, estimate: float | None) -> bool:
        """True while the budget is not spent and the estimate (if any) ends within it."""
        if self.seconds is None:
            return True
        return self.elapsed() + (estimate or 0.0) < self.seconds


# ---- provenance and JSON -----------------------------------------------------------------------


def header(benchmark: str, quick: bool) -> dict:
    """The fields a bench JSON starts with: what it measured, where and with what it ran."""
    prov = provenance()
    return {"benchmark": benchmark, "machine": prov["device"], "versions": prov["versions"], "provenance": prov,
            "platform": prov["device"]["platform"], "device_kind": prov["device"]["device_kind"], "quick": quick}


def write_json(path: str, result: dict) -> None:
    """Write `result` to `path` (folders created; numpy scalars as floats)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2, default=float)


# ---- the programs ------------------------------------------------------------------------------


class UpdateProgram(NamedTuple):
    """One population update `update(learner, batch, hp, keys) -> (learner, loss [M], aux)` and
    inputs to run it on."""

    update: Callable
    learner: Any
    batch: Any
    hparams: dict
    keys: jax.Array


def population_update(cfg, network, agent, shared_batch: bool = False) -> Callable:
    """`(learner, batch, hp, keys, ctx) -> (learner, loss, aux)` for every member: the trainer's
    per-member step (klrl.learner.make_update) over members in `cfg.train.member_map`; the batch
    has a member axis unless it is shared."""
    from klrl.learner import make_update
    from klrl.train import over_members

    return over_members(make_update(cfg, network, agent), (0, None if shared_batch else 0, 0, 0, None),
                        cfg.train.member_map)


def synthetic_batch(spec, members: int | None, batch_size: int, key: jax.Array):
    """A replay Batch of random observations (integers in [0, 256) in the env's obs dtype),
    action 0, reward 0, not terminal, weight 1; [M, B, ...], or [B, ...] when `members` is None."""
    from klrl.envs import stacked_shape
    from klrl.replay import Batch

    lead = (batch_size,) if members is None else (members, batch_size)
    obs = jax.random.randint(key, lead + stacked_shape(spec), 0, 256).astype(spec.obs_dtype)
    vec = jnp.zeros(lead, jnp.float32)
    return Batch(obs, vec.astype(jnp.int32), vec, vec, obs, vec + 1.0)


def update_program(cfg, members: int, hparams: dict[str, float] | None = None, seed: int = 0,
                   agent=None, network=None) -> UpdateProgram:
    """One population update of `cfg`'s agent (or `agent`, `network`) on a synthetic batch, with
    the learner, per-member loss keys and hyperparameters (defaults, then `hparams`) to run it on."""
    from klrl.agents import AGENTS, Context
    from klrl.envs import stacked_shape
    from klrl.learner import init_learner
    from klrl.train import env_source, prepare_hparams

    agent = AGENTS[cfg.agent.name] if agent is None else agent
    spec = env_source(cfg).spec
    network = agent.network(cfg, spec.num_actions) if network is None else network
    shared = cfg.train.replay_mode == "shared"
    key = jax.random.PRNGKey(seed)
    learner = init_learner(network, jax.random.split(jax.random.fold_in(key, 1), members),
                           jnp.zeros(stacked_shape(spec), spec.obs_dtype), cfg.train.max_grad_norm,
                           keep_prev="prev_target" in agent.extra_nets)
    batch = synthetic_batch(spec, None if shared else members, cfg.train.batch_size, jax.random.fold_in(key, 0))
    step = population_update(cfg, network, agent, shared)
    return UpdateProgram(update=lambda lr, b, hp, keys: step(lr, b, hp, keys, Context()), learner=learner,
                         batch=batch, hparams=prepare_hparams(hparams or {}, members),
                         keys=jax.random.split(jax.random.fold_in(key, 2), members))


def update_flops(cfg, members: int) -> float:
    """FLOPs of one population gradient update (XLA's cost analysis of the compiled program).
    A whole-run program's cost analysis counts a loop body once, not per iteration, so a bench
    computes its achieved rate from this count times the number of updates."""
    prog = update_program(cfg, members)
    compiled, _ = compile_timed(prog.update, prog.learner, prog.batch, prog.hparams, prog.keys)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def compile_training(cfg, keys: jax.Array, hparams: dict, env=None) -> tuple[Any, float]:
    """(the compiled whole run `make_train(cfg, env=env).train(keys, hparams)`, compile seconds)."""
    from klrl.train import make_train

    return compile_timed(make_train(cfg, env=env).train, keys, hparams)


__all__ = ["Budget", "UpdateProgram", "best_of", "compile_timed", "compile_training", "fold_in_keys", "header",
           "load_average", "population_hparams", "population_update", "seed_keys", "synthetic_batch", "timed",
           "update_flops", "update_program", "write_json"]
