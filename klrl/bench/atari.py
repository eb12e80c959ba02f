"""`klrl bench atari`: where the time of Atari training goes (issue 9 §4).

For each backend (ale, envpool; one whose package is missing is skipped with the reason),
population size M and convolution (`agent.conv`: `lax` = XLA's convolution, `patches` = the
same layer as strided slices + one matmul, klrl.networks), with the learner of
experiments/atari100k.toml (M-DQN, Nature CNN, obs scale 1/255, Huber, batch 32, one update per
env step; E = 4 train + 2 concurrent test envs per member, preset atari100k; only the buffer and
the schedule are shrunk):

1. raw pool: random actions through the backend's `env.step` in one jitted `lax.scan` over the
   pool the trainer builds (`make_env(game, M, E + 2, backend)`), timed after a warm-up call.
   Agent-steps count the M·E train envs; env-steps all M·(E + 2). The pool is built once per
   (backend, M) and shared by that size's training rows (their `init_seconds` exclude it).
2. training: `trainer.run_chunk`, compiled once per (backend, M, conv, `train.member_map`),
   timed on chunks before learning starts (acting + env + replay inserts) and after (the same
   plus E updates per vector step); the difference is the update cost. Both member maps: "vmap"
   (one batched program; a vmapped convolution is a grouped one) and "map" (a sequential
   lax.map). Chunk lengths depend on the conv: on XLA:CPU a `lax` convolution inside the
   trainer's loop leaves its fast path (jax-ml/jax#12868; ~0.5-1.7 s per member-update), so its
   rows time one update chunk of one vector step (E updates per member); `patches` rows (~10x
   cheaper there) time two longer ones (best of).
   `update_alone` is one population update on a random batch, per conv and member map, in two
   variants: `alone` (jitted on its own, outside any loop) and `scan` (SCAN_UPDATES updates in
   one `lax.scan`, as the trainer runs them inside its scan over vector steps); the scan/alone
   ratio shows what the loop costs on this platform. Compiled ahead, then timed on one call
   (best of two when a call is under a second); only at a few sizes (`alone_members`: on CPU
   the smallest M, both maps; on accelerators the smallest and largest, vmap).
3. comparisons (rewritten with the JSON): `member_map`: vmap vs map per conv (per-member update
   cost, the faster map per conv); `conv`: lax vs patches per backend, M and member map (seconds
   per member-update and agent-steps/s, ratios lax/patches) and the update-alone rows side by
   side; `choice`: the fastest (conv, member_map) pair by whole-training agent-steps/s at each M
   (geometric mean over the backends trained there) and `overall` at the largest M where at
   least two pairs ran.
4. replay: bytes per transition of the frame store and the replay memory of the shipped Atari
   experiments, from the arrays of the store's `init()` (jax.eval_shape, nothing allocated).

Optionally (`learn_steps`) a short M-DQN learning run on the same pool (train/eval returns,
loss per chunk) with the overall choice's conv and member map, through the engine as `klrl train`
drives it, without its output directory.

The time guard `budget_s` (default per platform: CPU_BUDGET_S on CPU outside quick mode, none
elsewhere; `inf` for none): once one training row exists, a measurement (training or
update-alone row) whose estimate (from the rows before it: the last row's fixed costs plus the
same conv and map's per-member update cost at the largest smaller M, scaled) would end past the
budget is skipped and listed in `skipped_by_budget`; a size starts only while time is left.
Within a size, the (conv, map) rows run cheapest-estimate first, so a cut drops the dearest.
The JSON is rewritten after every size, so an interrupted run keeps what it has.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from klrl.bench import parse_members   # also imported from here by the CLI and tests
from klrl.networks import CONVS
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
SCAN_UPDATES = 4        # updates in the update-alone `scan` variant
CPU_BUDGET_S = 660.0    # the full CPU run's default time guard (~12 min with start-up and the replay part)


def _platform() -> str:
    return jax.devices()[0].platform


def sizes(platform: str, quick: bool) -> dict:
    """Population sizes and per-size lengths; `chunk(M, conv)` env steps per member per chunk,
    `update_chunks(conv)` update chunks timed (best of), `alone_members(members)` the sizes with
    update-alone rows. On CPU a lax Nature-CNN update inside the training loop costs ~0.5 s per
    member and more under vmap (see the JSON), so lax chunks there are one vector step, and
    update-alone rows (both maps) are at the smallest M only; a patches program compiles about
    twice as long as a lax one. The CPU run (ale only, 12 training rows) is sized for ~11 min on
    2 shared cores, the guard cutting the dearest rows past CPU_BUDGET_S. Quick mode (a smoke
    test) trains on the first installed backend only, at M = 2 only (both convs and maps), one
    update per vector step, and times update-alone rows at M = 2 under vmap."""
    if quick:
        return dict(members=(1, 2), raw_env_steps=48, chunk=lambda m, conv: 4, update_chunks=lambda conv: 1,
                    buffer_size=200, batch_size=4, update_every=4, train_backends=1, train_min_members=2,
                    modes_at_1=("vmap",), alone_members=lambda ms: [m for m in ms if m >= 2][:1],
                    alone_modes=("vmap",), budget_s=None)
    common = dict(buffer_size=5000, batch_size=None, update_every=None, train_backends=None, train_min_members=1)
    if platform == "cpu":
        return dict(common, members=(1, 4, 16), raw_env_steps=3000, modes_at_1=MODES,
                    chunk=lambda m, conv: 4 if conv == "lax" else {1: 16, 4: 8}.get(m, 4),
                    update_chunks=lambda conv: 1 if conv == "lax" else 2,
                    alone_members=lambda ms: [min(ms)], alone_modes=MODES, budget_s=CPU_BUDGET_S)
    # Accelerators: map over one member is the vmap program in a loop, so M = 1 is vmap only;
    # update-alone rows at the smallest and largest M, vmap (the loop question is XLA:CPU's).
    return dict(common, members=(1, 4, 16, 64), raw_env_steps=20000, modes_at_1=("vmap",),
                chunk=lambda m, conv: 200, update_chunks=lambda conv: 2,
                alone_members=lambda ms: sorted({min(ms), max(ms)}), alone_modes=("vmap",), budget_s=None)


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


@contextlib.contextmanager
def shared_pools():
    """While open, `klrl.train`'s make_env (and the yielded factory, for the raw pool) returns
    one env per (name, members, envs, backend, preset): a size's rows step the same emulator
    pool (each trainer resets it at env_start; the rows run one after the other) instead of
    building members·(E + 2) emulators per row. Closed: the pools are dropped."""
    import klrl.train as train_mod
    from klrl.envs import make_env

    cache: dict = {}

    def make(name, members, envs, backend="jax", preset=None):
        key = (name, int(members), int(envs), backend, preset)
        if key not in cache:
            cache[key] = make_env(name, members, envs, backend, **({} if preset is None else {"preset": preset}))
        return cache[key]

    before = train_mod.make_env
    train_mod.make_env = make
    try:
        yield make
    finally:
        train_mod.make_env = before
        cache.clear()
        gc.collect()


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

def _bench_overrides(backend: str, game: str, mode: str, chunk: int, size: dict, extra_chunks: int,
                     conv: str = "lax") -> list[str]:
    """The bench's `--set`s on experiments/atari100k.toml, then the caller's (size["overrides"])."""
    E = 4
    out = [f"env.name={game}", f"env.backend={backend}", f"env.num_envs={E}", f"agent.conv={conv}",
           f"train.buffer_size={size['buffer_size']}", f"train.chunk_steps={chunk}",
           # warm-up + NO_UPDATE_REPEATS chunks before learning starts, then the update chunks
           f"train.total_steps={chunk * (1 + NO_UPDATE_REPEATS + extra_chunks)}",
           f"train.learning_starts={chunk * (1 + NO_UPDATE_REPEATS) + E}", f"train.member_map={mode}"]
    out += [f"train.{k}={size[k]}" for k in ("batch_size", "update_every") if size.get(k)]
    return out + list(size.get("overrides", ()))


def time_training(backend: str, game: str, members: int, mode: str, size: dict, conv: str = "lax") -> dict:
    """One compiled run_chunk: best no-update chunk, best update chunk, and their difference."""
    from klrl.train import make_train

    chunk = size["chunk"](members, conv)
    U = size["update_chunks"](conv)
    exp = _experiment(_bench_overrides(backend, game, mode, chunk, size, U, conv))
    cfg = exp.static_config(AGENT)
    assert cfg.agent.conv == conv, (cfg.agent.conv, conv)
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
    operand as the trainer's replay is). Compiled ahead; the run timed once (best of two when
    under a second)."""
    from klrl.agents import AGENTS, Context
    from klrl.envs import env_spec, stacked_shape
    from klrl.networks import make_network
    from klrl.replay import Batch
    from klrl.train import HPARAMS, Learner, make_optimizer, make_update, over_members

    exp = _experiment(_bench_overrides(backend, "Pong", mode, 4, size, 1, conv))
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

    def one(lr, b, h):
        return update(lr, b, h, Context())[0]

    def fn(lr, b, h):
        if not scan:
            return one(lr, b, h)
        return jax.lax.scan(lambda c, _: (one(c, b, h), None), lr, None, length=scan)[0]

    n = scan or 1
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(learner, batch, hp).compile()
    compile_s = time.perf_counter() - t0
    runs, cpus = [], []
    while not runs or (len(runs) < 2 and runs[0] < 1.0):
        _, s, c = _timed(lambda: compiled(learner, batch, hp))
        runs.append(s), cpus.append(c)
    seconds = min(runs)
    return {"members": members, "conv": conv, "member_map": mode, "variant": "scan" if scan else "alone",
            "updates": n, "batch_size": B, "seconds": seconds, "cpu_seconds": cpus[runs.index(seconds)],
            "runs_seconds": runs, "seconds_per_member_update": seconds / (members * n),
            "compile_seconds": compile_s, "load_average_1min": _load()}


# ---- comparisons -------------------------------------------------------------------------------

def _conv(r: dict) -> str:
    return r.get("conv", "lax")   # rows written before the conv axis were lax


def _mode_order(mode: str) -> int:
    return MODES.index(mode) if mode in MODES else len(MODES)


def compare_maps(training: list[dict], alone: list[dict], platform: str) -> dict:
    """Per conv: per-member update cost of vmap vs map at each (backend, M), and the faster map."""
    rows = []
    base = {(r["backend"], _conv(r), r["member_map"]): r["update_seconds_per_member_update"]
            for r in training if r["members"] == 1}
    convs = [c for c in CONVS if any(_conv(r) == c for r in training)]
    for conv in convs:
        for backend in sorted({r["backend"] for r in training}):
            for m in sorted({r["members"] for r in training if r["backend"] == backend and _conv(r) == conv}):
                got = {r["member_map"]: r for r in training
                       if r["backend"] == backend and r["members"] == m and _conv(r) == conv}
                row = {"backend": backend, "members": m, "conv": conv}
                for mode, r in sorted(got.items(), key=lambda kv: _mode_order(kv[0])):
                    pmu = r["update_seconds_per_member_update"]
                    row[f"{mode}_seconds_per_member_update"] = pmu
                    row[f"{mode}_agent_steps_per_second"] = r["agent_steps_per_second"]
                    b = base.get((backend, conv, mode)) or base.get((backend, conv, "vmap"))
                    row[f"{mode}_per_member_cost_vs_1"] = pmu / b if b else None
                if "vmap" in got and "map" in got and got["map"]["update_seconds_per_member_update"] > 0:
                    row["vmap_over_map"] = (got["vmap"]["update_seconds_per_member_update"]
                                            / got["map"]["update_seconds_per_member_update"])
                rows.append(row)
    alone_rows: dict = {}
    for r in alone:
        (alone_rows.setdefault(_conv(r), {}).setdefault(r.get("variant", "alone"), {})
         .setdefault(r["members"], {})[r["member_map"]]) = r["seconds_per_member_update"]
    # Per conv: the per-member update cost at the largest size measured with both maps.
    choice = {}
    for conv in convs:
        both = [r for r in rows if r["conv"] == conv and "vmap_over_map" in r]
        largest = max((r["members"] for r in both), default=None)
        at = [r for r in both if r["members"] == largest]
        choice[conv] = None
        if at:
            ratio = float(np.mean([r["vmap_over_map"] for r in at]))
            choice[conv] = {"platform": platform, "conv": conv, "member_map": "map" if ratio > 1 else "vmap",
                            "members": largest, "vmap_over_map": ratio,
                            "by": "per-member update cost inside the training chunk at the largest M measured "
                                  "with both maps"}
    return {"rows": rows, "update_alone_seconds_per_member_update": alone_rows, "choice": choice}


def _ratio(a, b):
    return a / b if a is not None and b else None


def compare_convs(training: list[dict], alone: list[dict]) -> dict:
    """lax vs patches: per (backend, M, member_map) the training rows' seconds per member-update
    and agent-steps/s with the ratios lax/patches; per (M, member_map) the update-alone rows'
    seconds per member-update (alone and inside a scan), the scan/alone ratio per conv and the
    lax/patches ratio per variant."""
    rows = []
    for b, m, mode in sorted({(r["backend"], r["members"], r["member_map"]) for r in training},
                             key=lambda k: (k[0], k[1], _mode_order(k[2]))):
        got = {_conv(r): r for r in training if (r["backend"], r["members"], r["member_map"]) == (b, m, mode)}
        row = {"backend": b, "members": m, "member_map": mode}
        for conv in CONVS:
            if conv in got:
                row[f"{conv}_seconds_per_member_update"] = got[conv]["update_seconds_per_member_update"]
                row[f"{conv}_agent_steps_per_second"] = got[conv]["agent_steps_per_second"]
        if "lax" in got and "patches" in got:
            row["seconds_per_member_update_lax_over_patches"] = _ratio(
                row["lax_seconds_per_member_update"], row["patches_seconds_per_member_update"])
            row["agent_steps_per_second_lax_over_patches"] = _ratio(
                row["lax_agent_steps_per_second"], row["patches_agent_steps_per_second"])
        rows.append(row)
    alone_rows = []
    for m, mode in sorted({(r["members"], r["member_map"]) for r in alone}, key=lambda k: (k[0], _mode_order(k[1]))):
        got = {(_conv(r), r.get("variant", "alone")): r["seconds_per_member_update"]
               for r in alone if (r["members"], r["member_map"]) == (m, mode)}
        row = {"members": m, "member_map": mode, "scan_updates": SCAN_UPDATES}
        for (conv, variant), s in sorted(got.items(), key=lambda kv: (CONVS.index(kv[0][0]) if kv[0][0] in CONVS
                                                                      else 9, kv[0][1])):
            row[f"{conv}_{variant}_seconds_per_member_update"] = s
        for conv in CONVS:
            if (conv, "scan") in got and (conv, "alone") in got:
                row[f"{conv}_scan_over_alone"] = _ratio(got[(conv, "scan")], got[(conv, "alone")])
        for variant in ("alone", "scan"):
            if ("lax", variant) in got and ("patches", variant) in got:
                row[f"{variant}_lax_over_patches"] = _ratio(got[("lax", variant)], got[("patches", variant)])
        alone_rows.append(row)
    return {"rows": rows, "update_alone": alone_rows}


def choose(training: list[dict], platform: str) -> dict | None:
    """The fastest (conv, member_map) pair at each M by whole-training agent-steps/s (the update
    chunks; geometric mean over the backends trained at that M, pairs measured on all of them),
    and `overall`: the one at the largest M where at least two pairs ran (else the largest M)."""
    by_members = []
    for m in sorted({r["members"] for r in training}):
        at = [r for r in training if r["members"] == m]
        backends = sorted({r["backend"] for r in at})
        pairs: dict = {}
        for r in at:
            pairs.setdefault((_conv(r), r["member_map"]), {})[r["backend"]] = r
        full = {p: rs for p, rs in pairs.items() if sorted(rs) == backends}
        if not full:
            continue
        score = {p: float(np.exp(np.mean([np.log(r["agent_steps_per_second"]) for r in rs.values()])))
                 for p, rs in full.items()}
        best = max(score, key=score.get)
        ranked = sorted(score.values(), reverse=True)
        by_members.append({
            "members": m, "conv": best[0], "member_map": best[1], "agent_steps_per_second": score[best],
            "seconds_per_member_update": float(np.mean([r["update_seconds_per_member_update"]
                                                        for r in full[best].values()])),
            "over_next": ranked[0] / ranked[1] if len(ranked) > 1 else None, "backends": backends,
            "pairs_measured": len(score),
            "agent_steps_per_second_by_pair": {f"{c}/{mm}": score[(c, mm)] for c, mm in
                                               sorted(score, key=lambda p: (CONVS.index(p[0]) if p[0] in CONVS
                                                                            else 9, _mode_order(p[1])))}})
    if not by_members:
        return None
    several = [x for x in by_members if x["pairs_measured"] >= 2]
    top = (several or by_members)[-1]
    overall = {k: top[k] for k in ("members", "conv", "member_map", "agent_steps_per_second", "over_next",
                                   "pairs_measured")}
    return {"platform": platform,
            "by": "whole-training agent-steps/s (update chunks), geometric mean over the backends trained at that M",
            "by_members": by_members, "overall": overall}


def _estimate_training(result: dict, backend: str, members: int, conv: str, mode: str, size: dict) -> float | None:
    """Seconds a training row should take, from the rows before it (None: nothing to go on):
    the last row's init + compile + no-update chunks, plus the update chunks at the per-member
    update cost of the same conv and map (any map if none) at the largest smaller-or-equal M,
    times its growth from the size before (1.25 when unknown; within [1, 3]): under vmap the
    per-member cost of a lax convolution grows with M."""
    rows = result["training"]
    if not rows:
        return None
    last = rows[-1]
    fixed = (last["init_seconds"] + last["compile_seconds"] + last["warmup_chunk_seconds"]
             + sum(last["no_update_chunk_seconds"]))
    like = ([r for r in rows if _conv(r) == conv and r["member_map"] == mode and r["members"] <= members]
            or [r for r in rows if _conv(r) == conv and r["members"] <= members])
    if not like:
        return fixed
    ref = max(like, key=lambda r: (r["members"], r["update_seconds_per_member_update"]))
    growth = 1.25
    before = [r for r in like if r["members"] < ref["members"]]
    if ref["members"] < members and before:
        prev = max(before, key=lambda r: (r["members"], r["update_seconds_per_member_update"]))
        if prev["update_seconds_per_member_update"] > 0:
            growth = min(max(ref["update_seconds_per_member_update"] / prev["update_seconds_per_member_update"],
                             1.0), 3.0)
    chunk = size["chunk"](members, conv)
    updates = members * chunk * ref["updates_per_member_per_chunk"] / ref["chunk_env_steps"]
    per_chunk = updates * ref["update_seconds_per_member_update"] * growth + min(ref["no_update_chunk_seconds"])
    return fixed + size["update_chunks"](conv) * per_chunk   # the no-update chunks are in `fixed`


def _estimate_alone(result: dict, members: int, conv: str, mode: str, variant: str) -> float | None:
    """Seconds an update-alone row should take: a like row's compile + run scaled by M."""
    like = [r for r in result["update_alone"] if _conv(r) == conv and r["variant"] == variant
            and r["member_map"] == mode] or [r for r in result["update_alone"] if _conv(r) == conv]
    if not like:
        return None
    r = like[-1]
    return r["compile_seconds"] + sum(r["runs_seconds"]) * members / r["members"]


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
    return {"backend": backend, "game": game, "members": members, "conv": conv, "member_map": mode,
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
        gc.collect()   # the measurement's program goes before the next one is built


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
    lines = [f"{'backend':8s} {'M':>3s} {'conv':7s} {'map':5s} {'raw a-s/s':>10s} {'train a-s/s':>11s} "
             f"{'no-upd a-s/s':>12s} {'ratio':>8s} {'s/member-upd':>12s} {'cpu s/m-u':>9s} {'compile s':>9s}"]
    for r in result["training"]:
        rp = raw.get((r["backend"], r["members"]))
        rate = rp["agent_steps_per_second"] if rp else float("nan")
        lines.append(f"{r['backend']:8s} {r['members']:3d} {_conv(r):7s} {r['member_map']:5s} {rate:10.0f} "
                     f"{r['agent_steps_per_second']:11.1f} {r['agent_steps_per_second_no_updates']:12.0f} "
                     f"{r['agent_steps_per_second'] / rate:8.1e} {r['update_seconds_per_member_update']:12.3f} "
                     f"{r['update_cpu_seconds_per_member_update']:9.3f} {r['compile_seconds']:9.1f}")
    for r in result["update_alone"]:
        lines.append(f"update {r['variant']:5s} x{r['updates']} M={r['members']:3d} {_conv(r):7s} {r['member_map']:4s} "
                     f"{r['seconds_per_member_update']:.4f} s/member-update (compile {r['compile_seconds']:.1f}s)")
    for conv, c in (result["member_map"].get("choice") or {}).items():
        if c:
            lines.append(f"member_map for {conv} on {c['platform']}: {c['member_map']} "
                         f"(vmap/map per-member update cost {c['vmap_over_map']:.2f} at M = {c['members']})")
    for r in result["conv"].get("rows", []):
        if "agent_steps_per_second_lax_over_patches" in r:
            lines.append(f"conv {r['backend']} M={r['members']:3d} {r['member_map']:4s}: lax/patches "
                         f"s/member-update {r['seconds_per_member_update_lax_over_patches']:.2f}, "
                         f"agent-steps/s {r['agent_steps_per_second_lax_over_patches']:.3f}")
    choice = result.get("choice")
    if choice:
        for c in choice["by_members"]:
            lines.append(f"fastest at M = {c['members']:3d}: conv = {c['conv']}, member_map = {c['member_map']} "
                         f"({c['agent_steps_per_second']:.1f} agent-steps/s, of {c['pairs_measured']} pairs)")
        o = choice["overall"]
        lines.append(f"choice on {choice['platform']}: conv = {o['conv']}, member_map = {o['member_map']} "
                     f"(fastest at M = {o['members']})")
    for r in result["replay"]:
        if "bytes_per_transition" in r:
            lines.append(f"replay {r['experiment']}: {r['bytes_per_transition']:.0f} B/transition, "
                         f"{r['bytes_per_member'] / 1e9:.2f} GB/member, {r['bytes_per_population'] / 1e9:.2f} GB "
                         f"per population of {max(r['members_per_population'])}")
    return "\n".join(lines)


def _check_overrides(overrides: tuple[str, ...]) -> None:
    from klrl.errors import ConfigError

    for o in overrides:
        if o.split("=", 1)[0].strip() == "agent.conv":
            raise ConfigError(f"--set {o}: the bench measures each conv of --convs (its axis); "
                              f"use --convs {o.split('=', 1)[-1].strip()} instead")


def bench_atari(out_path: str | None = None, quick: bool = False, members: tuple[int, ...] | None = None,
                backends: tuple[str, ...] = BACKENDS, modes: tuple[str, ...] = MODES, game: str = "Pong",
                budget_s: float | None = None, learn_steps: int = 0, learn_members: int = 4,
                overrides: tuple[str, ...] = (), convs: tuple[str, ...] = CONVS) -> dict:
    """Run the benchmark and write its JSON (default results/bench/atari.json; with `quick`,
    results/bench/atari_quick.json so a smoke test never replaces the committed measurement).
    `convs`: the agent.conv values measured side by side; `budget_s`: the time guard (None: the
    platform's default, see sizes(); inf: none). `overrides` (`section.key=value`) apply to every
    trained config, e.g. ("train.batch_size=64",); agent.conv is the bench's own axis (`convs`)."""
    start = time.perf_counter()
    overrides, convs = tuple(overrides), tuple(parse_convs(",".join(convs)))
    _check_overrides(overrides)
    platform = _platform()
    size = dict(sizes(platform, quick), overrides=overrides)
    members = tuple(members or size["members"])
    if budget_s is None:
        budget_s = size["budget_s"]
    if budget_s is not None and not math.isfinite(budget_s):
        budget_s = None
    out_path = out_path or (QUICK_OUT if quick else DEFAULT_OUT)
    prov = provenance()
    skipped = {b: why for b in backends if (why := _available(b))}
    run_backends = tuple(b for b in backends if b not in skipped)
    alone_at = tuple(size["alone_members"](members))
    result = {
        "benchmark": ("Atari (atari100k learner, M-DQN Nature CNN): raw emulator pool vs whole training chunks, "
                      "lax vs patches convolutions, vmap vs map over members"),
        "machine": prov["device"], "versions": prov["versions"], "provenance": prov,
        "platform": platform, "device_kind": jax.devices()[0].device_kind, "quick": quick, "game": game,
        "preset": "atari100k", "envs_per_member": 4, "test_envs_per_member": TEST_ENVS,
        "config": {"experiment": os.path.relpath(EXPERIMENT, _ROOT),
                   "overrides_example": _bench_overrides("ale", game, "vmap", size["chunk"](1, convs[0]), size,
                                                         size["update_chunks"](convs[0]), convs[0]),
                   "members": list(members), "modes": list(modes), "convs": list(convs), "budget_s": budget_s,
                   "overrides": list(overrides),
                   "raw_env_steps": size["raw_env_steps"], "no_update_repeats": NO_UPDATE_REPEATS,
                   "chunk_env_steps": {c: {str(m): size["chunk"](m, c) for m in members} for c in convs},
                   "update_chunks": {c: size["update_chunks"](c) for c in convs},
                   "train_min_members": size["train_min_members"], "modes_at_1": list(size["modes_at_1"]),
                   "update_alone_members": list(alone_at), "update_alone_modes": list(size["alone_modes"]),
                   "scan_updates": SCAN_UPDATES},
        "skipped_backends": skipped,
        "notes": ("agent-steps count the M*E train envs; raw = random actions through env.step only; "
                  "training = run_chunk (act on all envs incl. test, env step, replay insert, E updates per vector "
                  "step); update cost = update chunk - no-update chunk (best of each); ratio = training / raw "
                  "agent-steps/s; conv = agent.conv (lax: XLA convolution, patches: slices + one matmul); "
                  "update_alone = one population update jitted alone (variant alone) or scan_updates of them in "
                  "one lax.scan (variant scan); a size's training rows share its emulator pool"),
        "replay": [], "raw_pool": [], "training": [], "update_alone": [], "member_map": {}, "conv": {},
        "choice": None, "sizes_skipped_by_budget": [], "skipped_by_budget": [], "errors": [],
        "load_average_1min_start": _load(),
    }

    def write():
        result["member_map"] = compare_maps(result["training"], result["update_alone"], platform)
        result["conv"] = compare_convs(result["training"], result["update_alone"])
        result["choice"] = choose(result["training"], platform)
        result["elapsed_seconds"] = time.perf_counter() - start
        result["load_average_1min_end"] = _load()
        os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
        with open(out_path, "w") as f:
            json.dump(result, f, indent=2, default=float)

    def over_budget(estimate: float | None, **what) -> bool:
        """True (and recorded) when a measurement would end past the budget; never before the
        first training row."""
        if budget_s is None or not result["training"]:
            return False
        elapsed = time.perf_counter() - start
        if elapsed + (estimate or 0.0) <= budget_s:
            return False
        result["skipped_by_budget"].append({**what, "estimated_seconds": estimate, "elapsed_seconds": elapsed})
        print(f"budget: skip {what} (estimated {estimate or 0:.0f}s, {elapsed:.0f}s of {budget_s:.0f}s spent)",
              flush=True)
        return True

    for path in SHIPPED:
        try:
            result["replay"].append(replay_memory(path))
        except Exception as err:  # noqa: BLE001  (e.g. ale missing: the shipped files name backend ale)
            result["replay"].append({"experiment": path, "skipped": f"{type(err).__name__}: {err}"})
    write()
    for m in members:
        elapsed = time.perf_counter() - start
        if budget_s is not None and result["training"] and elapsed >= budget_s:
            result["sizes_skipped_by_budget"] = [x for x in members if x >= m]
            print(f"budget: {elapsed:.0f}s spent of {budget_s:.0f}s; stopping before M={m}", flush=True)
            break
        modes_m = tuple(x for x in modes if m > 1 or x in size["modes_at_1"])
        with shared_pools() as make:
            for i, backend in enumerate(run_backends):
                raw = _guarded(result, lambda: time_raw_pool(backend, game, m, 4, size["raw_env_steps"], make_env=make),
                               backend=backend, members=m, part="raw_pool")
                if raw is not None:
                    result["raw_pool"].append(raw)
                    print(f"{backend:8s} M={m:3d} raw  {raw['agent_steps_per_second']:8.0f} agent-steps/s "
                          f"({raw['env_steps_per_second']:.0f} env-steps/s)  load {raw['load_average_1min'][0]:.1f}",
                          flush=True)
                if m < size["train_min_members"] or (size["train_backends"] is not None
                                                     and i >= size["train_backends"]):
                    continue
                # cheapest first (estimates from the sizes before; unknown ones in the given order)
                pairs = [(c, mode) for c in convs for mode in modes_m]
                est = {p: _estimate_training(result, backend, m, *p, size) for p in pairs}
                if all(e is not None for e in est.values()):
                    pairs.sort(key=lambda p: est[p])
                for conv, mode in pairs:
                    e = _estimate_training(result, backend, m, conv, mode, size)
                    if over_budget(e, backend=backend, members=m, conv=conv, member_map=mode, part="training"):
                        continue
                    r = _guarded(result, lambda: time_training(backend, game, m, mode, size, conv),
                                 backend=backend, members=m, conv=conv, part=f"training {mode}")
                    if r is None:
                        continue
                    r["estimated_seconds"] = e
                    if raw is not None:
                        _breakdown(r, raw)
                    result["training"].append(r)
                    print(f"{backend:8s} M={m:3d} {conv:7s} {mode:4s} {r['agent_steps_per_second']:8.1f} agent-steps/s "
                          f"(no updates {r['agent_steps_per_second_no_updates']:.0f}), "
                          f"{r['update_seconds_per_member_update']:.3f} s/member-update, compile "
                          f"{r['compile_seconds']:.1f}s, load {r['load_average_1min'][-1]:.1f}", flush=True)
        if run_backends and m in alone_at:
            for conv in convs:
                for mode in (x for x in size["alone_modes"] if x in modes_m):
                    for scan in (0, SCAN_UPDATES):
                        variant = "scan" if scan else "alone"
                        if over_budget(_estimate_alone(result, m, conv, mode, variant), members=m, conv=conv,
                                       member_map=mode, part=f"update_alone {variant}"):
                            continue
                        r = _guarded(result, lambda: time_update_alone(run_backends[0], m, mode, size, conv, scan),
                                     members=m, conv=conv, part=f"update_alone {variant} {mode}")
                        if r is not None:
                            result["update_alone"].append(r)
                            print(f"update {variant:5s} M={m:3d} {conv:7s} {mode:4s} "
                                  f"{r['seconds_per_member_update']:.4f} s/member-update, compile "
                                  f"{r['compile_seconds']:.1f}s", flush=True)
        write()
    if learn_steps > 0:   # bounded by learn_steps, not by the budget (which is for the sizes)
        choice = (choose(result["training"], platform) or {}).get("overall") or {}
        result["learning"] = (_guarded(result, lambda: learning_run(
            run_backends[0], game, learn_members, learn_steps, choice.get("member_map", "vmap"), extra=overrides,
            conv=choice.get("conv", convs[0])), part="learning")
                              if run_backends else {"skipped": "no Atari backend installed"})
    write()
    print(_table(result))
    print(f"wrote {out_path} ({time.perf_counter() - start:.0f}s)")
    return result


def parse_convs(text: str) -> tuple[str, ...]:
    """"lax,patches" -> ("lax", "patches") (each once, in the order given); ConfigError otherwise."""
    from klrl.errors import ConfigError

    out = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    if not out or any(x not in CONVS for x in out):
        raise ConfigError(f"--convs: got {text!r}; allowed comma-separated values of {', '.join(CONVS)}")
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m klrl.bench.atari`: the benchmark with every option (the GPU host script's entry)."""
    p = argparse.ArgumentParser(prog="python -m klrl.bench.atari", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="output JSON path")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    p.add_argument("--members", default=None, help="comma-separated population sizes, e.g. 1,4,16,64")
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: ale,envpool")
    p.add_argument("--modes", default=",".join(MODES), help="train.member_map values: vmap,map")
    p.add_argument("--convs", default=",".join(CONVS), help="agent.conv values measured side by side: lax,patches")
    p.add_argument("--game", default="Pong")
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds: the time guard (default {CPU_BUDGET_S:.0f} on CPU, none in --quick or on "
                        f"accelerators; inf: none)")
    p.add_argument("--learn-steps", type=int, default=0, help="env steps per member of a learning run (0: none)")
    p.add_argument("--learn-members", type=int, default=4)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a key of every trained config (repeatable), e.g. train.batch_size=64 "
                        "(not agent.conv: use --convs)")
    a = p.parse_args(argv)
    split = lambda s: tuple(x for x in s.split(",") if x)  # noqa: E731
    bench_atari(out_path=a.out, quick=a.quick, members=parse_members(a.members),
                backends=split(a.backends), modes=split(a.modes), game=a.game, budget_s=a.budget,
                learn_steps=a.learn_steps, learn_members=a.learn_members, overrides=tuple(a.overrides),
                convs=parse_convs(a.convs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
