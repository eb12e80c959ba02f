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
from klrl.config_hash import SCHEMA_VERSION
from klrl.distributed import DistributedError, barrier, is_primary
from klrl.errors import ConfigError
from klrl.output import choose_out_dir
from klrl.population import Population, build_populations
from klrl.sharding import ShardedTrainer
from klrl.results import MetricsWriter, TidyWriter, format_chunk, format_history, header, read_metrics, summarize
from klrl.tasks import Task, check_resumed, split_populations

# Test-only: after this many chunks (counted over the whole run, restored ones included)
# the process SIGKILLs itself, after that chunk's rows and checkpoint are written.
KILL_ENV = "KLRL_TEST_KILL_AFTER_CHUNKS"
SWEEP_RECORD = "sweep.json"   # the record of a sweep over env.name (its run directories are below it)


def _log(msg: str) -> None:
    """A progress line on stderr, from the primary process only (klrl.distributed)."""
    if is_primary():
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
        old = exp.schema.record_hash(rec)   # an earlier schema version's record: its upgraded config's
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

    return PopulationCheckpointer(os.path.join(out, "checkpoints", pop.agent), exp.config_hash(),
                                  also_accept=_recorded_hash(out, exp))


def _recorded_hash(out: str, exp: Experiment) -> tuple[str, ...]:
    """The hash config.json stored, when it names this config under an earlier schema version's
    formula (klrl.config_hash): the checkpoints written with that record carry it."""
    path = os.path.join(out, "config.json")
    if not os.path.isfile(path):
        return ()
    with open(path) as fh:
        rec = json.load(fh)
    return (rec["config_hash"],) if exp.schema.record_hash(rec) == exp.config_hash() else ()


def _saved(state, trainer):
    """What a checkpoint holds: the whole state, less the env state of a non-checkpointable pool."""
    return state if trainer.traits.checkpointable else state._replace(env=())


def _resumed(restored, fresh, sharded, host_keys, keys, chunks_done: int):
    """The state to continue from. Checkpointable envs: exactly the saved state. A host pool:
    learner, optimizer, replay, keys, counters and the actor's carry are restored exactly;
    the pool is re-reset from seeds derived from the member keys and the chunk count, so
    episodes in flight at the checkpoint are lost and the next observation is a fresh
    episode's first (the replay never learns across the seam: klrl.replay excludes a slot
    followed by an episode start). The run still finishes with the same step count."""
    if sharded.trainer.traits.checkpointable:
        return restored
    # The saved state has no env (`_saved`); the fresh one's stands in until reenter replaces it.
    return sharded.reenter(restored._replace(env=fresh.env), sharded.env_start(host_keys, keys, chunks_done))


class _Discard:
    """The writer of a process that does not write (klrl.distributed: only the primary does)."""

    def __init__(self, path: str = ""):
        self.path = path

    def append(self, text: str) -> None:
        pass


class FinalEvalFile:
    """final_eval.csv of a run with `eval.final_episodes > 0`: metrics.csv's header, rows
    `final_eval_return` and `final_eval_episodes` per member at the last step, one append (fsynced)
    per population. On resume the rows of populations written in full are kept (the file is
    rewritten with them) and only the others are evaluated again."""

    NAME = "final_eval.csv"

    def __init__(self, out: str, pops: Sequence[Population], resume: bool, write: bool = True):
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
        self.writer = TidyWriter(path, header(self.columns), kept) if write else _Discard(path)

    def append(self, pop: Population, metrics: dict) -> None:
        self.writer.append(format_chunk(pop.members, self.columns, metrics))
        self.done.add(pop.agent)


def _layout(members: int) -> dict:
    """What a checkpoint's state layout depends on: the device count and the padded size."""
    import jax

    from klrl.sharding import padded_size

    return {"devices": jax.device_count(), "padded_members": padded_size(members, jax.device_count())}


def _check_layout(ckpt, pop: Population) -> None:
    """ConfigError unless the checkpoint was written with this run's layout (checked before
    anything is rewritten: the state's shapes depend on the device count)."""
    saved, now = ckpt.meta(), _layout(pop.size)
    if "devices" not in saved:
        ckpt.close()
        raise ConfigError(f"--resume: got a checkpoint in {ckpt.directory} from before the sharded state layout "
                          "(its meta names no device count); allowed a checkpoint written by this version "
                          "(resume it with the commit that wrote it, recorded in config.json)")
    was = {k: saved[k] for k in now}
    if was != now:
        ckpt.close()
        raise ConfigError(f"--resume: got {now['devices']} device(s) (population of {pop.size} padded to "
                          f"{now['padded_members']}) for a checkpoint written on {was['devices']} (padded to "
                          f"{was['padded_members']}) in {ckpt.directory}; allowed the same device count")


def run_population(exp: Experiment, pop: Population, trainer, out: str, writer: MetricsWriter, resume: bool,
                   chunk_counter: list[int], final: FinalEvalFile | None = None) -> dict:
    """Train one population to the end (resuming from its checkpoint if asked), then run its
    final evaluation when the config asks for one (`final`, unless already written); returns timing."""
    static = exp.static_config(pop.agent)
    M = pop.size
    # The population on every device (klrl.sharding): padded to a multiple of the device
    # count, one program per shard; everything below sees the M real members only.
    sharded = ShardedTrainer(trainer, M)
    keys = sharded.put_members(pop.keys)
    hparams = {k: sharded.put_members(v) for k, v in pop.hparams.items()}
    layout = _layout(M)

    ckpt = _checkpointer(out, pop, exp)
    needs_final = final is not None and pop.agent not in final.done
    if resume and ckpt.latest_step() == trainer.num_chunks and not needs_final:   # finished: nothing to compile
        chunk_counter[0] += trainer.num_chunks
        ckpt.close()
        _log(f"[{pop.agent}] already finished ({trainer.num_chunks} chunks checkpointed)")
        return {"agent": pop.agent, "members": M, "skipped": True}

    t0 = time.perf_counter()
    # π_ref's parameters are loaded here, on the host, and passed to the program.
    ref_params = sharded.put_replicated(trainer.reference.load() if trainer.reference is not None else ())
    # A host pool resets outside the program (per shard); the same call re-resets it on resume.
    state = sharded.init(keys, hparams, ref_params, sharded.env_start(pop.keys, keys, 0))
    history: dict[str, np.ndarray] = {}
    start = 0
    if resume and ckpt.latest_step() is not None:
        restored, history, meta = ckpt.restore(_saved(state, trainer))
        start = int(meta["chunks_done"])
        state = _resumed(restored, state, sharded, pop.keys, keys, start)
        _log(f"[{pop.agent}] resumed at chunk {start}/{trainer.num_chunks} from {ckpt.directory}"
             + ("" if trainer.traits.checkpointable else "; the env pool was re-reset (it cannot be checkpointed)"))
    chunk_counter[0] += start

    step_fn = sharded.run_chunk().lower(state, hparams).compile() if start < trainer.num_chunks else None
    compile_s = time.perf_counter() - t0
    on = (f" on {sharded.shards} devices" + (f" (+{sharded.padded - M} padding)" if sharded.padded > M else "")
          if sharded.shards > 1 else "")
    _log(f"[{pop.agent}] {M} members{on}, {trainer.num_chunks} chunks of {static.train.chunk_steps} steps; "
         f"init+compile {compile_s:.1f}s")

    diverged = np.asarray(history["diverged"][-1]) > 0 if "diverged" in history else np.zeros(M, bool)
    run_s = 0.0
    steps_done = 0
    for c in range(start, trainer.num_chunks):
        t = time.perf_counter()
        state, metrics = step_fn(state, hparams)
        metrics = sharded.to_host(metrics)
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
            ckpt.save(done, _saved(state, trainer), history, {"agent": pop.agent, "members": M, **layout})
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
        result = sharded.to_host(sharded.final_eval(state, hparams, sharded.env_start(pop.keys, keys, FINAL_EVAL_SALT)))
        final.append(pop, result)
        timing["final_eval_seconds"] = round(time.perf_counter() - t, 3)
        _log(f"[{pop.agent}] final evaluation: {int(result['final_eval_episodes'].min())}+ episodes per member at "
             f"eps {static.eval.epsilon:g}, median return {_nanmedian(result['final_eval_return']):.1f} "
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
        print("final evaluation (eval.final_episodes after training), over seeds:", file=file)
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
    primary = is_primary()
    if resume:
        prefix = ""
        for pop in pops:                      # rows of every checkpointed chunk, in run order
            ckpt = _checkpointer(out, pop, exp)
            if ckpt.latest_step() is None:
                ckpt.close()
                break
            _check_layout(ckpt, pop)
            _, hist = ckpt.restore_metrics()
            ckpt.close()
            prefix += format_history(pop.members, columns, hist)
    elif primary:
        os.makedirs(out, exist_ok=True)
        record = {
            "config": exp.resolved(), "config_hash": exp.config_hash(), "schema_version": SCHEMA_VERSION,
            "config_file": config_path,
            "overrides": list(overrides), **members, "provenance": prov,
        }
        _write_json(os.path.join(out, "config.json"), record)
    # Only the primary process writes files (klrl.distributed); the others train their shards.
    writer = MetricsWriter(metrics_path, columns, prefix if resume else None) if primary else _Discard()
    final = (FinalEvalFile(out, pops, resume, write=primary) if exp.static.eval.final_episodes > 0
             else None)
    barrier("klrl: run directory ready")
    _log(f"klrl: run directory {out}")

    timing = [run_population(exp, pop, trainer, out, writer, resume, counter, final)
              for pop, trainer in zip(pops, trainers)]
    if not primary:
        return []

    summary = summary_rows(metrics_path, columns, final.writer.path if final else None)
    _write_json(os.path.join(out, "summary.json"), {"summary": summary, "provenance": prov})
    _write_json(os.path.join(out, "timing.json" if not resume else "timing_resume.json"),
                {"populations": timing, "provenance": prov})
    print_summary(summary)
    from klrl.plotting import plot_run

    for path in plot_run(out):
        _log(f"klrl: wrote {path}")
    return summary


def _guarded(processes: int, fn, *args, **kwargs):
    """`fn(*args, **kwargs)`; in a distributed run a failure (another process died, say) becomes
    one DistributedError line: the files written so far are kept and `--resume` continues."""
    if processes == 1:
        return fn(*args, **kwargs)
    import jax

    try:
        return fn(*args, **kwargs)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 (any failure of a collective, a checkpoint, a pool)
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise DistributedError(f"process {jax.process_index()} of {processes}: {type(err).__name__}: {first} "
                               "(the run's files so far are kept; restart every process with --resume)") from err


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
    import jax

    processes = jax.process_count()
    if processes > 1 and exp.values["output.if_exists"] == "new_subdir":
        raise ConfigError("output.if_exists: got 'new_subdir' in a distributed run; allowed 'refuse' (the "
                          "processes must agree on one run directory: give --out a new one)")
    # ---- nothing was written before this line -----------------------------------------
    from klrl.provenance import provenance

    prov = provenance()  # once per run: config, summary and timing name the same commit
    if task is not None:
        out_dir = task.directory(out_dir)
    if not exp.envs:
        out = resolve_out_dir(out_dir, exp, resume, task=task)
        barrier("klrl: output checked")   # every process has looked before the primary writes
        _guarded(processes, _run, exp, runs[0][1], out, config_path, overrides, resume, prov, counter=[0])
        return out
    root = resolve_out_dir(out_dir, exp, resume, record=SWEEP_RECORD, task=task)
    resumes = {e.static.env.name: resume and os.path.isfile(os.path.join(root, e.static.env.name, "config.json"))
               for e, _ in runs}
    barrier("klrl: output checked")
    if not resume and is_primary():
        os.makedirs(root, exist_ok=True)
        _write_json(os.path.join(root, SWEEP_RECORD), {
            "config": exp.resolved(), "config_hash": exp.config_hash(), "schema_version": SCHEMA_VERSION,
            "config_file": config_path,
            "overrides": list(overrides), "runs": {e: e for e in exp.envs},
            **({"task": task.record} if task else {}), "provenance": prov})
    summaries, counter = {}, [0]          # chunks counted over the whole sweep (the kill hook's)
    for e, prepared in runs:
        name = e.static.env.name
        sub = os.path.join(root, name)
        _log(f"klrl: sweep over env.name: {name} ({exp.envs.index(name) + 1}/{len(exp.envs)})")
        summaries[name] = _guarded(processes, _run, e, prepared, sub, config_path, [*overrides, f"env.name={name}"],
                                   resumes[name], prov, counter)
    if not is_primary():
        return root
    _write_json(os.path.join(root, "summary.json"), {"summary": summaries, "provenance": prov})
    return root
