"""Run directories without training, for the tests of code that only READS runs (notebooks).

`fabricate(toml, out, overrides, ...)` resolves an experiment exactly as `klrl train` does
(klrl.config, klrl.population) and writes what the runner would write — config.json (and
sweep.json for a sweep over env.name), metrics.csv, final_eval.csv, summary.json — through the
library's own writers (klrl.results, klrl.rundir, klrl.summary), with made-up metric values: a
seeded random walk per member, NaN where `nan_every` says no evaluation episode ended. So the
files have the real format, the real member table and the real summary, and a test recomputes
every number it checks from them. What is fabricated: the values, and the provenance.
"""

from __future__ import annotations

import json
import os

import numpy as np

from klrl.config import load_experiment
from klrl.population import build_populations
from klrl.results import MetricsWriter, TidyWriter, format_chunk, header, score_rule
from klrl.rundir import SWEEP_RECORD, member_table, run_record, sweep_record
from klrl.summary import summary_rows
from klrl.tasks import split_populations

PROVENANCE = {"commit": "fabricated0000", "versions": {"klrl": "test"}, "device": {"platform": "cpu"}}


def _write_json(path, obj):
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=2)


def _values(rng, shape, scale):
    """A noisy rising curve per member: [chunks, M] non-negative floats."""
    drift = rng.uniform(0.2, 1.0, size=shape[1])
    walk = np.cumsum(rng.uniform(0.0, 1.0, size=shape) * drift, axis=0)
    return (scale * walk / shape[0]).astype(np.float32)


def _run_dir(exp, out, overrides, *, seed, finished, final_eval, nan_every, stop_after_agent, scale, task):
    pops = build_populations(exp)
    columns = pops[0].columns
    members = {"members": member_table(pops)}
    if task is not None:                     # an array task: its share of the members (klrl.tasks)
        pops = split_populations(pops, task, exp.static.train.replay_mode)
        members.update(task=task.record, task_members=[m.member for p in pops for m in p.members])
    os.makedirs(out, exist_ok=True)
    _write_json(os.path.join(out, "config.json"), run_record(exp, "fabricated", overrides, members, PROVENANCE))
    t = exp.static.train
    chunks = t.total_steps // t.chunk_steps
    metrics_path = os.path.join(out, "metrics.csv")
    writer = MetricsWriter(metrics_path, columns)
    final = TidyWriter(os.path.join(out, "final_eval.csv"), header(columns)) if final_eval else None
    rng = np.random.default_rng(seed)
    for pop in pops:
        m = pop.size
        ev = _values(rng, (chunks, m), scale)
        if nan_every:
            ev[::nan_every] = np.nan
        train = _values(rng, (chunks, m), scale)
        loss = rng.uniform(0.01, 1.0, size=(chunks, m)).astype(np.float32)
        for c in range(chunks):
            step = np.full(m, (c + 1) * t.chunk_steps)
            writer.append(format_chunk(pop.members, columns, {
                "step": step, "train_return": train[c], "eval_return": ev[c], "loss": loss[c],
                "diverged": np.zeros(m, np.float32)}))
        if final is not None:
            final.append(format_chunk(pop.members, columns, {
                "step": np.full(m, t.total_steps), "final_eval_return": _values(rng, (1, m), scale)[0],
                "final_eval_episodes": np.full(m, exp.static.eval.final_episodes, np.float32)}))
        if pop.agent == stop_after_agent:
            return None                      # killed after this population: no summary.json
    summary = summary_rows(metrics_path, columns, final.path if final else None, score_rule(exp.resolved()))
    if finished:
        _write_json(os.path.join(out, "summary.json"), {"summary": summary, "provenance": PROVENANCE})
    return summary


def fabricate(toml, out, overrides=(), *, seed=0, finished=True, final_eval=None, nan_every=0,
              stop_after_agent=None, scale=10.0, task=None):
    """Write the run directory (or, for a sweep over env.name, the sweep's root with one run
    directory per env) that `klrl train TOML --out OUT --set OVERRIDES` would leave.

    finished: write summary.json (the runner's mark of a finished run); stop_after_agent: stop
    after that agent's population (an interrupted run); final_eval: write final_eval.csv
    (default: when train.final_eval_episodes > 0); nan_every: every k-th chunk's eval_return is
    NaN (no test episode ended then, as concurrent evaluation reports); scale: returns' size;
    task: a klrl.tasks.Task, to write that array task's directory `OUT/task-I/` (no sweep)."""
    exp = load_experiment(str(toml), list(overrides))
    if final_eval is None:
        final_eval = exp.static.eval.final_episodes > 0
    kw = dict(finished=finished, final_eval=final_eval, nan_every=nan_every, stop_after_agent=stop_after_agent,
              scale=scale)
    if task is not None:
        assert not exp.envs, "fabricate: an array task of a sweep over env.name is not supported"
        return _run_dir(exp, task.directory(str(out)), overrides, seed=seed, task=task, **kw)
    kw["task"] = None
    if not exp.envs:
        return _run_dir(exp, str(out), overrides, seed=seed, **kw)
    os.makedirs(out, exist_ok=True)
    _write_json(os.path.join(out, SWEEP_RECORD), sweep_record(exp, "fabricated", overrides, None, PROVENANCE))
    summaries = {}
    for i, e in enumerate(exp.per_env()):
        name = e.static.env.name
        summaries[name] = _run_dir(e, os.path.join(out, name), [*overrides, f"env.name={name}"], seed=seed + i, **kw)
    if finished:
        _write_json(os.path.join(out, "summary.json"), {"summary": summaries, "provenance": PROVENANCE})
    return summaries
