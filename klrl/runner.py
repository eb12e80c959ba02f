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
from klrl.results import MetricsWriter, format_chunk, format_history, read_metrics, summarize

# Test-only: after this many chunks (counted over the whole run, restored ones included)
# the process SIGKILLs itself, after that chunk's rows and checkpoint are written.
KILL_ENV = "KLRL_TEST_KILL_AFTER_CHUNKS"


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


def resolve_out_dir(out_dir: str, exp: Experiment, resume: bool) -> str:
    """The directory this run writes to; refuses to overwrite an existing run (no writes).
    Without --resume: klrl.output's policy (`output.if_exists`)."""
    if resume:
        cfg_path = os.path.join(out_dir, "config.json")
        if not os.path.isfile(cfg_path):
            raise ConfigError(f"--resume: got --out {out_dir!r} which holds no run (no config.json); "
                              "allowed the directory of an earlier run")
        with open(cfg_path) as fh:
            old = json.load(fh).get("config_hash")
        if old != exp.config_hash():
            raise ConfigError(f"--resume: got a config whose hash {exp.config_hash()[:12]} differs from the "
                              f"run's {str(old)[:12]} in {out_dir!r}; allowed the same resolved config "
                              "(same file and --set values)")
        return out_dir
    return choose_out_dir(out_dir, exp.values["output.if_exists"], flag="--out",
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


def run_population(exp: Experiment, pop: Population, trainer, out: str, writer: MetricsWriter, resume: bool,
                   chunk_counter: list[int]) -> dict:
    """Train one population to the end (resuming from its checkpoint if asked); returns timing."""
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
    if resume and ckpt.latest_step() == trainer.num_chunks:   # finished before: nothing to compile
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
    step_fn = jitted.lower(state, hparams).compile()
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
    return {
        "agent": pop.agent, "members": M, "compile_seconds": round(compile_s, 3),
        "run_seconds": round(run_s, 3), "env_steps_per_member": steps_done,
        "agent_steps_per_second": round(M * steps_done / max(run_s, 1e-9), 1),
        "resumed_at_chunk": start,
    }


def summary_rows(metrics_path: str, columns: Sequence[str]) -> list[dict]:
    """Per group (agent + swept values): final eval return over seeds, diverged members."""
    from klrl.results import final_scores, group_label

    rows = read_metrics(metrics_path)
    finals = final_scores(rows, "eval_return", columns)
    div = final_scores(rows, "diverged", columns)
    out = []
    for key, scores in finals.items():
        out.append({"group": group_label(key, columns), "agent": key[0],
                    **{c: v for c, v in zip(columns, key[1:])},
                    "final_eval_return": summarize(scores), "final_eval_returns": [float(s) for s in scores],
                    "diverged_members": int(np.nansum(div.get(key, np.zeros(0)) > 0))})
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


def run_experiment(config_path: str, out_dir: str, overrides: Sequence[str] = (), resume: bool = False) -> str:
    """Run (or resume) an experiment into `out_dir`; returns the run directory used."""
    exp = load_experiment(config_path, overrides)
    out = resolve_out_dir(out_dir, exp, resume)
    pops = build_populations(exp)
    columns = pops[0].columns
    from klrl.train import make_train

    # The engine's own checks (make_train builds the program without compiling it) also run
    # before anything is written.
    trainers = [make_train(exp.static_config(pop.agent)) for pop in pops]
    from klrl.train import check_members

    for pop in pops:
        check_members(exp.static_config(pop.agent), pop.size)
    # ---- nothing was written before this line -----------------------------------------
    from klrl.provenance import provenance

    prov = provenance()  # once per run: config, summary and timing name the same commit
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
            "overrides": list(overrides), "members": _member_table(pops), "provenance": prov,
        }
        with open(os.path.join(out, "config.json"), "w") as fh:
            json.dump(record, fh, indent=2, sort_keys=False)
            fh.write("\n")
        writer = MetricsWriter(metrics_path, columns)
    _log(f"klrl: run directory {out}")

    counter = [0]
    timing = [run_population(exp, pop, trainer, out, writer, resume, counter) for pop, trainer in zip(pops, trainers)]

    summary = summary_rows(metrics_path, columns)
    with open(os.path.join(out, "summary.json"), "w") as fh:
        json.dump({"summary": summary, "provenance": prov}, fh, indent=2)
        fh.write("\n")
    timing_path = os.path.join(out, "timing.json" if not resume else "timing_resume.json")
    with open(timing_path, "w") as fh:
        json.dump({"populations": timing, "provenance": prov}, fh, indent=2)
        fh.write("\n")
    print_summary(summary)
    from klrl.plotting import plot_run

    for path in plot_run(out):
        _log(f"klrl: wrote {path}")
    return out
