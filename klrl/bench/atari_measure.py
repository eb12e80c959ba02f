"""The measurements of `klrl bench atari` (klrl.bench.atari runs them and writes the JSON).

- `time_raw_pool`: random actions through the backend's `env.step` on the [M, E + test] pool
  the trainer builds, in one jitted `lax.scan`, timed after a warm-up call;
- `time_training`: the trainer's compiled `run_chunk` (klrl.train.make_train), timed on chunks
  before learning starts (acting + env + replay inserts) and after (the same plus the updates);
  the difference is the update cost;
- `time_update_alone`: one population update on a random batch (klrl.bench.harness's update
  program, built as the trainer builds it), jitted on its own or `scan` of them in one lax.scan;
- `replay_memory`: the replay bytes of an experiment's populations, from its store's arrays;
- `learning_run`: a short M-DQN run through the engine, per-chunk returns and speed.

Pools: `shared_pools()` yields a factory that builds one emulator pool per (name, members,
envs, backend, preset); `pool_source(cfg, make)` hands it to `make_train(cfg, env=...)`, so a
size's rows step the same pool instead of building members·(E + 2) emulators per row.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from klrl.bench.harness import (compile_timed, load_average, population_hparams, seed_keys, timed,
                                update_program)

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPERIMENT = os.path.join(_ROOT, "experiments", "atari100k.toml")
MODES = ("vmap", "map")
AGENT = "mdqn"
ENVS = 4                # train envs per member
TEST_ENVS = 2
NO_UPDATE_REPEATS = 3   # chunks timed before learning starts (best of)
SCAN_UPDATES = 4        # updates in the update-alone `scan` variant


def _experiment(overrides: list[str]):
    from klrl.config import load_experiment

    return load_experiment(EXPERIMENT, overrides)


# ---- the pools ---------------------------------------------------------------------------------

@contextlib.contextmanager
def shared_pools():
    """While open, the yielded `make(name, members, envs, backend, preset)` returns one env per
    (name, members, envs, backend, preset) (each trainer resets it at env_start; the rows run
    one after the other). Closed: the pools are dropped."""
    from klrl.envs import make_env

    cache: dict = {}

    def make(name, members, envs, backend="jax", preset=None):
        key = (name, int(members), int(envs), backend, preset)
        if key not in cache:
            cache[key] = make_env(name, members, envs, backend, **({} if preset is None else {"preset": preset}))
        return cache[key]

    try:
        yield make
    finally:
        cache.clear()
        gc.collect()


def pool_source(cfg, make):
    """The klrl.train.EnvSource of `cfg`'s env whose pools come from `make` (shared_pools())."""
    from klrl.train import env_source

    e = cfg.env
    return env_source(cfg)._replace(make=lambda members, envs: make(e.name, members, envs, e.backend, e.preset))


# ---- 1. the raw pool ---------------------------------------------------------------------------

def time_raw_pool(backend: str, game: str, members: int, envs: int, env_steps: int, seed: int = 0,
                  make_env=None) -> dict:
    """Random actions through env.step on the [M, E + test] pool, one jitted scan of T steps
    (`make_env`: the factory, e.g. shared_pools()'s; default klrl.envs.make_env)."""
    if make_env is None:
        from klrl.envs import make_env

    E_all = envs + TEST_ENVS
    T = max(4, env_steps // (members * E_all))
    t0 = time.perf_counter()
    env = make_env(game, members, E_all, backend, preset="atari100k")
    keys = jax.random.split(jax.random.PRNGKey(seed), members * E_all).reshape(members, E_all, 2)
    state, _ = env.reset(keys)
    jax.block_until_ready(state)
    build_s = time.perf_counter() - t0
    A = env.spec.num_actions

    @jax.jit
    def run(state, key):
        def body(c, _):
            s, k = c
            k, sub = jax.random.split(k)
            s, st = env.step(s, jax.random.randint(sub, env.lead, 0, A))
            return (s, k), jnp.sum(st.raw_reward)

        (s, _), r = jax.lax.scan(body, (state, key), None, length=T)
        return s, jnp.sum(r)

    (state, _), warm_s, _ = timed(lambda: run(state, jax.random.PRNGKey(seed + 1)))
    load = load_average()
    (state, _), seconds, cpu = timed(lambda: run(state, jax.random.PRNGKey(seed + 2)))
    return {
        "backend": backend, "members": members, "envs_per_member": envs, "test_envs_per_member": TEST_ENVS,
        "vector_steps": T, "seconds": seconds, "cpu_seconds": cpu,
        "build_and_reset_seconds": build_s, "warmup_seconds": warm_s,
        "agent_steps_per_second": members * envs * T / seconds,
        "env_steps_per_second": members * E_all * T / seconds,
        "load_average_1min": [load, load_average()],
    }


# ---- 2. training -------------------------------------------------------------------------------

def bench_overrides(backend: str, game: str, mode: str, chunk: int, size: dict, extra_chunks: int,
                    conv: str = "lax") -> list[str]:
    """The bench's `--set`s on experiments/atari100k.toml, then the caller's (size["overrides"])."""
    out = [f"env.name={game}", f"env.backend={backend}", f"env.num_envs={ENVS}", f"agent.conv={conv}",
           f"train.buffer_size={size['buffer_size']}", f"train.chunk_steps={chunk}",
           # warm-up + NO_UPDATE_REPEATS chunks before learning starts, then the update chunks
           f"train.total_steps={chunk * (1 + NO_UPDATE_REPEATS + extra_chunks)}",
           f"train.learning_starts={chunk * (1 + NO_UPDATE_REPEATS) + ENVS}", f"train.member_map={mode}"]
    out += [f"train.{k}={size[k]}" for k in ("batch_size", "update_every") if size.get(k)]
    return out + list(size.get("overrides", ()))


def _chunks(step, state, hp, count: int):
    """`count` timed chunks: (state, last metrics, wall seconds, CPU seconds, all losses NaN)."""
    walls, cpus, no_loss, m = [], [], True, None
    for _ in range(count):
        (state, m), s, c = timed(lambda: step(state, hp))
        no_loss &= bool(np.all(np.isnan(np.asarray(m["loss"]))))   # NaN loss: no update in the chunk
        walls.append(s)
        cpus.append(c)
    return state, m, walls, cpus, no_loss


def time_training(backend: str, game: str, members: int, mode: str, size: dict, conv: str = "lax",
                  make_env=None) -> dict:
    """One compiled run_chunk: best no-update chunk, best update chunk, and their difference
    (`make_env`: the pools' factory, e.g. shared_pools()'s; default the trainer's own)."""
    from klrl.train import make_train

    chunk, U = size["chunk"](members, conv), size["update_chunks"](conv)
    exp = _experiment(bench_overrides(backend, game, mode, chunk, size, U, conv))
    cfg = exp.static_config(AGENT)
    assert cfg.agent.conv == conv, (cfg.agent.conv, conv)
    E, ue = cfg.env.num_envs, cfg.train.update_every
    keys, hp = seed_keys(members), population_hparams(exp.hparam_base(), members)
    trainer = make_train(cfg, env=None if make_env is None else pool_source(cfg, make_env))
    state, init_s, _ = timed(lambda: jax.jit(trainer.init)(keys, hp, (), trainer.env_start(keys, 0)))
    step, compile_s = compile_timed(trainer.run_chunk, state, hp, donate_argnums=0)
    (state, _), warm_s, _ = timed(lambda: step(state, hp))
    loads = [load_average()]
    state, _, no_upd, no_upd_cpu, no_update_ok = _chunks(step, state, hp, NO_UPDATE_REPEATS)
    state, m, upd, upd_cpu, _ = _chunks(step, state, hp, U)
    loads.append(load_average())
    loss = np.asarray(m["loss"])
    t_no, t_up = min(no_upd), min(upd)
    updates = chunk // ue                                   # per member, per chunk
    upd_only = max(t_up - t_no, 0.0)
    return {
        "backend": backend, "members": members, "conv": conv, "member_map": mode, "chunk_env_steps": chunk,
        "vector_steps_per_chunk": chunk // E, "updates_per_member_per_chunk": updates,
        "init_seconds": init_s, "compile_seconds": compile_s, "warmup_chunk_seconds": warm_s,
        "no_update_chunk_seconds": no_upd, "no_update_chunk_cpu_seconds": no_upd_cpu,
        "update_chunk_seconds": upd, "update_chunk_cpu_seconds": upd_cpu,
        "agent_steps_per_second": members * chunk / t_up,
        "agent_steps_per_second_no_updates": members * chunk / t_no,
        "acting_env_replay_seconds_per_vector_step": t_no / (chunk // E),
        "update_seconds_per_member_update": upd_only / (members * updates),
        "update_cpu_seconds_per_member_update": max(min(upd_cpu) - min(no_upd_cpu), 0.0) / (members * updates),
        "update_share": upd_only / t_up,
        "loss_finite": bool(np.all(np.isfinite(loss))), "no_update_chunks_had_no_updates": no_update_ok,
        "load_average_1min": loads,
    }


def time_update_alone(backend: str, members: int, mode: str, size: dict, conv: str = "lax",
                      scan: int = 0) -> dict:
    """One population update on a random batch, jitted on its own (`scan` = 0: variant "alone",
    outside any loop) or `scan` updates inside one lax.scan (variant "scan", the batch a loop
    operand as the trainer's replay is; every update with the same loss keys, which M-DQN does
    not read). Compiled ahead; the run timed once (best of two when under a second)."""
    exp = _experiment(bench_overrides(backend, "Pong", mode, 4, size, 1, conv))
    cfg = exp.static_config(AGENT)
    prog = update_program(cfg, members, exp.hparam_base())

    def fn(learner, batch, hp, keys):
        one = lambda lr: prog.update(lr, batch, hp, keys)[0]  # noqa: E731
        if not scan:
            return one(learner)
        return jax.lax.scan(lambda c, _: (one(c), None), learner, None, length=scan)[0]

    n = scan or 1
    compiled, compile_s = compile_timed(fn, prog.learner, prog.batch, prog.hparams, prog.keys)
    runs, cpus = [], []
    while not runs or (len(runs) < 2 and runs[0] < 1.0):
        _, s, c = timed(lambda: compiled(prog.learner, prog.batch, prog.hparams, prog.keys))
        runs.append(s)
        cpus.append(c)
    seconds = min(runs)
    return {"members": members, "conv": conv, "member_map": mode, "variant": "scan" if scan else "alone",
            "updates": n, "batch_size": cfg.train.batch_size, "seconds": seconds,
            "cpu_seconds": cpus[runs.index(seconds)], "runs_seconds": runs,
            "seconds_per_member_update": seconds / (members * n), "compile_seconds": compile_s,
            "load_average_1min": load_average()}


# ---- 3. replay memory --------------------------------------------------------------------------

def replay_memory(path: str, overrides: tuple[str, ...] = ()) -> dict:
    """Replay bytes of one experiment's populations (per game of a sweep over env.name: every
    game has the same frame shape), from its store's init() arrays (jax.eval_shape: nothing
    allocated)."""
    from klrl import replay as rb
    from klrl.config import load_experiment
    from klrl.envs import env_spec
    from klrl.population import build_populations

    exp = load_experiment(os.path.join(_ROOT, path), list(overrides))
    cfg, t = exp.static, exp.static.train
    spec = env_spec(cfg.env.name, cfg.env.backend, cfg.env.preset)
    sizes_ = [p.size for p in build_populations(exp)]

    def nbytes(members: int) -> int:
        store = rb.make_replay(t.replay_store, obs_shape=spec.obs_shape, obs_dtype=spec.obs_dtype,
                               frame_stack=spec.frame_stack, members=members, envs=cfg.env.num_envs,
                               capacity=t.buffer_size, mode=t.replay_mode)
        shapes = jax.eval_shape(store.init)
        total = sum(int(np.prod(x.shape, dtype=np.int64)) * x.dtype.itemsize for x in jax.tree.leaves(shapes))
        slots = int(np.prod(shapes.data["valid"].shape, dtype=np.int64))     # time slots x env columns (x M)
        return total, slots, store.bytes_per_transition

    one, slots, declared = nbytes(1)
    pop = nbytes(max(sizes_))[0]
    return {"experiment": path, "games": list(exp.envs) or [cfg.env.name], "replay_store": t.replay_store,
            "replay_mode": t.replay_mode, "buffer_size": t.buffer_size, "frame_shape": list(spec.obs_shape),
            "frame_stack": spec.frame_stack, "populations_per_game": len(sizes_), "members_per_population": sizes_,
            "bytes_per_transition": (one - 8) / slots,    # less the two int32 scalars pos, size
            "declared_bytes_per_transition": declared,
            "bytes_per_member": one, "bytes_per_population": pop,
            "gib_per_population": pop / 2**30,
            "note": "populations run one after the other: bytes_per_population is the peak"}


# ---- the learning run --------------------------------------------------------------------------

def _learn_row(c: int, m: dict, seconds: float, members: int, chunk: int) -> dict:
    """One chunk of the learning run: medians over members (None where none is finite)."""
    m = {k: np.asarray(v) for k, v in m.items()}
    med = lambda k: float(np.nanmedian(m[k])) if np.any(np.isfinite(m[k])) else None  # noqa: E731
    return {"chunk": c + 1, "step": int(m["step"].max()), "seconds": seconds,
            "agent_steps_per_second": members * chunk / seconds, "train_return_median": med("train_return"),
            "eval_return_median": med("eval_return"), "loss_median": med("loss"),
            "diverged": int(np.sum(m["diverged"]))}


def learning_run(backend: str, game: str, members: int, steps: int, mode: str, chunks: int = 4,
                 extra: tuple[str, ...] = (), conv: str = "lax") -> dict:
    """A short M-DQN run (atari100k learner, whole-run buffer): per-chunk returns, loss, speed."""
    from klrl.train import make_train

    chunk = max(4, steps // chunks // 4 * 4)
    overrides = [f"env.name={game}", f"env.backend={backend}", f"train.total_steps={chunk * chunks}",
                 f"train.chunk_steps={chunk}", f"train.buffer_size={max(chunk * chunks, 256)}",
                 f"train.learning_starts={min(1600, chunk * chunks // 4)}", f"train.member_map={mode}",
                 f"agent.conv={conv}", *extra]
    exp = _experiment(overrides)
    cfg = exp.static_config(AGENT)
    keys, hp = seed_keys(members), population_hparams(exp.hparam_base(), members)
    trainer = make_train(cfg)
    t0 = time.perf_counter()
    state = jax.jit(trainer.init)(keys, hp, (), trainer.env_start(keys, 0))
    step = jax.jit(trainer.run_chunk, donate_argnums=0).lower(state, hp).compile()
    compile_s = time.perf_counter() - t0
    rows = []
    for c in range(trainer.num_chunks):
        (state, m), s, _ = timed(lambda: step(state, hp))
        rows.append(_learn_row(c, m, s, members, chunk))
        print(f"  learn chunk {c + 1}/{trainer.num_chunks}: {rows[-1]['agent_steps_per_second']:.0f} agent-steps/s "
              f"train {rows[-1]['train_return_median']} eval {rows[-1]['eval_return_median']} "
              f"loss {rows[-1]['loss_median']}", flush=True)
    return {"backend": backend, "game": game, "members": members, "conv": conv, "member_map": mode,
            "env_steps_per_member": chunk * chunks, "learning_starts": cfg.train.learning_starts,
            "init_and_compile_seconds": compile_s, "chunks": rows}
