"""`klrl bench atari`: where the time of Atari training goes (issue 9 §4).

For each backend (ale, envpool; one whose package is missing is skipped with the reason) and
population size M, with the learner of experiments/atari100k.toml (M-DQN, Nature CNN, obs
scale 1/255, Huber, batch 32, one update per env step; E = 4 train + 2 concurrent test envs
per member, preset atari100k; only the buffer and the schedule are shrunk):

1. raw pool: random actions through the backend's `env.step` in one jitted `lax.scan` over the
   pool the trainer builds (`make_env(game, M, E + 2, backend)`), timed after a warm-up call.
   Agent-steps count the M·E train envs; env-steps all M·(E + 2).
2. training: `trainer.run_chunk`, compiled once per (backend, M, `train.member_map`), timed on
   chunks before learning starts (acting + env + replay inserts) and after (the same plus E
   updates per vector step); the difference is the update cost. Both member maps: "vmap" (one
   batched program; a vmapped convolution is a grouped one) and "map" (a sequential lax.map).
   `update_alone` is one population update jitted on its own (outside any loop), to show what
   the loop around it costs on this platform. `choice` is the faster map here.
3. replay: bytes per transition of the frame store and the replay memory of the shipped Atari
   experiments, from the arrays of the store's `init()` (jax.eval_shape, nothing allocated).

Optionally (`learn_steps`) a short M-DQN learning run on the same pool (train/eval returns,
loss per chunk), through the engine as `klrl train` drives it, without its output directory.
`budget_s` stops adding population sizes once the time spent plus the last size's time would
exceed it; the JSON is rewritten after every size, so an interrupted run keeps what it has.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from klrl.provenance import provenance

DEFAULT_OUT = os.path.join("results", "bench", "atari.json")
QUICK_OUT = os.path.join("results", "bench", "atari_quick.json")   # --quick never overwrites the real result
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPERIMENT = os.path.join(_ROOT, "experiments", "atari100k.toml")
SHIPPED = ("experiments/atari100k.toml", "experiments/atari_dopamine_mdqn.toml")
BACKENDS = ("ale", "envpool")
MODES = ("vmap", "map")
AGENT = "mdqn"
TEST_ENVS = 2
NO_UPDATE_REPEATS = 3   # chunks timed before learning starts (best of)


def _platform() -> str:
    return jax.devices()[0].platform


def sizes(platform: str, quick: bool) -> dict:
    """Population sizes and per-size lengths. On CPU a Nature-CNN update inside the training
    loop costs ~0.5 s per member (see the JSON), so chunks there are a few vector steps. Quick
    mode (a smoke test) trains on the first installed backend only, one update per vector step,
    and runs map only at M > 1 (map over one member is the vmap program in a loop)."""
    if quick:
        return dict(members=(1, 2), raw_env_steps=48, chunk=lambda m: 4, buffer_size=200, batch_size=4,
                    update_every=4, update_chunks=1, train_backends=1, modes_at_1=("vmap",), alone_min_members=2)
    common = dict(buffer_size=5000, batch_size=None, update_every=None, train_backends=None, modes_at_1=MODES,
                  alone_min_members=1)
    if platform == "cpu":
        return dict(common, members=(1, 4, 16), raw_env_steps=3000, chunk=lambda m: 16 if m == 1 else 4,
                    update_chunks=1)
    return dict(common, members=(1, 4, 16, 64), raw_env_steps=20000, chunk=lambda m: 200, update_chunks=2)


def _load() -> float:
    return os.getloadavg()[0]


def _timed(fn):
    """(result, wall seconds, process CPU seconds) of fn() with its outputs ready."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t0, time.process_time() - c0


def _experiment(overrides: list[str]):
    from klrl.config import load_experiment

    return load_experiment(EXPERIMENT, overrides)


def _member_keys(members: int) -> jax.Array:
    from klrl.population import member_keys

    return jnp.asarray(member_keys(np.arange(members), np.zeros(members)))


def _hparams(exp, members: int) -> dict:
    return {n: jnp.full((members,), v, jnp.float32) for n, v in exp.hparam_base().items()}


# ---- 1. the raw pool ---------------------------------------------------------------------------

def time_raw_pool(backend: str, game: str, members: int, envs: int, env_steps: int, seed: int = 0) -> dict:
    """Random actions through env.step on the [M, E + test] pool, one jitted scan of T steps."""
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

    (state, _), warm_s, _ = _timed(lambda: run(state, jax.random.PRNGKey(seed + 1)))
    load = _load()
    (state, _), seconds, cpu = _timed(lambda: run(state, jax.random.PRNGKey(seed + 2)))
    return {
        "backend": backend, "members": members, "envs_per_member": envs, "test_envs_per_member": TEST_ENVS,
        "vector_steps": T, "seconds": seconds, "cpu_seconds": cpu,
        "build_and_reset_seconds": build_s, "warmup_seconds": warm_s,
        "agent_steps_per_second": members * envs * T / seconds,
        "env_steps_per_second": members * E_all * T / seconds,
        "load_average_1min": [load, _load()],
    }


# ---- 2. training -------------------------------------------------------------------------------

def _bench_overrides(backend: str, game: str, mode: str, chunk: int, size: dict, extra_chunks: int) -> list[str]:
    """The bench's `--set`s on experiments/atari100k.toml, then the caller's (size["overrides"])."""
    E = 4
    out = [f"env.name={game}", f"env.backend={backend}", f"env.num_envs={E}",
           f"train.buffer_size={size['buffer_size']}", f"train.chunk_steps={chunk}",
           # warm-up + NO_UPDATE_REPEATS chunks before learning starts, then the update chunks
           f"train.total_steps={chunk * (1 + NO_UPDATE_REPEATS + extra_chunks)}",
           f"train.learning_starts={chunk * (1 + NO_UPDATE_REPEATS) + E}", f"train.member_map={mode}"]
    out += [f"train.{k}={size[k]}" for k in ("batch_size", "update_every") if size.get(k)]
    return out + list(size.get("overrides", ()))


def time_training(backend: str, game: str, members: int, mode: str, size: dict) -> dict:
    """One compiled run_chunk: best no-update chunk, best update chunk, and their difference."""
    from klrl.train import make_train

    chunk = size["chunk"](members)
    U = size["update_chunks"]
    exp = _experiment(_bench_overrides(backend, game, mode, chunk, size, U))
    cfg = exp.static_config(AGENT)
    E, ue = cfg.env.num_envs, cfg.train.update_every
    keys, hp = _member_keys(members), _hparams(exp, members)
    trainer = make_train(cfg)
    t0 = time.perf_counter()
    env_start = trainer.env_start(keys, 0)
    state = jax.block_until_ready(jax.jit(trainer.init)(keys, hp, (), env_start))
    init_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    step = jax.jit(trainer.run_chunk, donate_argnums=0).lower(state, hp).compile()
    compile_s = time.perf_counter() - t0
    (state, _), warm_s, _ = _timed(lambda: step(state, hp))
    no_upd, no_upd_cpu, upd, upd_cpu, loads, no_update_ok = [], [], [], [], [_load()], True
    for _ in range(NO_UPDATE_REPEATS):
        (state, m), s, c = _timed(lambda: step(state, hp))
        no_update_ok &= bool(np.all(np.isnan(np.asarray(m["loss"]))))   # NaN loss: no update in the chunk
        no_upd.append(s), no_upd_cpu.append(c)
    for _ in range(U):
        (state, m), s, c = _timed(lambda: step(state, hp))
        upd.append(s), upd_cpu.append(c)
    loads.append(_load())
    loss = np.asarray(m["loss"])
    t_no, t_up = min(no_upd), min(upd)
    updates = chunk // ue                                   # per member, per chunk
    upd_only = max(t_up - t_no, 0.0)
    return {
        "backend": backend, "members": members, "member_map": mode, "chunk_env_steps": chunk,
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


def time_update_alone(backend: str, members: int, mode: str, size: dict) -> dict:
    """One population update jitted on its own (no loop around it), on a random batch."""
    from klrl.agents import AGENTS, Context
    from klrl.envs import env_spec, stacked_shape
    from klrl.networks import make_network
    from klrl.replay import Batch
    from klrl.train import HPARAMS, Learner, make_optimizer, make_update, over_members

    exp = _experiment(_bench_overrides(backend, "Pong", mode, 4, size, 1))
    cfg = exp.static_config(AGENT)
    spec = env_spec(cfg.env.name, cfg.env.backend, cfg.env.preset)
    agent, a, B = AGENTS[cfg.agent.name], cfg.agent, cfg.train.batch_size
    net = make_network(a.torso, a.hidden, spec.num_actions, agent.num_outputs(a), a.obs_scale, a.conv)
    obs = jax.random.randint(jax.random.PRNGKey(0), (members, B) + stacked_shape(spec), 0, 256).astype(spec.obs_dtype)
    params = jax.vmap(lambda k: net.init(k, obs[0, 0]))(jax.random.split(jax.random.PRNGKey(1), members))
    opt = jax.vmap(make_optimizer(HPARAMS, cfg.train.max_grad_norm).init)(params)
    learner = Learner(params, params, (), opt, jnp.zeros((members,), bool))
    vec = jnp.zeros((members, B), jnp.float32)
    batch = Batch(obs, vec.astype(jnp.int32), vec, vec, obs, vec + 1.0)
    hp = {**{n: jnp.full((members,), v, jnp.float32) for n, v in HPARAMS.items()}, **_hparams(exp, members)}
    update = over_members(make_update(cfg, net, agent), (0, 0, 0, None), mode)
    fn = jax.jit(lambda lr, b, h: update(lr, b, h, Context())[0])
    learner, warm_s, _ = _timed(lambda: fn(learner, batch, hp))
    _, seconds, cpu = _timed(lambda: fn(learner, batch, hp))
    return {"members": members, "member_map": mode, "batch_size": B, "seconds": seconds, "cpu_seconds": cpu,
            "seconds_per_member_update": seconds / members, "warmup_seconds": warm_s, "load_average_1min": _load()}


def compare_maps(training: list[dict], alone: list[dict], platform: str) -> dict:
    """Per-member update cost of vmap vs map at each M, and the faster one on this platform."""
    rows = []
    base = {(r["backend"], r["member_map"]): r["update_seconds_per_member_update"]
            for r in training if r["members"] == 1}
    for backend in sorted({r["backend"] for r in training}):
        for m in sorted({r["members"] for r in training if r["backend"] == backend}):
            got = {r["member_map"]: r for r in training if r["backend"] == backend and r["members"] == m}
            row = {"backend": backend, "members": m}
            for mode, r in got.items():
                pmu = r["update_seconds_per_member_update"]
                row[f"{mode}_seconds_per_member_update"] = pmu
                row[f"{mode}_agent_steps_per_second"] = r["agent_steps_per_second"]
                b = base.get((backend, mode)) or base.get((backend, "vmap"))
                row[f"{mode}_per_member_cost_vs_1"] = pmu / b if b else None
            if len(got) == 2 and got["map"]["update_seconds_per_member_update"] > 0:
                row["vmap_over_map"] = (got["vmap"]["update_seconds_per_member_update"]
                                        / got["map"]["update_seconds_per_member_update"])
            rows.append(row)
    alone_rows = {}
    for r in alone:
        alone_rows.setdefault(r["members"], {})[r["member_map"]] = r["seconds_per_member_update"]
    # The choice: total update-chunk time over the sizes where both maps ran, largest size first.
    both = [r for r in rows if "vmap_over_map" in r]
    largest = max((r["members"] for r in both), default=None)
    at = [r for r in both if r["members"] == largest]
    choice = None
    if at:
        ratio = float(np.mean([r["vmap_over_map"] for r in at]))
        choice = {"platform": platform, "member_map": "map" if ratio > 1 else "vmap", "members": largest,
                  "vmap_over_map": ratio,
                  "by": "per-member update cost inside the training chunk at the largest M measured with both"}
    return {"rows": rows, "update_alone_seconds_per_member_update": alone_rows, "choice": choice}


# ---- 3. replay memory --------------------------------------------------------------------------

def replay_memory(path: str, overrides: tuple[str, ...] = ()) -> dict:
    """Replay bytes of one experiment's populations (per game of a sweep over env.name: every
    game has the same frame shape), from its store's init() arrays."""
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


# ---- learning run ------------------------------------------------------------------------------

def learning_run(backend: str, game: str, members: int, steps: int, mode: str, chunks: int = 4,
                 extra: tuple[str, ...] = ()) -> dict:
    """A short M-DQN run (atari100k learner, whole-run buffer): per-chunk returns, loss, speed."""
    from klrl.train import make_train

    chunk = max(4, steps // chunks // 4 * 4)
    overrides = [f"env.name={game}", f"env.backend={backend}", f"train.total_steps={chunk * chunks}",
                 f"train.chunk_steps={chunk}", f"train.buffer_size={max(chunk * chunks, 256)}",
                 f"train.learning_starts={min(1600, chunk * chunks // 4)}", f"train.member_map={mode}",
                 *extra]
    exp = _experiment(overrides)
    cfg = exp.static_config(AGENT)
    keys, hp = _member_keys(members), _hparams(exp, members)
    trainer = make_train(cfg)
    t0 = time.perf_counter()
    state = jax.jit(trainer.init)(keys, hp, (), trainer.env_start(keys, 0))
    step = jax.jit(trainer.run_chunk, donate_argnums=0).lower(state, hp).compile()
    compile_s = time.perf_counter() - t0
    rows = []
    for c in range(trainer.num_chunks):
        (state, m), s, _ = _timed(lambda: step(state, hp))
        m = {k: np.asarray(v) for k, v in m.items()}
        med = lambda k: float(np.nanmedian(m[k])) if np.any(np.isfinite(m[k])) else None  # noqa: E731
        rows.append({"chunk": c + 1, "step": int(m["step"].max()), "seconds": s,
                     "agent_steps_per_second": members * chunk / s, "train_return_median": med("train_return"),
                     "eval_return_median": med("eval_return"), "loss_median": med("loss"),
                     "diverged": int(np.sum(m["diverged"]))})
        print(f"  learn chunk {c + 1}/{trainer.num_chunks}: {rows[-1]['agent_steps_per_second']:.0f} agent-steps/s "
              f"train {rows[-1]['train_return_median']} eval {rows[-1]['eval_return_median']} "
              f"loss {rows[-1]['loss_median']}", flush=True)
    return {"backend": backend, "game": game, "members": members, "member_map": mode,
            "env_steps_per_member": chunk * chunks, "learning_starts": cfg.train.learning_starts,
            "init_and_compile_seconds": compile_s, "chunks": rows}


# ---- the benchmark -----------------------------------------------------------------------------

def _available(backend: str) -> str | None:
    from klrl.envs.atari import missing_packages

    missing = missing_packages(backend)
    return f"not installed: {', '.join(missing)}" if missing else None


def _guarded(result: dict, fn, **where):
    """fn(), or None with the error recorded in result["errors"] (one failed size or map, e.g.
    out of memory on a device, does not lose the others)."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001
        result["errors"].append({**where, "error": f"{type(err).__name__}: {err}"[:2000]})
        print(f"error in {where}: {type(err).__name__}: {str(err)[:300]}", flush=True)
        return None
    finally:
        gc.collect()   # the measurement's pool and program go before the next one is built


def _breakdown(r: dict, raw: dict) -> None:
    """Seconds per vector step: env (from the raw pool), acting + replay (the rest of a
    no-update step) and the E updates; `ratio_to_raw` = training / raw agent-steps/s."""
    S = r["vector_steps_per_chunk"]
    env = r["members"] * (r["chunk_env_steps"] // S) / raw["agent_steps_per_second"]
    no_upd = min(r["no_update_chunk_seconds"]) / S
    r["ratio_to_raw"] = r["agent_steps_per_second"] / raw["agent_steps_per_second"]
    r["seconds_per_vector_step"] = {"env": env, "acting_and_replay": max(no_upd - env, 0.0),
                                    "updates": max(min(r["update_chunk_seconds"]) / S - no_upd, 0.0)}


def _table(result: dict) -> str:
    raw = {(r["backend"], r["members"]): r for r in result["raw_pool"]}
    lines = [f"{'backend':8s} {'M':>3s} {'map':5s} {'raw a-s/s':>10s} {'train a-s/s':>11s} {'no-upd a-s/s':>12s} "
             f"{'ratio':>8s} {'s/member-upd':>12s} {'cpu s/m-u':>9s} {'compile s':>9s}"]
    for r in result["training"]:
        rp = raw.get((r["backend"], r["members"]))
        rate = rp["agent_steps_per_second"] if rp else float("nan")
        lines.append(f"{r['backend']:8s} {r['members']:3d} {r['member_map']:5s} {rate:10.0f} "
                     f"{r['agent_steps_per_second']:11.1f} {r['agent_steps_per_second_no_updates']:12.0f} "
                     f"{r['agent_steps_per_second'] / rate:8.1e} {r['update_seconds_per_member_update']:12.3f} "
                     f"{r['update_cpu_seconds_per_member_update']:9.3f} {r['compile_seconds']:9.1f}")
    choice = result["member_map"].get("choice")
    if choice:
        lines.append(f"choice on {choice['platform']}: member_map = {choice['member_map']} "
                     f"(vmap/map per-member update cost {choice['vmap_over_map']:.2f} at M = {choice['members']})")
    for r in result["replay"]:
        if "bytes_per_transition" in r:
            lines.append(f"replay {r['experiment']}: {r['bytes_per_transition']:.0f} B/transition, "
                         f"{r['bytes_per_member'] / 1e9:.2f} GB/member, {r['bytes_per_population'] / 1e9:.2f} GB "
                         f"per population of {max(r['members_per_population'])}")
    return "\n".join(lines)


def bench_atari(out_path: str | None = None, quick: bool = False, members: tuple[int, ...] | None = None,
                backends: tuple[str, ...] = BACKENDS, modes: tuple[str, ...] = MODES, game: str = "Pong",
                budget_s: float | None = None, learn_steps: int = 0, learn_members: int = 4,
                overrides: tuple[str, ...] = ()) -> dict:
    """Run the benchmark and write its JSON (default results/bench/atari.json; with `quick`,
    results/bench/atari_quick.json so a smoke test never replaces the committed measurement).
    `overrides` (`section.key=value`) apply to every trained config, e.g. ("agent.conv=patches",)."""
    start = time.perf_counter()
    platform = _platform()
    size = dict(sizes(platform, quick), overrides=tuple(overrides))
    members = tuple(members or size["members"])
    out_path = out_path or (QUICK_OUT if quick else DEFAULT_OUT)
    prov = provenance()
    skipped = {b: why for b in backends if (why := _available(b))}
    run_backends = tuple(b for b in backends if b not in skipped)
    result = {
        "benchmark": "Atari (atari100k learner, M-DQN Nature CNN): raw emulator pool vs whole training chunks",
        "machine": prov["device"], "versions": prov["versions"], "provenance": prov,
        "platform": platform, "device_kind": jax.devices()[0].device_kind, "quick": quick, "game": game,
        "preset": "atari100k", "envs_per_member": 4, "test_envs_per_member": TEST_ENVS,
        "config": {"experiment": os.path.relpath(EXPERIMENT, _ROOT),
                   "overrides_example": _bench_overrides("ale", game, "vmap", size["chunk"](1), size,
                                                         size["update_chunks"]),
                   "members": list(members), "modes": list(modes), "budget_s": budget_s,
                   "overrides": list(overrides),
                   "raw_env_steps": size["raw_env_steps"], "no_update_repeats": NO_UPDATE_REPEATS,
                   "chunk_env_steps": {str(m): size["chunk"](m) for m in members}},
        "skipped_backends": skipped,
        "notes": ("agent-steps count the M*E train envs; raw = random actions through env.step only; "
                  "training = run_chunk (act on all envs incl. test, env step, replay insert, E updates per vector "
                  "step); update cost = update chunk - no-update chunk (best of each); ratio = training / raw "
                  "agent-steps/s; update_alone = one population update jitted alone, outside any loop"),
        "replay": [], "raw_pool": [], "training": [], "update_alone": [], "member_map": {},
        "sizes_skipped_by_budget": [], "errors": [], "load_average_1min_start": _load(),
    }

    def write():
        result["member_map"] = compare_maps(result["training"], result["update_alone"], platform)
        result["elapsed_seconds"] = time.perf_counter() - start
        result["load_average_1min_end"] = _load()
        os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
        with open(out_path, "w") as f:
            json.dump(result, f, indent=2, default=float)

    for path in SHIPPED:
        try:
            result["replay"].append(replay_memory(path))
        except Exception as err:  # noqa: BLE001  (e.g. ale missing: the shipped files name backend ale)
            result["replay"].append({"experiment": path, "skipped": f"{type(err).__name__}: {err}"})
    write()
    last_size_s = 0.0
    for m in members:
        elapsed = time.perf_counter() - start
        if budget_s is not None and result["training"] and elapsed + last_size_s > budget_s:
            result["sizes_skipped_by_budget"] = [x for x in members if x >= m]
            print(f"budget: {elapsed:.0f}s spent, last size took {last_size_s:.0f}s of {budget_s:.0f}s; "
                  f"stopping before M={m}", flush=True)
            break
        t_size = time.perf_counter()
        modes_m = tuple(x for x in modes if m > 1 or x in size["modes_at_1"])
        if run_backends and m >= size["alone_min_members"]:
            for mode in modes_m:
                r = _guarded(result, lambda: time_update_alone(run_backends[0], m, mode, size),
                             members=m, part=f"update_alone {mode}")
                result["update_alone"] += [r] if r is not None else []
        for i, backend in enumerate(run_backends):
            raw = _guarded(result, lambda: time_raw_pool(backend, game, m, 4, size["raw_env_steps"]),
                           backend=backend, members=m, part="raw_pool")
            if raw is not None:
                result["raw_pool"].append(raw)
                print(f"{backend:8s} M={m:3d} raw  {raw['agent_steps_per_second']:8.0f} agent-steps/s "
                      f"({raw['env_steps_per_second']:.0f} env-steps/s)  load {raw['load_average_1min'][0]:.1f}",
                      flush=True)
            if size["train_backends"] is not None and i >= size["train_backends"]:
                continue
            for mode in modes_m:
                r = _guarded(result, lambda: time_training(backend, game, m, mode, size),
                             backend=backend, members=m, part=f"training {mode}")
                if r is None:
                    continue
                if raw is not None:
                    _breakdown(r, raw)
                result["training"].append(r)
                print(f"{backend:8s} M={m:3d} {mode:4s} {r['agent_steps_per_second']:8.1f} agent-steps/s "
                      f"(no updates {r['agent_steps_per_second_no_updates']:.0f}), "
                      f"{r['update_seconds_per_member_update']:.3f} s/member-update, compile "
                      f"{r['compile_seconds']:.1f}s, load {r['load_average_1min'][-1]:.1f}", flush=True)
        last_size_s = time.perf_counter() - t_size
        write()
    if learn_steps > 0:   # bounded by learn_steps, not by the budget (which is for the sizes)
        choice = compare_maps(result["training"], result["update_alone"], platform).get("choice") or {}
        result["learning"] = (_guarded(result, lambda: learning_run(run_backends[0], game, learn_members, learn_steps,
                                                                    choice.get("member_map", "vmap"), extra=overrides),
                                        part="learning")
                              if run_backends else {"skipped": "no Atari backend installed"})
    write()
    print(_table(result))
    print(f"wrote {out_path} ({time.perf_counter() - start:.0f}s)")
    return result


def parse_members(text: str | None) -> tuple[int, ...] | None:
    """"1,4,16" -> (1, 4, 16); None -> None (the platform's default); ConfigError otherwise."""
    from klrl.errors import ConfigError

    if text is None:
        return None
    try:
        out = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        out = ()
    if not out or min(out) < 1:
        raise ConfigError(f"--members: got {text!r}; allowed comma-separated integers >= 1, e.g. 1,4,16")
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m klrl.bench.atari`: the benchmark with every option (the GPU host script's entry)."""
    p = argparse.ArgumentParser(prog="python -m klrl.bench.atari", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="output JSON path")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    p.add_argument("--members", default=None, help="comma-separated population sizes, e.g. 1,4,16,64")
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: ale,envpool")
    p.add_argument("--modes", default=",".join(MODES), help="train.member_map values: vmap,map")
    p.add_argument("--game", default="Pong")
    p.add_argument("--budget", type=float, default=None, help="seconds; no new population size past it")
    p.add_argument("--learn-steps", type=int, default=0, help="env steps per member of a learning run (0: none)")
    p.add_argument("--learn-members", type=int, default=4)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a key of every trained config (repeatable), e.g. agent.conv=patches")
    a = p.parse_args(argv)
    split = lambda s: tuple(x for x in s.split(",") if x)  # noqa: E731
    bench_atari(out_path=a.out, quick=a.quick, members=parse_members(a.members),
                backends=split(a.backends), modes=split(a.modes), game=a.game, budget_s=a.budget,
                learn_steps=a.learn_steps, learn_members=a.learn_members, overrides=tuple(a.overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
