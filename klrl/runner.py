"""The host loop: experiment file -> populations -> run directory.

`run_experiment(config_path, out_dir, overrides, resume)` (what `klrl train|sweep` calls):

1. Validate everything (config, overrides, grid, output directory) BEFORE compiling and
   before writing anything: a `ConfigError` leaves no trace, not even the directory.
2. Write `config.json` (resolved config, its hash, member table, provenance).
3. For each agent, in order: one population (grid x seeds), one jitted `run_chunk`. Between
   chunks the host appends the chunk's rows to `metrics.csv` (flushed: a killed run's rows
   are on disk), prints a progress line on stderr, reports newly diverged members, and
   every `output.checkpoint_every` chunks (and at the end) saves an orbax checkpoint of the
   full learner state plus the metrics so far.
4. Write `summary.json` and `timing.json`, print the summary table, draw the figures.

Exact resume (`--resume`): the config hash must match the run's; metrics.csv is rebuilt from
the checkpoints' metrics (so rows written after the last checkpoint by the killed process
are recomputed, not duplicated), each population restarts from its latest checkpoint, and
the finished file is byte-identical to an uninterrupted run's on the same machine.

Existing `--out` without `--resume` is refused, unless the config says
`output.if_exists = "new_subdir"`: then the run goes to `<out>/runs/<UTC timestamp>/`, so a
committed result (e.g. results/quickstart) is never overwritten.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from typing import Sequence

import numpy as np

from klrl.config import Experiment, load_experiment
from klrl.errors import ConfigError
from klrl.output import choose_out_dir
from klrl.population import Population, build_populations
from klrl.results import MetricsWriter, TidyWriter, format_chunk, format_history, header, read_metrics, summarize
from klrl.tasks import Task, check_resumed, split_populations

# Test-only: after this many chunks (counted over the whole run, restored ones included)
# the process SIGKILLs itself, after that chunk's rows and checkpoint are written.
KILL_ENV = "KLRL_TEST_KILL_AFTER_CHUNKS"
SWEEP_RECORD = "sweep.json"   # the record of a sweep over env.name (its run directories are below it)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _nanmedian(x) -> float:
    x = np.asarray(x, dtype=float)
    x = x[~np.isnan(x)]
    return float(np.median(x)) if x.size else math.nan


def resolve_out_dir(out_dir: str, exp: Experiment, resume: bool, record: str = "config.json",
                    task: Task | None = None) -> str:
    """The directory this run writes to; refuses to overwrite an existing run (no writes).
    Without --resume: klrl.output's policy (`output.if_exists`; an array task's directory is
    always refused, `klrl merge` looks for it by name). With it, `record` (the run's
    config.json, or a sweep's sweep.json) must hold the same config hash and the same split."""
    if resume:
        cfg_path = os.path.join(out_dir, record)
        if not os.path.isfile(cfg_path):
            raise ConfigError(f"--resume: got --out {out_dir!r} which holds no run (no {record}); "
                              "allowed the directory of an earlier run")
        with open(cfg_path) as fh:
            rec = json.load(fh)
        old = rec.get("config_hash")
        if old != exp.config_hash():
            raise ConfigError(f"--resume: got a config whose hash {exp.config_hash()[:12]} differs from the "
                              f"run's {str(old)[:12]} in {out_dir!r}; allowed the same resolved config "
                              "(same file and --set values)")
        check_resumed(rec, task, out_dir)
        return out_dir
    return choose_out_dir(out_dir, "refuse" if task else exp.values["output.if_exists"], flag="--out",
                          refuse_hint=", or --resume to continue the run in it")


def _member_table(pops: Sequence[Population]) -> list[dict]:
    return [
        {"member": m.member, "seed": m.seed, "agent": m.agent, "grid_index": m.grid_index,
         **{k: v for k, v in m.swept.items()}}
        for p in pops for m in p.members
    ]


def _describe_member(m) -> str:
    hp = ", ".join(f"{k}={v:g}" for k, v in m.swept.items() if v is not None)
    return f"member {m.member} (agent={m.agent}, seed={m.seed}{', ' + hp if hp else ''})"


def _checkpointer(out: str, pop: Population, exp: Experiment):
    from klrl.checkpoint import PopulationCheckpointer

    return PopulationCheckpointer(os.path.join(out, "checkpoints", pop.agent), exp.config_hash())


def _saved(state, trainer):
    """What a checkpoint holds: the whole state, less the env state of a non-checkpointable pool."""
    return state if trainer.traits.checkpointable else state._replace(env=())


def _resumed(restored, trainer, keys, chunks_done: int):
    """The state to continue from. Checkpointable envs: exactly the saved state. A host pool:
    learner, optimizer, replay, keys, counters and the actor's carry are restored exactly;
    the pool is re-reset from seeds derived from the member keys and the chunk count, so
    episodes in flight at the checkpoint are lost and the next observation is a fresh
    episode's first (the replay never learns across the seam: klrl.replay excludes a slot
    followed by an episode start). The run still finishes with the same step count."""
    if trainer.traits.checkpointable:
        return restored
    return trainer.reenter(restored, trainer.env_start(keys, chunks_done))


class FinalEvalFile:
    """final_eval.csv of a run with `train.final_eval_episodes > 0`: metrics.csv's header, rows
    `final_eval_return` and `final_eval_episodes` per member at the last step, one append (fsynced)
    per population. On resume the rows of populations written in full are kept (the file is
    rewritten with them) and only the others are evaluated again."""

    NAME = "final_eval.csv"

    def __init__(self, out: str, pops: Sequence[Population], resume: bool):
        import csv

        path = os.path.join(out, self.NAME)
        self.columns = pops[0].columns
        self.done: set[str] = set()
        kept = ""
        if resume and os.path.isfile(path):
            with open(path, newline="") as fh:
                lines = fh.read().splitlines(keepends=True)[1:]
            rows = {}
            for line in lines:
                cells = next(csv.reader([line]))
                if len(cells) == len(header(self.columns)) and line.endswith("\n"):
                    rows.setdefault(int(cells[0]), []).append(line)
            for pop in pops:
                if all(len(rows.get(m.member, ())) == 2 for m in pop.members):
                    self.done.add(pop.agent)
                    kept += "".join(line for m in pop.members for line in rows[m.member])
        self.writer = TidyWriter(path, header(self.columns), kept)

    def append(self, pop: Population, metrics: dict) -> None:
        self.writer.append(format_chunk(pop.members, self.columns, metrics))
        self.done.add(pop.agent)


def run_population(exp: Experiment, pop: Population, trainer, out: str, writer: MetricsWriter, resume: bool,
                   chunk_counter: list[int], final: FinalEvalFile | None = None) -> dict:
    """Train one population to the end (resuming from its checkpoint if asked), then run its
    final evaluation when the config asks for one (`final`, unless already written); returns timing."""
    import jax
    import jax.numpy as jnp

    static = exp.static_config(pop.agent)
    M = pop.size
    keys = jnp.asarray(pop.keys)
    hparams = {k: jnp.asarray(v) for k, v in pop.hparams.items()}
    sharded = len(jax.devices()) > 1
    if sharded:          # split the population axis over the devices (NamedSharding, 1-D mesh)
        from klrl.population import member_sharding, shard_population

        keys, hparams = shard_population((keys, hparams), M)

    ckpt = _checkpointer(out, pop, exp)
    needs_final = final is not None and pop.agent not in final.done
    if resume and ckpt.latest_step() == trainer.num_chunks and not needs_final:   # finished: nothing to compile
        chunk_counter[0] += trainer.num_chunks
        ckpt.close()
        _log(f"[{pop.agent}] already finished ({trainer.num_chunks} chunks checkpointed)")
        return {"agent": pop.agent, "members": M, "skipped": True}

    t0 = time.perf_counter()
    # π_ref's parameters are loaded here, on the host, and passed to the program.
    ref_params = trainer.reference.load() if trainer.reference is not None else ()
    # A host pool resets outside the program; the same call re-resets it on resume.
    env_start = None if trainer.traits.in_graph_reset else trainer.env_start(keys, 0)
    state = jax.jit(trainer.init)(keys, hparams, ref_params, env_start)
    if sharded:
        state = shard_population(state, M)
    history: dict[str, np.ndarray] = {}
    start = 0
    if resume and ckpt.latest_step() is not None:
        restored, history, meta = ckpt.restore(_saved(state, trainer))
        start = int(meta["chunks_done"])
        state = _resumed(restored, trainer, keys, start)
        _log(f"[{pop.agent}] resumed at chunk {start}/{trainer.num_chunks} from {ckpt.directory}"
             + ("" if trainer.traits.checkpointable else "; the env pool was re-reset (it cannot be checkpointed)"))
    chunk_counter[0] += start

    if sharded:          # pin the output layout to the input layout: one compile, chunk after chunk
        state_sharding = jax.tree.map(lambda x: x.sharding, state)
        jitted = jax.jit(trainer.run_chunk, donate_argnums=0,
                         out_shardings=(state_sharding, member_sharding(M)))
    else:
        jitted = jax.jit(trainer.run_chunk, donate_argnums=0)
    step_fn = jitted.lower(state, hparams).compile() if start < trainer.num_chunks else None
    compile_s = time.perf_counter() - t0
    _log(f"[{pop.agent}] {M} members, {trainer.num_chunks} chunks of {static.train.chunk_steps} steps; "
         f"init+compile {compile_s:.1f}s")

    diverged = np.asarray(history["diverged"][-1]) > 0 if "diverged" in history else np.zeros(M, bool)
    run_s = 0.0
    steps_done = 0
    for c in range(start, trainer.num_chunks):
        t = time.perf_counter()
        state, metrics = step_fn(state, hparams)
        metrics = {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}
        dt = time.perf_counter() - t
        run_s += dt
        steps_done += static.train.chunk_steps
        history = {k: np.concatenate([history[k], v[None]]) if k in history else v[None] for k, v in metrics.items()}
        writer.append(format_chunk(pop.members, pop.columns, metrics))

        new_div = (metrics.get("diverged", np.zeros(M)) > 0) & ~diverged
        for i in np.flatnonzero(new_div):
            _log(f"[{pop.agent}] DIVERGED: {_describe_member(pop.members[i])}: non-finite loss by step "
                 f"{int(metrics['step'][i])}; its parameters are frozen, the other members continue")
        diverged |= new_div

        rate = M * steps_done / max(run_s, 1e-9)
        eta = (trainer.num_chunks - c - 1) * run_s / (c + 1 - start)
        _log(f"[{pop.agent}] chunk {c + 1}/{trainer.num_chunks} step {int(metrics['step'].max())}/"
             f"{static.train.total_steps} | {rate:,.0f} agent-steps/s | eval {_nanmedian(metrics['eval_return']):.1f} "
             f"train {_nanmedian(metrics['train_return']):.1f} (medians over {M}) | "
             f"loss {_nanmedian(metrics['loss']):.4g} | ETA {_fmt_eta(eta)}")

        done = c + 1
        if done % exp.checkpoint_every == 0 or done == trainer.num_chunks:
            ckpt.save(done, _saved(state, trainer), history, {"agent": pop.agent, "members": M})
        chunk_counter[0] += 1
        kill_after = os.environ.get(KILL_ENV)
        if kill_after and chunk_counter[0] == int(kill_after):
            ckpt.close()
            _log(f"[{pop.agent}] {KILL_ENV}: killing myself after chunk {chunk_counter[0]}")
            os.kill(os.getpid(), signal.SIGKILL)
    ckpt.close()
    timing = {
        "agent": pop.agent, "members": M, "compile_seconds": round(compile_s, 3),
        "run_seconds": round(run_s, 3), "env_steps_per_member": steps_done,
        "agent_steps_per_second": round(M * steps_done / max(run_s, 1e-9), 1),
        "resumed_at_chunk": start,
    }
    if needs_final:
        from klrl.train import FINAL_EVAL_SALT

        t = time.perf_counter()
        # A fresh reset of every env (a host call for pools), then one jitted loop of episodes.
        result = jax.jit(trainer.final_eval)(state, hparams, trainer.env_start(keys, FINAL_EVAL_SALT))
        result = {k: np.asarray(v) for k, v in jax.device_get(result).items()}
        final.append(pop, result)
        timing["final_eval_seconds"] = round(time.perf_counter() - t, 3)
        _log(f"[{pop.agent}] final evaluation: {int(result['final_eval_episodes'].min())}+ episodes per member at "
             f"eps {static.train.eval_epsilon:g}, median return {_nanmedian(result['final_eval_return']):.1f} "
             f"({timing['final_eval_seconds']:.0f}s)")
    return timing


def summary_rows(metrics_path: str, columns: Sequence[str], final_eval_path: str | None = None) -> list[dict]:
    """Per group (agent + swept values): the last chunk's eval return over seeds, diverged
    members, and (with a final_eval.csv) the final evaluation's scores."""
    from klrl.results import final_scores, group_label

    rows = read_metrics(metrics_path)
    finals = final_scores(rows, "eval_return", columns)
    div = final_scores(rows, "diverged", columns)
    final_eval = {}
    if final_eval_path is not None:
        frows = read_metrics(final_eval_path)
        final_eval = {k: (v, final_scores(frows, "final_eval_episodes", columns)[k])
                      for k, v in final_scores(frows, "final_eval_return", columns).items()}
    out = []
    for key, scores in finals.items():
        row = {"group": group_label(key, columns), "agent": key[0],
               **{c: v for c, v in zip(columns, key[1:])},
               "final_eval_return": summarize(scores), "final_eval_returns": [float(s) for s in scores],
               "diverged_members": int(np.nansum(div.get(key, np.zeros(0)) > 0))}
        if key in final_eval:
            scores_f, episodes = final_eval[key]
            row.update(final_evaluation=summarize(scores_f), final_evaluation_returns=[float(s) for s in scores_f],
                       final_evaluation_min_episodes=int(np.min(episodes)))
        out.append(row)
    return out


def print_summary(summary: list[dict], file=None) -> None:
    """The final-evaluation table: one row per group (agent + swept values), over seeds."""
    file = file or sys.stdout
    w = max([len("group")] + [len(r["group"]) for r in summary])
    print("final greedy evaluation return (last chunk), over seeds:", file=file)
    print(f"{'group':<{w}}  {'seeds':>5}  {'median':>7}  {'IQM':>7}  {'IQM 95% CI':<17}  {'diverged':>8}", file=file)
    for r in summary:
        s = r["final_eval_return"]
        ci = f"[{s['iqm_ci_low']:.1f}, {s['iqm_ci_high']:.1f}]"
        print(f"{r['group']:<{w}}  {s['n']:>5}  {s['median']:>7.1f}  {s['iqm']:>7.1f}  {ci:<17}  "
              f"{r['diverged_members']:>8}", file=file)
    if any("final_evaluation" in r for r in summary):
        print("final evaluation (train.final_eval_episodes after training), over seeds:", file=file)
        print(f"{'group':<{w}}  {'seeds':>5}  {'median':>7}  {'IQM':>7}  {'IQM 95% CI':<17}  {'episodes':>8}", file=file)
        for r in summary:
            if "final_evaluation" in r:
                s = r["final_evaluation"]
                ci = f"[{s['iqm_ci_low']:.1f}, {s['iqm_ci_high']:.1f}]"
                print(f"{r['group']:<{w}}  {s['n']:>5}  {s['median']:>7.1f}  {s['iqm']:>7.1f}  {ci:<17}  "
                      f"{'>= ' + str(r['final_evaluation_min_episodes']):>8}", file=file)


def _prepare(exp: Experiment, task: Task | None = None):
    """The populations (an array task's share of them), their (uncompiled) programs and what
    config.json records about the members (the whole run's table; with a task, the split and
    the members it trains). The engine's own checks run here, so a bad config is refused
    before anything is written."""
    from klrl.train import check_members, make_train

    pops = build_populations(exp)
    members = {"members": _member_table(pops)}
    if task is not None:
        pops = split_populations(pops, task, exp.static.train.replay_mode)
        members.update(task=task.record, task_members=[m.member for p in pops for m in p.members])
    trainers = [make_train(exp.static_config(pop.agent)) for pop in pops]
    for pop in pops:
        check_members(exp.static_config(pop.agent), pop.size)
    return pops, trainers, members


def _run(exp: Experiment, prepared, out: str, config_path: str, overrides: Sequence[str], resume: bool,
         prov: dict, counter: list[int]) -> list[dict]:
    """Train every population of `exp` into the run directory `out`; returns its summary rows."""
    pops, trainers, members = prepared
    columns = pops[0].columns
    metrics_path = os.path.join(out, "metrics.csv")
    if resume:
        prefix = ""
        for pop in pops:                      # rows of every checkpointed chunk, in run order
            ckpt = _checkpointer(out, pop, exp)
            if ckpt.latest_step() is None:
                ckpt.close()
                break
            _, hist = ckpt.restore_metrics()
            ckpt.close()
            prefix += format_history(pop.members, columns, hist)
        writer = MetricsWriter(metrics_path, columns, prefix)
    else:
        os.makedirs(out, exist_ok=True)
        record = {
            "config": exp.resolved(), "config_hash": exp.config_hash(), "config_file": config_path,
            "overrides": list(overrides), **members, "provenance": prov,
        }
        _write_json(os.path.join(out, "config.json"), record)
        writer = MetricsWriter(metrics_path, columns)
    _log(f"klrl: run directory {out}")

    final = FinalEvalFile(out, pops, resume) if exp.static.train.final_eval_episodes > 0 else None
    timing = [run_population(exp, pop, trainer, out, writer, resume, counter, final)
              for pop, trainer in zip(pops, trainers)]

    summary = summary_rows(metrics_path, columns, final.writer.path if final else None)
    _write_json(os.path.join(out, "summary.json"), {"summary": summary, "provenance": prov})
    _write_json(os.path.join(out, "timing.json" if not resume else "timing_resume.json"),
                {"populations": timing, "provenance": prov})
    print_summary(summary)
    from klrl.plotting import plot_run

    for path in plot_run(out):
        _log(f"klrl: wrote {path}")
    return summary


def _write_json(path: str, obj) -> None:
    """Write `obj` as JSON atomically (a killed process leaves the old file or the new one)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False)
        fh.write("\n")
    os.replace(tmp, path)


def run_experiment(config_path: str, out_dir: str, overrides: Sequence[str] = (), resume: bool = False,
                   task: Task | None = None) -> str:
    """Run (or resume) an experiment into `out_dir`; returns the run directory used.

    With `task` (an array job, klrl.tasks) only that task's members run, into
    `<out_dir>/task-I/` (a sweep over env.name: the sweep's root), and `klrl merge` joins them.

    A sweep over env.name runs one run directory per env, `<out>/<env>/`, in the sweep's order,
    each exactly the run `--set env.name=<env>` would make (config.json records that override).
    `<out>/sweep.json` holds the sweep's resolved config and hash (`--resume` checks it; an env
    whose directory does not exist yet starts fresh) and `<out>/summary.json` every env's
    summary. Every env's config is validated before anything is written; an env that fails
    (a pool that does not start, say) leaves the finished envs' directories intact."""
    exp = load_experiment(config_path, overrides)
    runs = [(e, _prepare(e, task)) for e in exp.per_env()]
    # ---- nothing was written before this line -----------------------------------------
    from klrl.provenance import provenance

    prov = provenance()  # once per run: config, summary and timing name the same commit
    if task is not None:
        out_dir = task.directory(out_dir)
    if not exp.envs:
        out = resolve_out_dir(out_dir, exp, resume, task=task)
        _run(exp, runs[0][1], out, config_path, overrides, resume, prov, counter=[0])
        return out
    root = resolve_out_dir(out_dir, exp, resume, record=SWEEP_RECORD, task=task)
    if not resume:
        os.makedirs(root, exist_ok=True)
        _write_json(os.path.join(root, SWEEP_RECORD), {
            "config": exp.resolved(), "config_hash": exp.config_hash(), "config_file": config_path,
            "overrides": list(overrides), "runs": {e: e for e in exp.envs},
            **({"task": task.record} if task else {}), "provenance": prov})
    summaries, counter = {}, [0]          # chunks counted over the whole sweep (the kill hook's)
    for e, prepared in runs:
        name = e.static.env.name
        sub = os.path.join(root, name)
        sub_resume = resume and os.path.isfile(os.path.join(sub, "config.json"))
        _log(f"klrl: sweep over env.name: {name} ({exp.envs.index(name) + 1}/{len(exp.envs)})")
        summaries[name] = _run(e, prepared, sub, config_path, [*overrides, f"env.name={name}"], sub_resume, prov,
                               counter)
    _write_json(os.path.join(root, "summary.json"), {"summary": summaries, "provenance": prov})
    return root
