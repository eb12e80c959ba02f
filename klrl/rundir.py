"""The run directory: where a run writes, what it records, and how `--resume` picks it up.

A run directory holds

    config.json       resolved config, its hash, member table, provenance (written first)
    metrics.csv       tidy rows, one chunk appended at a time (klrl.results)
    final_eval.csv    with `eval.final_episodes > 0`: the final evaluation's rows
    checkpoints/      one orbax checkpointer per agent (klrl.checkpoint)
    summary.json      at the end: the mark of a finished run (klrl.summary)
    timing.json       at the end (timing_resume.json for a resumed run)

and a sweep over env.name one such directory per env under its root, which holds sweep.json
(the sweep's resolved config and hash) and summary.json.

Policy. An existing `--out` without `--resume` is refused, unless `output.if_exists =
"new_subdir"` (klrl.output). With `--resume` the recorded config hash must match the run's
(and an array task's split, klrl.tasks); a checkpoint written on another device count is
re-laid for this one (klrl.relayout); metrics.csv is rebuilt from the checkpoints' metrics
(rows written after the last checkpoint by the killed process are recomputed, not
duplicated); final_eval.csv keeps the
rows of the populations evaluated in full. What a checkpoint holds and how a state is
resumed from it depends on whether the env state can be checkpointed (`saved_state`,
`resumed_state`).
"""

from __future__ import annotations

import csv
import json
import os
from typing import Sequence

from klrl.config import Experiment
from klrl.config_hash import SCHEMA_VERSION
from klrl.errors import ConfigError
from klrl.output import choose_out_dir
from klrl.population import Population
from klrl.results import TidyWriter, format_chunk, format_history, header
from klrl.tasks import Task, check_resumed

RUN_RECORD = "config.json"
SWEEP_RECORD = "sweep.json"   # the record of a sweep over env.name (its run directories are below it)
METRICS = "metrics.csv"
FINAL_EVAL = "final_eval.csv"
SUMMARY = "summary.json"


def write_json(path: str, obj) -> None:
    """Write `obj` as JSON atomically (a killed process leaves the old file or the new one)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False)
        fh.write("\n")
    os.replace(tmp, path)


def resolve_out_dir(out_dir: str, exp: Experiment, resume: bool, record: str = RUN_RECORD,
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


def member_table(pops: Sequence[Population]) -> list[dict]:
    """config.json's "members": one entry per member (id, seed, agent, grid index, swept values)."""
    return [
        {"member": m.member, "seed": m.seed, "agent": m.agent, "grid_index": m.grid_index,
         **{k: v for k, v in m.swept.items()}}
        for p in pops for m in p.members
    ]


def run_record(exp: Experiment, config_path: str, overrides: Sequence[str], members: dict, prov: dict) -> dict:
    """config.json: the resolved config and its hash, where it came from, the members
    (`members`: the member table, and an array task's split) and the provenance."""
    return {"config": exp.resolved(), "config_hash": exp.config_hash(), "schema_version": SCHEMA_VERSION,
            "config_file": config_path, "overrides": list(overrides), **members, "provenance": prov}


def sweep_record(exp: Experiment, config_path: str, overrides: Sequence[str], task: Task | None, prov: dict) -> dict:
    """sweep.json: the sweep's resolved config and hash, and its run directory per env."""
    return {"config": exp.resolved(), "config_hash": exp.config_hash(), "schema_version": SCHEMA_VERSION,
            "config_file": config_path, "overrides": list(overrides), "runs": {e: e for e in exp.envs},
            **({"task": task.record} if task else {}), "provenance": prov}


# ---------------------------------------------------------------------------------------
# Checkpoints and resume.


def checkpointer(out: str, pop: Population, exp: Experiment):
    """The orbax checkpointer of one population: `<out>/checkpoints/<agent>/`."""
    from klrl.checkpoint import PopulationCheckpointer

    return PopulationCheckpointer(os.path.join(out, "checkpoints", pop.agent), exp.config_hash(),
                                  also_accept=recorded_hash(out, exp))


def recorded_hash(out: str, exp: Experiment) -> tuple[str, ...]:
    """The hash config.json stored, when it names this config under an earlier schema version's
    formula (klrl.config_hash): the checkpoints written with that record carry it."""
    path = os.path.join(out, RUN_RECORD)
    if not os.path.isfile(path):
        return ()
    with open(path) as fh:
        rec = json.load(fh)
    return (rec["config_hash"],) if exp.schema.record_hash(rec) == exp.config_hash() else ()


def layout(members: int, shards: int) -> dict:
    """What a checkpoint's state layout depends on: the device count and the padded size."""
    from klrl.sharding import padded_size

    return {"devices": int(shards), "padded_members": padded_size(members, shards)}


def check_layout(ckpt, pop: Population) -> None:
    """ConfigError unless the checkpoint names its device layout (checked before anything is
    rewritten). A layout other than this run's is re-laid when the state is restored
    (klrl.relayout); one from before the sharded state layout cannot be."""
    if "devices" not in ckpt.meta():
        ckpt.close()
        raise ConfigError(f"--resume: got a checkpoint in {ckpt.directory} from before the sharded state layout "
                          "(its meta names no device count); allowed a checkpoint written by this version "
                          "(resume it with the commit that wrote it, recorded in config.json)")


def read_record(path: str) -> dict | None:
    """A run record (config.json) as a dict, or None when there is none."""
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def checkpointed_rows(out: str, pops: Sequence[Population], exp: Experiment) -> str:
    """metrics.csv's rows (no header) of every checkpointed chunk, in run order: the start of
    a resumed run's file. Each checkpoint's layout is checked first (check_layout)."""
    prefix = ""
    for pop in pops:
        ckpt = checkpointer(out, pop, exp)
        if ckpt.latest_step() is None:
            ckpt.close()
            break
        check_layout(ckpt, pop)
        _, hist = ckpt.restore_metrics()
        ckpt.close()
        prefix += format_history(pop.members, pop.columns, hist)
    return prefix


def saved_state(state, trainer):
    """What a checkpoint holds: the whole state, less the env state of a non-checkpointable pool."""
    return state if trainer.traits.checkpointable else state._replace(env=())


def resumed_state(restored, fresh, sharded, host_keys, keys, chunks_done: int):
    """The state to continue from. Checkpointable envs: exactly the saved state. A host pool:
    learner, optimizer, replay, keys, counters and the actor's carry are restored exactly;
    the pool is re-reset from seeds derived from the member keys and the chunk count, so
    episodes in flight at the checkpoint are lost and the next observation is a fresh
    episode's first (the replay never learns across the seam: klrl.replay excludes a slot
    followed by an episode start). The run still finishes with the same step count."""
    if sharded.trainer.traits.checkpointable:
        return restored
    # The saved state has no env (`saved_state`); the fresh one's stands in until reenter replaces it.
    return sharded.reenter(restored._replace(env=fresh.env), sharded.env_start(host_keys, keys, chunks_done))


# ---------------------------------------------------------------------------------------
# Writers.


class Discard:
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

    NAME = FINAL_EVAL

    def __init__(self, out: str, pops: Sequence[Population], resume: bool, write: bool = True):
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
        self.writer = TidyWriter(path, header(self.columns), kept) if write else Discard(path)

    def append(self, pop: Population, metrics: dict) -> None:
        self.writer.append(format_chunk(pop.members, self.columns, metrics))
        self.done.add(pop.agent)


__all__ = ["FINAL_EVAL", "METRICS", "RUN_RECORD", "SUMMARY", "SWEEP_RECORD", "Discard", "FinalEvalFile",
           "check_layout", "checkpointed_rows", "checkpointer", "layout", "member_table", "read_record",
           "resolve_out_dir", "resumed_state", "run_record", "saved_state", "sweep_record", "write_json"]
