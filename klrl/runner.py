"""The host loop: experiment file -> populations -> run directory.

`run_experiment(config_path, out_dir, overrides, resume)` (what `klrl train|sweep` calls):

1. Validate everything (config, overrides, grid, output directory) BEFORE compiling and
   before writing anything: a `ConfigError` leaves no trace, not even the directory.
2. Write `config.json` (resolved config, its hash, member table, provenance).
3. For each agent, in order: one population (grid x seeds), one jitted `run_chunk`, run by
   the chunk loop (klrl.loop) whose hooks (klrl.hooks) append the chunk's rows to
   `metrics.csv` (flushed: a killed run's rows are on disk), print a progress line on
   stderr, report newly diverged members, and every `output.checkpoint_every` chunks (and at
   the end) save an orbax checkpoint of the full learner state plus the metrics so far.
4. Write `summary.json` (klrl.summary, scored by the run's `eval.score` rule) and
   `timing.json`, print the summary table, draw the figures.

The chosen trackers (`output.sinks`, klrl.tracking) get each chunk's rows right after
metrics.csv, one tracked run per member. With `stop` (klrl.stopping.StopSignals, what the
CLI passes) a first SIGTERM / SIGUSR1 / SIGINT ends the run after the chunk in flight, with
its rows and a checkpoint written, by raising `Stopped` from here (not from inside the loop).

The run directory, what it records and how `--resume` continues it are klrl.rundir's: the
config hash must match the run's, metrics.csv is rebuilt from the checkpoints' metrics and
each population restarts from its latest checkpoint; with checkpointable envs the finished
file is byte-identical to an uninterrupted run's on the same machine (a host pool is
re-reset, klrl.rundir.resumed_state). `KILL_ENV` (klrl.hooks) is the tests' way to kill a
run after a given chunk.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

from klrl import placement, relayout
from klrl.config import Experiment, load_experiment
from klrl.distributed import DistributedError, any_process, barrier, is_primary
from klrl.dryrun import ignored_notice
from klrl.errors import ConfigError
from klrl.hooks import (
    KILL_ENV, Checkpoints, DivergenceLog, KillAfterChunks, MetricsRows, ProgressLog, kill_after, log, nanmedian,
)
from klrl.loop import LoopRun, run_chunks
from klrl.population import Population, build_populations
from klrl.results import MetricsWriter, score_rule
from klrl.rundir import (
    METRICS, RUN_RECORD, SUMMARY, SWEEP_RECORD, Discard, FinalEvalFile, checkpointed_rows, checkpointer, layout,
    member_table, read_record, resolve_out_dir, resumed_state, run_record, saved_state, sweep_record, write_json,
)
from klrl.sharding import ShardedTrainer, population_mesh
from klrl.stopping import StopOnSignal, Stopped, StopSignals, pause_hooks
from klrl.summary import print_summary, run_summary
from klrl.tasks import Task, split_populations
from klrl.tracking import check_sinks, tracking_group, tracking_hooks


def initial_state(pop: Population, trainer, sharded: ShardedTrainer, keys, hparams):
    """A population's fresh state on its devices (π_ref's parameters loaded on the host and
    passed to the program; a host pool reset outside it, per shard)."""
    ref_params = sharded.put_replicated(trainer.reference.load() if trainer.reference is not None else ())
    return sharded.init(keys, hparams, ref_params, sharded.env_start(pop.keys, keys, 0))


def _start_state(pop: Population, pop_static, trainer, sharded: ShardedTrainer, keys, hparams, ckpt, resume: bool):
    """(state, metric history, chunks done): a fresh initial state, or with `resume` the
    latest checkpoint's (klrl.rundir.resumed_state), re-laid when it was written on another
    device count (klrl.relayout)."""
    # A host pool's reset (initial_state) is the same call that re-resets it on resume.
    state = initial_state(pop, trainer, sharded, keys, hparams)
    if not (resume and ckpt.latest_step() is not None):
        if resume:
            log(f"[{pop.agent}] no checkpoint yet in {ckpt.directory}: starting from chunk 0")
        return state, {}, 0
    rules = relayout.rules_of(pop_static)
    restored, history, meta, old = relayout.restore(ckpt, sharded, saved_state(state, trainer), rules)
    start = int(meta["chunks_done"])
    log(f"[{pop.agent}] resumed at chunk {start}/{trainer.num_chunks} from {ckpt.directory}"
        + ("" if trainer.traits.checkpointable else "; the env pool was re-reset (it cannot be checkpointed)"))
    if old is not None:      # written on another device count
        log(f"[{pop.agent}] " + relayout.describe(old, relayout.Layout(sharded.shards, sharded.local, pop.size),
                                                  rules.shared, trainer.traits.checkpointable))
    return resumed_state(restored, state, sharded, pop.keys, keys, start), history, start


def _final_evaluation(exp: Experiment, pop: Population, sharded: ShardedTrainer, state, keys, hparams,
                      final: FinalEvalFile) -> float:
    """The final evaluation of a trained population into final_eval.csv; returns its seconds."""
    from klrl.train import FINAL_EVAL_SALT

    t = time.perf_counter()
    # A fresh reset of every env (a host call for pools), then one jitted loop of episodes.
    result = sharded.to_host(sharded.final_eval(state, hparams, sharded.env_start(pop.keys, keys, FINAL_EVAL_SALT)))
    final.append(pop, result)
    seconds = round(time.perf_counter() - t, 3)
    log(f"[{pop.agent}] final evaluation: {int(result['final_eval_episodes'].min())}+ episodes per member at "
        f"eps {exp.static_config(pop.agent).eval.epsilon:g}, median return "
        f"{nanmedian(result['final_eval_return']):.1f} ({seconds:.0f}s)")
    return seconds


def run_population(exp: Experiment, pop: Population, trainer, out: str, writer: MetricsWriter, resume: bool,
                   chunk_counter: list[int], final: FinalEvalFile | None = None, tracking=None,
                   stop: StopSignals | None = None, devices: int | None = None) -> dict:
    """Train one population to the end (resuming from its checkpoint if asked) on `devices`
    devices (default: every one), then run its final evaluation when the config asks for one
    (`final`, unless already written); returns timing. `tracking(pop)` makes the population's
    klrl.tracking hook; `stop`: see the module docstring."""
    import jax

    static = exp.static_config(pop.agent)
    M = pop.size
    # The population on `devices` devices (klrl.sharding): padded to a multiple of the device
    # count, one program per shard; everything below sees the M real members only.
    sharded = ShardedTrainer(trainer, M, mesh=population_mesh(jax.devices()[:devices] if devices else None))
    keys = sharded.put_members(pop.keys)
    hparams = {k: sharded.put_members(v) for k, v in pop.hparams.items()}

    ckpt = checkpointer(out, pop, exp)
    needs_final = final is not None and pop.agent not in final.done
    if resume and ckpt.latest_step() == trainer.num_chunks and not needs_final:   # finished: nothing to compile
        chunk_counter[0] += trainer.num_chunks
        ckpt.close()
        log(f"[{pop.agent}] already finished ({trainer.num_chunks} chunks checkpointed)")
        return {"agent": pop.agent, "members": M, "skipped": True}

    t0 = time.perf_counter()
    state, history, start = _start_state(pop, static, trainer, sharded, keys, hparams, ckpt, resume)
    step_fn = sharded.run_chunk().lower(state, hparams).compile() if start < trainer.num_chunks else None
    compile_s = time.perf_counter() - t0
    on = (f" on {sharded.shards} device{'s' if sharded.shards > 1 else ''} of {jax.device_count()}"
          + (f" (+{sharded.padded - M} padding)" if sharded.padded > M else ""))
    log(f"[{pop.agent}] {M} members{on}, {trainer.num_chunks} chunks of {static.train.chunk_steps} steps; "
        f"init+compile {compile_s:.1f}s")

    hooks = [MetricsRows(writer), *([tracking(pop)] if tracking else []), DivergenceLog(),
             ProgressLog(static.train.total_steps, static.train.learning_starts),
             *([StopOnSignal(stop, any_process)] if stop else []),
             Checkpoints(ckpt, exp.checkpoint_every, lambda s: saved_state(s, trainer),   # (also on a stop)
                         {"agent": pop.agent, "members": M, **layout(M, sharded.shards)}),
             KillAfterChunks(chunk_counter, kill_after(), ckpt.close), *pause_hooks()]
    run = LoopRun(pop, num_chunks=trainer.num_chunks, chunk_steps=static.train.chunk_steps, start=start, state=state,
                  history=history)
    run = run_chunks(step_fn, hparams, run, hooks, sharded.to_host)
    if run.stop and stop is not None and run.done < trainer.num_chunks:    # (a stop after the last chunk: done)
        raise stop.stopped(pop.agent, run.done, trainer.num_chunks)
    timing = {
        "agent": pop.agent, "members": M, "compile_seconds": round(compile_s, 3),
        "run_seconds": round(run.run_seconds, 3), "env_steps_per_member": run.steps_done,
        "agent_steps_per_second": round(M * run.steps_done / max(run.run_seconds, 1e-9), 1),
        "resumed_at_chunk": start, "devices": sharded.shards,
    }
    if needs_final and run.done == trainer.num_chunks:     # (a hook may have stopped the loop early)
        timing["final_eval_seconds"] = _final_evaluation(exp, pop, sharded, run.state, keys, hparams, final)
    return timing


def prepare(exp: Experiment, task: Task | None = None, record: dict | None = None):
    """The populations (an array task's share of them), their (uncompiled) programs, what
    config.json records about the members (the whole run's table; with a task, the split and
    the members it trains) and where they run ("placement": the device count per agent and the
    `auto` keys resolved, klrl.placement; a resumed run passes its `record`), and a line to
    report or "". The engine's own checks run here, so a bad config is refused before anything
    is written."""
    import jax

    from klrl.train import check_members, make_train

    pops = build_populations(exp)
    members = {"members": member_table(pops)}
    if task is not None:
        pops = split_populations(pops, task, exp.static.train.replay_mode)
        members.update(task=task.record, task_members=[m.member for p in pops for m in p.members])
    platform, available = jax.default_backend(), jax.device_count()
    placed, note = placement.resolve_for_run(exp.static, platform, record)
    values = placement.effective(placed)
    trainers = [make_train(placement.resolve(exp.static_config(pop.agent), values)) for pop in pops]
    devices = {pop.agent: placement.shard_count(exp.values[placement.DEVICES], available, pop.size,
                                                exp.static.train.replay_mode, jax.process_count()) for pop in pops}
    members["placement"] = placement.record(platform, values, devices, available)
    for pop in pops:
        check_members(exp.static_config(pop.agent), pop.size)
    score_rule(exp.resolved())         # the summary's score rule: refused now, not after training
    return pops, trainers, members, note


def _run(exp: Experiment, prepared, out: str, config_path: str, overrides: Sequence[str], resume: bool,
         prov: dict, counter: list[int], group: str = "", stop: StopSignals | None = None) -> list[dict]:
    """Train every population of `exp` into the run directory `out`; returns its summary rows.
    `group`: the tracked runs' group (klrl.tracking)."""
    pops, trainers, members, note = prepared
    columns = pops[0].columns
    metrics_path = os.path.join(out, METRICS)
    primary = is_primary()
    if resume:
        prefix = checkpointed_rows(out, pops, exp)   # rows of every checkpointed chunk, in run order
    elif primary:
        os.makedirs(out, exist_ok=True)
        write_json(os.path.join(out, RUN_RECORD), run_record(exp, config_path, overrides, members, prov))
    # Only the primary process writes files (klrl.distributed); the others train their shards.
    writer = MetricsWriter(metrics_path, columns, prefix if resume else None) if primary else Discard()
    final = (FinalEvalFile(out, pops, resume, write=primary) if exp.static.eval.final_episodes > 0
             else None)
    barrier("klrl: run directory ready")
    log(f"klrl: run directory {out}")
    if note:
        log(note)

    tracking = tracking_hooks(exp, out, group, primary)
    timing = [run_population(exp, pop, trainer, out, writer, resume, counter, final, tracking, stop,
                             devices=members["placement"]["devices"][pop.agent])
              for pop, trainer in zip(pops, trainers)]
    if not primary:
        return []

    config = exp.resolved()                        # what config.json records: the score rule too
    summary = run_summary(out, config)
    write_json(os.path.join(out, SUMMARY), {"summary": summary, "provenance": prov})
    write_json(os.path.join(out, "timing.json" if not resume else "timing_resume.json"),
               {"populations": timing, "provenance": prov})
    print_summary(summary, score=score_rule(config))
    from klrl.plotting import plot_run

    for path in plot_run(out):
        log(f"klrl: wrote {path}")
    return summary


def _guarded(processes: int, fn, *args, **kwargs):
    """`fn(*args, **kwargs)`; in a distributed run a failure (another process died, say) becomes
    one DistributedError line: the files written so far are kept and `--resume` continues."""
    if processes == 1:
        return fn(*args, **kwargs)
    import jax

    try:
        return fn(*args, **kwargs)
    except (ConfigError, Stopped):
        raise
    except Exception as err:  # noqa: BLE001 (any failure of a collective, a checkpoint, a pool)
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise DistributedError(f"process {jax.process_index()} of {processes}: {type(err).__name__}: {first} "
                               "(the run's files so far are kept; restart every process with --resume)") from err


def _notice_ignored(exp: Experiment) -> None:
    """One line, once the run is accepted: the swept values an agent does not read (klrl.dryrun)."""
    notice = ignored_notice(exp)
    if notice:
        log(notice)


def run_experiment(config_path: str, out_dir: str, overrides: Sequence[str] = (), resume: bool = False,
                   task: Task | None = None, stop: StopSignals | None = None) -> str:
    """Run (or resume) an experiment into `out_dir`; returns the run directory used (`stop`:
    see the module docstring).

    With `task` (an array job, klrl.tasks) only that task's members run, into
    `<out_dir>/task-I/` (a sweep over env.name: the sweep's root), and `klrl merge` joins them.

    A sweep over env.name runs one run directory per env, `<out>/<env>/`, in the sweep's order,
    each exactly the run `--set env.name=<env>` would make (config.json records that override).
    `<out>/sweep.json` holds the sweep's resolved config and hash (`--resume` checks it; an env
    whose directory does not exist yet starts fresh) and `<out>/summary.json` every env's
    summary. Every env's config is validated before anything is written; an env that fails
    (a pool that does not start, say) leaves the finished envs' directories intact."""
    exp = load_experiment(config_path, overrides)
    check_sinks(exp.values["output.sinks"])     # a tracker's missing extra: refused now
    base = task.directory(out_dir) if task is not None else out_dir
    # A resumed run's record (read, not checked yet) keeps the `auto` values it resolved.
    records = {e.static.env.name: read_record(os.path.join(base, e.static.env.name if exp.envs else "", RUN_RECORD))
               if resume else None for e in exp.per_env()}
    runs = [(e, prepare(e, task, records[e.static.env.name])) for e in exp.per_env()]
    import jax

    processes = jax.process_count()
    if processes > 1 and exp.values["output.if_exists"] == "new_subdir":
        raise ConfigError("output.if_exists: got 'new_subdir' in a distributed run; allowed 'refuse' (the "
                          "processes must agree on one run directory: give --out a new one)")
    # ---- nothing was written before this line -----------------------------------------
    from klrl.provenance import provenance

    prov = provenance()  # once per run: config, summary and timing name the same commit
    tracked = out_dir                     # the tracked runs' group: --out's name (an array job's tasks share it)
    if task is not None:
        out_dir = task.directory(out_dir)
    if not exp.envs:
        out = resolve_out_dir(out_dir, exp, resume, task=task)
        barrier("klrl: output checked")   # every process has looked before the primary writes
        _notice_ignored(exp)
        _guarded(processes, _run, exp, runs[0][1], out, config_path, overrides, resume, prov, counter=[0],
                 group=tracking_group(tracked), stop=stop)
        return out
    root = resolve_out_dir(out_dir, exp, resume, record=SWEEP_RECORD, task=task)
    resumes = {e.static.env.name: resume and os.path.isfile(os.path.join(root, e.static.env.name, RUN_RECORD))
               for e, _ in runs}
    barrier("klrl: output checked")
    _notice_ignored(exp)
    if not resume and is_primary():
        os.makedirs(root, exist_ok=True)
        write_json(os.path.join(root, SWEEP_RECORD), sweep_record(exp, config_path, overrides, task, prov))
    summaries, counter = {}, [0]          # chunks counted over the whole sweep (the kill hook's)
    for e, prepared in runs:
        name = e.static.env.name
        sub = os.path.join(root, name)
        log(f"klrl: sweep over env.name: {name} ({exp.envs.index(name) + 1}/{len(exp.envs)})")
        summaries[name] = _guarded(processes, _run, e, prepared, sub, config_path, [*overrides, f"env.name={name}"],
                                   resumes[name], prov, counter, tracking_group(tracked, name), stop)
    if not is_primary():
        return root
    write_json(os.path.join(root, SUMMARY), {"summary": summaries, "provenance": prov})
    return root


__all__ = ["KILL_ENV", "initial_state", "prepare", "run_experiment", "run_population"]
