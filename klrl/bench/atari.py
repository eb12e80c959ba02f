"""`klrl bench atari`: where the time of Atari training goes.

For each backend (ale, envpool; one whose package is missing is skipped with the reason),
population size M and convolution (`agent.conv`: `lax` = XLA's convolution, `patches` = the
same layer as strided slices + one matmul, klrl.networks), with the learner of
experiments/atari100k.toml (M-DQN, Nature CNN, obs scale 1/255, Huber, batch 32, one update per
env step; E = 4 train + 2 concurrent test envs per member, preset atari100k; only the buffer and
the schedule are shrunk):

1. raw pool: random actions through the backend's `env.step` in one jitted `lax.scan` over the
   pool the trainer builds (`make_env(game, M, E + 2, backend)`), timed after a warm-up call.
   Agent-steps count the M·E train envs; env-steps all M·(E + 2). The pool is built once per
   (backend, M) and shared by that size's training rows, handed to each trainer as its env
   (`make_train(cfg, env=...)`; their `init_seconds` exclude it).
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

The measurements are klrl.bench.atari_measure's, the comparisons and the printed table
klrl.bench.atari_report's; this module sizes the run, drives it and writes the JSON.
"""


from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time

import jax

from klrl.bench import parse_members   # also imported from here by the CLI and tests
from klrl.bench.atari_measure import (_ROOT, ENVS, EXPERIMENT, MODES, NO_UPDATE_REPEATS, SCAN_UPDATES, TEST_ENVS,
                                      bench_overrides, learning_run, replay_memory, shared_pools, time_raw_pool,
                                      time_training, time_update_alone)
from klrl.bench.atari_report import (breakdown, choose, compare_convs, compare_maps, estimate_alone,
                                     estimate_training, table)
from klrl.bench.harness import Budget, header, load_average, write_json
from klrl.networks import CONVS

DEFAULT_OUT = os.path.join("results", "bench", "atari.json")
QUICK_OUT = os.path.join("results", "bench", "atari_quick.json")   # --quick never overwrites the real result
SHIPPED = ("experiments/atari100k.toml", "experiments/atari_dopamine_mdqn.toml")
BACKENDS = ("ale", "envpool")
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


# ---- driving the run ---------------------------------------------------------------------------

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


def _over_budget(result: dict, budget: Budget, estimate: float | None, **what) -> bool:
    """True (and recorded) when a measurement would end past the budget; never before the
    first training row."""
    if budget.seconds is None or not result["training"] or budget.allows(estimate):
        return False
    elapsed = budget.elapsed()
    result["skipped_by_budget"].append({**what, "estimated_seconds": estimate, "elapsed_seconds": elapsed})
    print(f"budget: skip {what} (estimated {estimate or 0:.0f}s, {elapsed:.0f}s of {budget.seconds:.0f}s spent)",
          flush=True)
    return True


def _check_overrides(overrides: tuple[str, ...]) -> None:
    from klrl.errors import ConfigError

    for o in overrides:
        if o.split("=", 1)[0].strip() == "agent.conv":
            raise ConfigError(f"--set {o}: the bench measures each conv of --convs (its axis); "
                              f"use --convs {o.split('=', 1)[-1].strip()} instead")


NOTES = ("agent-steps count the M*E train envs; raw = random actions through env.step only; "
         "training = run_chunk (act on all envs incl. test, env step, replay insert, E updates per vector "
         "step); update cost = update chunk - no-update chunk (best of each); ratio = training / raw "
         "agent-steps/s; conv = agent.conv (lax: XLA convolution, patches: slices + one matmul); "
         "update_alone = one population update jitted alone (variant alone) or scan_updates of them in "
         "one lax.scan (variant scan); a size's training rows share its emulator pool")


def _start(quick: bool, game: str, size: dict, members: tuple[int, ...], modes: tuple[str, ...],
           convs: tuple[str, ...], budget_s: float | None, skipped: dict) -> dict:
    """The JSON before any measurement: provenance, the configuration and empty parts."""
    overrides_example = bench_overrides("ale", game, "vmap", size["chunk"](1, convs[0]), size,
                                        size["update_chunks"](convs[0]), convs[0])
    return {
        **header("Atari (atari100k learner, M-DQN Nature CNN): raw emulator pool vs whole training chunks, "
                 "lax vs patches convolutions, vmap vs map over members", quick),
        "game": game, "preset": "atari100k", "envs_per_member": ENVS, "test_envs_per_member": TEST_ENVS,
        "config": {"experiment": os.path.relpath(EXPERIMENT, _ROOT), "overrides_example": overrides_example,
                   "members": list(members), "modes": list(modes), "convs": list(convs), "budget_s": budget_s,
                   "overrides": list(size["overrides"]),
                   "raw_env_steps": size["raw_env_steps"], "no_update_repeats": NO_UPDATE_REPEATS,
                   "chunk_env_steps": {c: {str(m): size["chunk"](m, c) for m in members} for c in convs},
                   "update_chunks": {c: size["update_chunks"](c) for c in convs},
                   "train_min_members": size["train_min_members"], "modes_at_1": list(size["modes_at_1"]),
                   "update_alone_members": list(size["alone_members"](members)),
                   "update_alone_modes": list(size["alone_modes"]), "scan_updates": SCAN_UPDATES},
        "skipped_backends": skipped, "notes": NOTES,
        "replay": [], "raw_pool": [], "training": [], "update_alone": [], "member_map": {}, "conv": {},
        "choice": None, "sizes_skipped_by_budget": [], "skipped_by_budget": [], "errors": [],
        "load_average_1min_start": load_average(),
    }


def _write(out_path: str, result: dict, budget: Budget) -> None:
    """The comparisons from the rows so far, then the JSON."""
    platform = result["platform"]
    result["member_map"] = compare_maps(result["training"], result["update_alone"], platform)
    result["conv"] = compare_convs(result["training"], result["update_alone"])
    result["choice"] = choose(result["training"], platform)
    result["elapsed_seconds"] = budget.elapsed()
    result["load_average_1min_end"] = load_average()
    write_json(out_path, result)


def _raw_row(result: dict, backend: str, game: str, m: int, size: dict, make) -> dict | None:
    raw = _guarded(result, lambda: time_raw_pool(backend, game, m, ENVS, size["raw_env_steps"], make_env=make),
                   backend=backend, members=m, part="raw_pool")
    if raw is not None:
        result["raw_pool"].append(raw)
        print(f"{backend:8s} M={m:3d} raw  {raw['agent_steps_per_second']:8.0f} agent-steps/s "
              f"({raw['env_steps_per_second']:.0f} env-steps/s)  load {raw['load_average_1min'][0]:.1f}", flush=True)
    return raw


def _training_rows(result: dict, backend: str, game: str, m: int, pairs: list, size: dict, budget: Budget,
                   make, raw: dict | None) -> None:
    """The training rows of one backend at size m, cheapest estimate first (estimates from the
    sizes before; unknown ones in the given order), each under the time guard."""
    est = {p: estimate_training(result, backend, m, *p, size) for p in pairs}
    if all(e is not None for e in est.values()):
        pairs = sorted(pairs, key=lambda p: est[p])
    for conv, mode in pairs:
        e = estimate_training(result, backend, m, conv, mode, size)
        if _over_budget(result, budget, e, backend=backend, members=m, conv=conv, member_map=mode, part="training"):
            continue
        r = _guarded(result, lambda: time_training(backend, game, m, mode, size, conv, make_env=make),
                     backend=backend, members=m, conv=conv, part=f"training {mode}")
        if r is None:
            continue
        r["estimated_seconds"] = e
        if raw is not None:
            breakdown(r, raw)
        result["training"].append(r)
        print(f"{backend:8s} M={m:3d} {conv:7s} {mode:4s} {r['agent_steps_per_second']:8.1f} agent-steps/s "
              f"(no updates {r['agent_steps_per_second_no_updates']:.0f}), "
              f"{r['update_seconds_per_member_update']:.3f} s/member-update, compile "
              f"{r['compile_seconds']:.1f}s, load {r['load_average_1min'][-1]:.1f}", flush=True)


def _alone_rows(result: dict, backend: str, m: int, modes_m: tuple, convs: tuple, size: dict,
                budget: Budget) -> None:
    """The update-alone rows at size m: per conv and member map, variants alone and scan."""
    for conv in convs:
        for mode in (x for x in size["alone_modes"] if x in modes_m):
            for scan in (0, SCAN_UPDATES):
                variant = "scan" if scan else "alone"
                if _over_budget(result, budget, estimate_alone(result, m, conv, mode, variant), members=m, conv=conv,
                                member_map=mode, part=f"update_alone {variant}"):
                    continue
                r = _guarded(result, lambda: time_update_alone(backend, m, mode, size, conv, scan),
                             members=m, conv=conv, part=f"update_alone {variant} {mode}")
                if r is not None:
                    result["update_alone"].append(r)
                    print(f"update {variant:5s} M={m:3d} {conv:7s} {mode:4s} "
                          f"{r['seconds_per_member_update']:.4f} s/member-update, compile "
                          f"{r['compile_seconds']:.1f}s", flush=True)


def _measure_size(result: dict, m: int, game: str, backends: tuple, modes: tuple, convs: tuple, size: dict,
                  budget: Budget) -> None:
    """Every row of population size m: per backend the raw pool and the training rows (one
    shared pool per backend), then the update-alone rows."""
    modes_m = tuple(x for x in modes if m > 1 or x in size["modes_at_1"])
    with shared_pools() as make:
        for i, backend in enumerate(backends):
            raw = _raw_row(result, backend, game, m, size, make)
            if m < size["train_min_members"] or (size["train_backends"] is not None and i >= size["train_backends"]):
                continue
            pairs = [(c, mode) for c in convs for mode in modes_m]
            _training_rows(result, backend, game, m, pairs, size, budget, make, raw)
    if backends and m in result["config"]["update_alone_members"]:
        _alone_rows(result, backends[0], m, modes_m, convs, size, budget)


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
    size = dict(sizes(_platform(), quick), overrides=overrides)
    members = tuple(members or size["members"])
    budget_s = size["budget_s"] if budget_s is None else budget_s
    budget_s = None if budget_s is not None and not math.isfinite(budget_s) else budget_s
    budget = Budget(budget_s, start)     # counts from the call, as `elapsed_seconds` does
    out_path = out_path or (QUICK_OUT if quick else DEFAULT_OUT)
    skipped = {b: why for b in backends if (why := _available(b))}
    run_backends = tuple(b for b in backends if b not in skipped)
    result = _start(quick, game, size, members, modes, convs, budget_s, skipped)
    for path in SHIPPED:
        try:
            result["replay"].append(replay_memory(path))
        except Exception as err:  # noqa: BLE001  (e.g. ale missing: the shipped files name backend ale)
            result["replay"].append({"experiment": path, "skipped": f"{type(err).__name__}: {err}"})
    _write(out_path, result, budget)
    for m in members:
        if budget_s is not None and result["training"] and not budget.allows(None):
            result["sizes_skipped_by_budget"] = [x for x in members if x >= m]
            print(f"budget: {budget.elapsed():.0f}s spent of {budget_s:.0f}s; stopping before M={m}", flush=True)
            break
        _measure_size(result, m, game, run_backends, modes, convs, size, budget)
        _write(out_path, result, budget)
    if learn_steps > 0:   # bounded by learn_steps, not by the budget (which is for the sizes)
        choice = (choose(result["training"], result["platform"]) or {}).get("overall") or {}
        result["learning"] = (_guarded(result, lambda: learning_run(
            run_backends[0], game, learn_members, learn_steps, choice.get("member_map", "vmap"), extra=overrides,
            conv=choice.get("conv", convs[0])), part="learning")
                              if run_backends else {"skipped": "no Atari backend installed"})
    _write(out_path, result, budget)
    print(table(result))
    print(f"wrote {out_path} ({budget.elapsed():.0f}s)")
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
