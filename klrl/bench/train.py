"""`klrl bench train`: whole-run throughput of M-DQN populations (CartPole-v1 or MinAtar Breakout).

Presets (`env`):
- `purejaxrl`: the `cartpole` reference as DQN, 100k env steps per member and one evaluation
  episode: the shape of PureJaxRL's dqn.py CartPole config, for side-by-side timings.
- `cartpole`, the reference configuration: 10 parallel envs per member, buffer
  10,000, batch 128, one gradient update per vector step (= per 10 env steps) after 10,000
  warm-up steps, hard target update every 500 env steps, lr 2.5e-4, ε 1 → 0.05 over half the
  run, MLP (120, 84), L2 loss, 50k env steps per member.
- `minatar`: the M-DQN learner of experiments/minatar_munchausen.toml on Breakout-MinAtar
  (minatar_cnn torso, batch 32, Huber, Adam eps 3.125e-4, α 0.9, τ 0.03, l0 −1, 2 test envs
  per member evaluated concurrently), shortened to 50k env steps per member with a 50k buffer
  (MINATAR_OVERRIDES).
Each population size M runs the same compiled program shape (one chunk = the whole run);
compilation is timed separately (`lower().compile()`), and the run time is the best of
`repeats` executions of the compiled program on the same keys. `total_steps` overrides a
preset's length (still one chunk). The programs are klrl.bench.harness's: the run is
`make_train(cfg).train`, and a row's update FLOPs come from one population update built as the
trainer builds it. How a row is measured is a `Timing` (injected; TIMING by default).

Time guard (`budget_s`, seconds from the start of the bench or of the suite): a size is
skipped, with the sizes after it, when the time spent plus its estimate (from the measured row
of the same preset with the most members up to its own: compile seconds plus run seconds scaled
linearly in members and env steps, times the repeats) would pass the budget, or when the budget
is spent; the JSON's
`skipped_by_budget` lists them. Linear scaling over-estimates wherever a member costs less in a
larger population, so the guard errs on the side of skipping.

Output (results/bench/train.json; train_minatar.json for `minatar`):
  {"machine", "versions", "provenance", "platform", "device_kind", "env", "config", "hparams",
   "rows": [{"members", "seconds", "compile_seconds", "agent_steps_per_second",
   "per_member_cost_ratio", ...}], "skipped_by_budget"}
with per_member_cost_ratio = seconds / (members × seconds of 1 member): below 1 means a
member of the population costs less than a run on its own.

`bench_suite` (`python -m klrl.bench.train --suite gpu`, run by experiments/device/train_gpu.sh)
measures several such parts in one process under one budget and writes one JSON with each
part's rows and its goals (SUITES).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from klrl.bench.harness import (Budget, best_of, compile_training, fold_in_keys, header, load_average,
                                population_hparams, update_flops, write_json)
from klrl.static import StaticConfig

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join("results", "bench", "train.json")
QUICK_OUT = os.path.join("results", "bench", "train_quick.json")   # --quick never overwrites the real result

REFERENCE = StaticConfig(
    env={"name": "CartPole-v1", "num_envs": 10},
    agent={"name": "mdqn", "hidden": (120, 84), "loss": "l2", "acting": "epsilon_greedy"},
    train={"total_steps": 50_000, "chunk_steps": 50_000, "buffer_size": 10_000, "batch_size": 128,
           "learning_starts": 10_000, "update_every": 10, "target_update_every": 500, "target_update": "hard",
           "replay_mode": "per-member"},
    eval={"episodes": 10})
QUICK = REFERENCE.replace(train={"total_steps": 2_000, "chunk_steps": 2_000, "buffer_size": 1_000,
                                 "learning_starts": 500}, eval={"episodes": 2})

MINATAR_EXPERIMENT = os.path.join(_ROOT, "experiments", "minatar_munchausen.toml")
MINATAR_OVERRIDES = ("env.name=Breakout-MinAtar", "train.total_steps=50000", "train.chunk_steps=50000",
                     "train.buffer_size=50000")
MINATAR_QUICK_OVERRIDES = ("env.name=Breakout-MinAtar", "train.total_steps=2000", "train.chunk_steps=2000",
                           "train.buffer_size=1000", "train.learning_starts=500")


@dataclasses.dataclass(frozen=True)
class Preset:
    """One benchmark configuration: `build(quick)` gives the static config and the traced
    hyperparameters (name -> float, the rest at their defaults) of every population."""

    name: str
    benchmark: str
    members: tuple[int, ...]          # default population sizes (sized for the 2-core CPU)
    out: str                          # default JSON path (quick: `_quick` before .json)
    build: Callable[[bool], tuple[StaticConfig, dict[str, float]]]


def _cartpole(quick: bool) -> tuple[StaticConfig, dict[str, float]]:
    """REFERENCE (QUICK), lr 2.5e-4 and the engine's defaults for the other hyperparameters."""
    return (QUICK if quick else REFERENCE), {"learning_rate": 2.5e-4}


def _purejaxrl(quick: bool) -> tuple[StaticConfig, dict[str, float]]:
    """PureJaxRL's dqn.py CartPole shape: DQN (not M-DQN), 100k env steps, one evaluation episode."""
    cfg = (QUICK if quick else REFERENCE.replace(train={"total_steps": 100_000, "chunk_steps": 100_000}))
    return cfg.replace(agent={"name": "dqn"}, eval={"episodes": 1}), {"learning_rate": 2.5e-4}


def _minatar(quick: bool) -> tuple[StaticConfig, dict[str, float]]:
    """experiments/minatar_munchausen.toml's M-DQN population, shortened (its base hparams)."""
    from klrl.config import load_experiment

    exp = load_experiment(MINATAR_EXPERIMENT, MINATAR_QUICK_OVERRIDES if quick else MINATAR_OVERRIDES)
    return exp.static_config("mdqn"), exp.hparam_base()


PRESETS = {
    "cartpole": Preset("cartpole", "whole M-DQN training runs on CartPole-v1, population vmapped in one jit",
                       (1, 8, 32, 64), DEFAULT_OUT, _cartpole),
    "purejaxrl": Preset("purejaxrl", "whole DQN training runs on CartPole-v1 shaped as PureJaxRL's dqn.py (100k env "
                         "steps per member), population vmapped in one jit", (1, 8, 32),
                         os.path.join("results", "bench", "train_purejaxrl.json"), _purejaxrl),
    "minatar": Preset("minatar", "whole M-DQN training runs on Breakout-MinAtar (minatar_cnn), population "
                      "vmapped in one jit", (1, 4, 16), os.path.join("results", "bench", "train_minatar.json"),
                      _minatar),
}


def preset_config(env: str, quick: bool = False, total_steps: int | None = None) -> tuple[StaticConfig, dict]:
    """The (static config, hparams) of a preset, `total_steps` replacing its length (one chunk);
    checked as make_train checks it (ConfigError), so a bad length fails before any compile."""
    from klrl.errors import ConfigError
    from klrl.static import validate

    if env not in PRESETS:
        raise ConfigError(f"bench train --env: got {env!r}; allowed {', '.join(PRESETS)}")
    cfg, hparams = PRESETS[env].build(quick)
    if total_steps is not None:
        cfg = cfg.replace(train={"total_steps": total_steps, "chunk_steps": total_steps})
    validate(cfg)
    return cfg, hparams


def default_out(env: str, quick: bool) -> str:
    """A preset's JSON path; quick runs go to a `_quick` file so they never replace a measurement."""
    out = PRESETS[env].out
    return out.replace(".json", "_quick.json") if quick else out


@dataclasses.dataclass
class Population:
    """A compiled whole-run program for `members` and its inputs (kept to time it again)."""

    compiled: Callable
    keys: jax.Array
    hparams: dict
    compile_seconds: float


def compile_population(cfg: StaticConfig, members: int, hparams: dict | None = None, seed: int = 0) -> Population:
    """Build and compile the whole run of a population of `members` through make_train (timed)."""
    keys = fold_in_keys(members, seed)
    hp = population_hparams(hparams or {"learning_rate": 2.5e-4}, members)
    compiled, seconds = compile_training(cfg, keys, hp)
    return Population(compiled, keys, hp, seconds)


def run_population(pop: Population, repeats: int) -> tuple[list[float], list[float], dict]:
    """Wall and process-CPU seconds of `repeats` runs of the compiled program, and the last metrics."""
    runs, cpu, (_, metrics) = best_of(lambda: pop.compiled(pop.keys, pop.hparams), repeats)
    return runs, cpu, metrics


def time_population(cfg: StaticConfig, members: int, repeats: int = 1, seed: int = 0, hparams: dict | None = None,
                    pop: Population | None = None) -> dict:
    """Compile (unless `pop` is given) and run one population of `members`; the timings of one row."""
    pop = pop or compile_population(cfg, members, hparams, seed)
    load_before = load_average()
    runs, cpu, metrics = run_population(pop, repeats)
    best = min(range(repeats), key=runs.__getitem__)
    seconds = runs[best]
    t = cfg.train
    updates = max(0, t.total_steps - t.learning_starts) // t.update_every
    flops = update_flops(cfg, members)
    return {
        "members": members,
        "total_steps": t.total_steps,
        "seconds": seconds,
        # Gradient updates only (acting, env and replay excluded): a lower bound of the work done.
        "update_gflops": flops / 1e9,
        "achieved_update_gflop_per_second": flops * updates / seconds / 1e9,
        "compile_seconds": pop.compile_seconds,
        "agent_steps_per_second": members * t.total_steps / seconds,
        "agent_steps_per_second_per_member": t.total_steps / seconds,
        "all_run_seconds": runs,
        # CPU time of this process during the best run (all threads): less sensitive than wall
        # time to other processes sharing the cores; the 1-min load average says how shared.
        "cpu_seconds": cpu[best],
        "all_cpu_seconds": cpu,
        "load_average_1min": [load_before, load_average()],
        # nan-aware: with concurrent evaluation a member may have no finished test episode
        "final_eval_return_mean": float(jnp.nanmean(metrics["eval_return"][-1])),
        "diverged": int(jnp.sum(metrics["diverged"][-1])),
    }


class Timing(NamedTuple):
    """How a row is measured (injected, so the bench's logic can run on fake timings):
    `compile(cfg, members, hparams)` -> a population; `row(cfg, members, repeats=, hparams=,
    pop=)` -> the row's dict; `rerun(pop, repeats)` -> (wall seconds, CPU seconds, metrics)."""

    compile: Callable
    row: Callable
    rerun: Callable


TIMING = Timing(compile=compile_population, row=time_population, rerun=run_population)


def _repeats(members: int, repeats: int | None) -> int:
    """Runs per size: the single-member time is the denominator of every ratio, so best of 3."""
    return repeats if repeats is not None else (3 if members == 1 else 1)


def estimate_seconds(rows: list[dict], members: int, total_steps: int, repeats: int) -> float | None:
    """Seconds a size would take (compile + repeats × run), from the measured row with the most
    members up to `members` (else the smallest one), scaled linearly in members and env steps;
    None without a row."""
    if not rows:
        return None
    below = [r for r in rows if r["members"] <= members]
    ref = max(below, key=lambda r: (r["members"], r["total_steps"])) if below else min(rows, key=lambda r: r["members"])
    run = ref["seconds"] * (members / ref["members"]) * (total_steps / ref["total_steps"])
    return ref["compile_seconds"] + repeats * run


def add_ratios(rows: list[dict]) -> None:
    """per_member_cost_ratio (wall) and per_member_cpu_cost_ratio of every row, against the
    single-member row (None without one)."""
    single = next((row for row in rows if row["members"] == 1), None)
    for row in rows:
        same = single is not None and single["total_steps"] == row["total_steps"]
        row["per_member_cost_ratio"] = row["seconds"] / (row["members"] * single["seconds"]) if same else None
        row["per_member_cpu_cost_ratio"] = (row["cpu_seconds"] / (row["members"] * single["cpu_seconds"])
                                            if same else None)


def measure(env: str, members: tuple[int, ...], quick: bool = False, total_steps: int | None = None,
            repeats: int | None = None, budget: Budget | None = None, history: tuple[dict, ...] = (),
            on_row: Callable[[dict], None] = lambda part: None, timing: Timing = TIMING) -> dict:
    """The rows of one preset at each population size (ascending order expected), under the time
    guard (`history`: rows measured before, of the same preset, for the estimates); `on_row(part)`
    is called after each row (to rewrite the JSON); `timing` measures the rows. Returns the part: {"env", "benchmark",
    "config", "hparams", "rows", "skipped_by_budget"}."""
    budget = budget or Budget(None)
    cfg, hparams = preset_config(env, quick, total_steps)
    part = {"env": env, "benchmark": PRESETS[env].benchmark, "config": cfg.to_dict(), "hparams": hparams,
            "rows": [], "skipped_by_budget": []}
    rows, single = part["rows"], None
    for i, m in enumerate(members):
        r = _repeats(m, repeats)
        est = estimate_seconds(list(history) + rows, m, cfg.train.total_steps, r)
        if not budget.allows(est):
            part["skipped_by_budget"] = [{"members": x, "total_steps": cfg.train.total_steps,
                                          "estimated_seconds": est if x == m else None,
                                          "elapsed_seconds": budget.elapsed()} for x in members[i:]]
            print(f"budget: {budget.elapsed():.0f}s of {budget.seconds:.0f}s spent; skipping {env} "
                  f"M={list(members[i:])} (estimate for M={m}: {est or 0:.0f}s)", flush=True)
            break
        pop = timing.compile(cfg, m, hparams)
        rows.append(timing.row(cfg, m, repeats=r, hparams=hparams, pop=pop))
        rows[-1]["estimated_seconds"] = est
        if m == 1:
            single = pop
        add_ratios(rows)
        on_row(part)
        print(f"{env} members={m:4d} steps={cfg.train.total_steps}  run {rows[-1]['seconds']:.2f}s  compile "
              f"{rows[-1]['compile_seconds']:.1f}s  {rows[-1]['agent_steps_per_second']:.0f} agent-steps/s  "
              f"{rows[-1]['achieved_update_gflop_per_second']:.1f} GFLOP/s (updates)", flush=True)
    if single is not None and len(rows) > 1 and budget.allows(2 * rows[0]["seconds"]):
        remeasure_single(rows[0], single, timing.rerun)
        add_ratios(rows)
    on_row(part)
    return part


def remeasure_single(row: dict, pop: Population, rerun: Callable = run_population) -> None:
    """Time the single member again after the populations (same compiled program) and keep its
    fastest run: on a shared machine a quiet moment for the baseline can only raise the ratios."""
    runs, cpus, _ = rerun(pop, 2)
    runs, cpus = row["all_run_seconds"] + runs, row["all_cpu_seconds"] + cpus
    best = min(range(len(runs)), key=runs.__getitem__)
    row.update(seconds=runs[best], cpu_seconds=cpus[best], all_run_seconds=runs, all_cpu_seconds=cpus,
               agent_steps_per_second=row["total_steps"] / runs[best],
               agent_steps_per_second_per_member=row["total_steps"] / runs[best],
               achieved_update_gflop_per_second=row["achieved_update_gflop_per_second"] * row["seconds"] / runs[best])


NOTES = ("seconds exclude compilation; per_member_cost_ratio = seconds / (members x seconds of 1 member); "
         "per_member_cpu_cost_ratio is the same with process CPU time (robust to a shared machine)")


def bench_train(out_path: str | None = None, quick: bool = False, members: tuple[int, ...] | None = None,
                repeats: int | None = None, env: str = "cartpole", total_steps: int | None = None,
                budget_s: float | None = None, timing: Timing = TIMING, devices: tuple[int, ...] | None = None) -> dict:
    """Run the benchmark of one preset and write its JSON (default: the preset's path, e.g.
    results/bench/train.json; with `quick` a `_quick` file so a smoke test never replaces the
    committed measurement). The JSON is rewritten after every size. With `devices` (e.g.
    (1, 2)): the same populations on each host device count instead (klrl.bench.devices)."""
    if devices:
        from klrl.bench.devices import bench_devices
        return bench_devices(env, devices, members, quick, total_steps, out_path=out_path)
    preset_config(env, quick, total_steps)     # a bad env or length fails before any work
    members = tuple(sorted(set(members or ((1, 2) if quick else PRESETS[env].members))))
    out_path = out_path or default_out(env, quick)
    head = {**header(PRESETS[env].benchmark, quick), "notes": NOTES}
    result = {}

    def write(part: dict) -> None:
        result.update(head, **part)
        write_json(out_path, result)

    measure(env, members, quick, total_steps, repeats, Budget(budget_s), on_row=write, timing=timing)
    print(f"wrote {out_path}")
    return result


# --- the suite: several parts in one process and one budget, with their goals --------------

@dataclasses.dataclass(frozen=True)
class Part:
    """One measured part of a suite: a preset at some sizes, optionally with its own length,
    and the goals read from it: `ratio_goal` = (M, r): M members take at most r times one
    member's seconds; `seconds_goal` = (M, s): M members' run takes under s seconds."""

    label: str
    env: str
    members: tuple[int, ...]
    total_steps: int | None = None
    ratio_goal: tuple[int, float] | None = None
    seconds_goal: tuple[int, float] | None = None


SUITES = {
    # experiments/device/train_gpu.sh: CartPole at 1/64/256/1024 members, MinAtar Breakout at
    # 1/16/64, then 1024 CartPole members x 500k env steps if time allows (the throughput goals).
    "gpu": (Part("cartpole", "cartpole", (1, 64, 256, 1024), ratio_goal=(64, 2.0)),
            Part("minatar", "minatar", (1, 16, 64), ratio_goal=(64, 2.0)),
            Part("cartpole_1024x500k", "cartpole", (1024,), total_steps=500_000, seconds_goal=(1024, 120.0))),
}
# --quick: the same parts and goals at tiny sizes (a check of the logic on the CPU)
QUICK_SUITES = {
    "gpu": (Part("cartpole", "cartpole", (1, 2), ratio_goal=(2, 2.0)),
            Part("minatar", "minatar", (1, 2), ratio_goal=(2, 2.0)),
            Part("cartpole_2x4k", "cartpole", (2,), total_steps=4_000, seconds_goal=(2, 120.0))),
}


def _row(part: dict | None, members: int) -> dict | None:
    return next((r for r in (part or {}).get("rows", []) if r["members"] == members), None)


def goals(spec: tuple[Part, ...], parts: dict[str, dict]) -> list[dict]:
    """Each part's goals with what was measured; `met` is None when a needed row is missing."""
    out = []
    for p in spec:
        got = parts.get(p.label)
        if p.ratio_goal is not None:
            m, limit = p.ratio_goal
            one, many = _row(got, 1), _row(got, m)
            ratio = many["seconds"] / one["seconds"] if one and many else None
            out.append({"part": p.label, "goal": f"{m} members take at most {limit:g}x the seconds of one",
                        "members": m, "limit": limit, "ratio": ratio, "met": None if ratio is None else ratio <= limit})
        if p.seconds_goal is not None:
            m, limit = p.seconds_goal
            row = _row(got, m)
            steps = got["config"]["train"]["total_steps"] if got else p.total_steps
            with_compile = row["seconds"] + row["compile_seconds"] if row else None
            out.append({"part": p.label, "goal": f"{m} members x {steps} env steps run in under {limit:g} s",
                        "members": m, "total_steps": steps, "limit_seconds": limit,
                        "seconds": row["seconds"] if row else None, "seconds_including_compile": with_compile,
                        "met": None if row is None else row["seconds"] < limit,
                        "met_including_compile": None if row is None else with_compile < limit})
    return out


def bench_suite(out_path: str, suite: str = "gpu", quick: bool = False, budget_s: float | None = None,
                timing: Timing = TIMING) -> dict:
    """Measure a suite's parts in order under one budget (a part that fails is recorded in
    `errors` and the next one runs) and write one JSON with every part and the goals,
    rewritten after every row so a run cut short keeps what it measured; `timing` measures
    the rows (see Timing)."""
    spec = (QUICK_SUITES if quick else SUITES)[suite]
    budget = Budget(budget_s)
    result = {**header(f"bench train suite {suite!r}: " + "; ".join(
        f"{p.label}: {p.env} at M={','.join(map(str, p.members))}" for p in spec), quick),
        "suite": suite, "budget_s": budget_s, "notes": NOTES, "parts": {}, "goals": [], "errors": []}

    def write():
        result["goals"] = goals(spec, result["parts"])
        result["skipped_by_budget"] = [{"part": k, **s} for k, v in result["parts"].items()
                                       for s in v["skipped_by_budget"]]
        result["elapsed_seconds"] = budget.elapsed()
        write_json(out_path, result)

    for p in spec:
        history = tuple(r for q in result["parts"].values() if q["env"] == p.env for r in q["rows"])

        def keep(part: dict, label: str = p.label) -> None:
            result["parts"][label] = part
            write()

        try:
            measure(p.env, p.members, quick, p.total_steps, budget=budget, history=history, on_row=keep,
                    timing=timing)
        except Exception as err:  # noqa: BLE001  (recorded; the other parts still run)
            result["errors"].append({"part": p.label, "error": f"{type(err).__name__}: {err}"})
            print(f"{p.label}: {type(err).__name__}: {err}", flush=True)
        write()
    for g in result["goals"]:
        print(f"goal {g['part']}: {g['goal']}: met={g['met']}", flush=True)
    print(f"wrote {out_path} ({budget.elapsed():.0f}s)")
    return result


def main(argv: list[str] | None = None) -> int:
    """`python -m klrl.bench.train`: one preset with every option, or a suite (the GPU host
    script's entry: `--suite gpu --budget SECONDS`)."""
    from klrl.bench import parse_members
    from klrl.errors import ConfigError

    p = argparse.ArgumentParser(prog="python -m klrl.bench.train", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="output JSON path")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    p.add_argument("--env", default="cartpole", choices=sorted(PRESETS), help="the preset (default cartpole)")
    p.add_argument("--members", default=None, metavar="M,M,...", help="population sizes, e.g. 1,64,256,1024")
    p.add_argument("--total-steps", type=int, default=None, help="env steps per member (default: the preset's)")
    p.add_argument("--repeats", type=int, default=None, help="runs per size, best kept (default 3 at M = 1, else 1)")
    p.add_argument("--devices", default=None, metavar="N,N,...", help="host device counts, e.g. 1,2 (subprocesses)")
    p.add_argument("--budget", type=float, default=None, help="seconds: the time guard (default none)")
    p.add_argument("--suite", default=None, choices=sorted(SUITES),
                   help="measure a suite's parts instead (--env/--members/--total-steps/--repeats not used)")
    a = p.parse_args(argv)
    try:
        if a.suite:
            bench_suite(a.out or os.path.join("results", "bench", f"train_{a.suite}{'_quick' if a.quick else ''}.json"),
                        a.suite, quick=a.quick, budget_s=a.budget)
        else:
            bench_train(a.out, quick=a.quick, members=parse_members(a.members), repeats=a.repeats, env=a.env,
                        total_steps=a.total_steps, budget_s=a.budget, devices=parse_members(a.devices))
    except ConfigError as err:
        print(f"klrl: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
