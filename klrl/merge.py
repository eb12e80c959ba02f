"""`klrl merge OUT`: the finished tasks of an array job -> the unsplit run's directory in OUT.

An array job (klrl.tasks) leaves `OUT/task-0/ ... OUT/task-(N-1)/`, each a run directory
holding some of the run's members. The merge first checks, writing nothing on a failure
(one-line ConfigError), that every task 0..N-1 is there, that all agree on the config hash
and on N, that each has finished (summary.json), that together they trained every member of
the run exactly once, and that OUT holds no merged run yet. It then writes into OUT what the
unsplit run writes:

- metrics.csv (and final_eval.csv when the tasks have one): the tasks' rows, text unchanged,
  in the unsplit run's order: population by population in agent order, chunk by chunk, the
  members in member order within a chunk, the metrics in their order (klrl.results.format_chunk);
- summary.json from those rows, scored by the run's rule (klrl.summary.run_summary with the
  tasks' recorded config, its `eval.score`), the figures (klrl.plotting);
- timing.json listing each task's timing files;
- config.json: the tasks' record (resolved config, hash, full member table) less the split,
  with the training provenance of task 0 and `merged_from` (the task directories, relative
  to the merged directory). It is written after the result files, so an OUT holding a
  config.json is a finished merge, and a merge killed before it can simply be run again.

A sweep over env.name (each task a sweep: sweep.json, one directory per env) is merged env
by env into `OUT/<env>/`, then OUT/summary.json and, last, OUT/sweep.json, as an unsplit
sweep writes them. Every file is written atomically (tmp + os.replace).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections import Counter
from typing import Sequence

from klrl.errors import ConfigError
from klrl.results import TidyWriter, score_rule
from klrl.rundir import FINAL_EVAL, METRICS, RUN_RECORD, SUMMARY, SWEEP_RECORD, write_json
from klrl.summary import print_summary, run_summary
from klrl.tasks import TASK_PREFIX

SPLIT_KEYS = ("task", "task_members")        # what a task's record adds to an unsplit run's


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _load(path: str) -> dict:
    with open(path) as fh:
        return json.load(fh)


def find_tasks(out: str) -> list[str]:
    """The task directories `OUT/task-I/` ordered by I (other entries of OUT are ignored)."""
    if not os.path.isdir(out):
        raise ConfigError(f"merge: got {out!r}; allowed an existing directory (the --out of an array job)")
    found = {}
    for name in os.listdir(out):
        index = name[len(TASK_PREFIX):]
        if name.startswith(TASK_PREFIX) and index.isdigit() and os.path.isdir(os.path.join(out, name)):
            found[int(index)] = os.path.join(out, name)
    if not found:
        raise ConfigError(f"merge: got {out!r} with no {TASK_PREFIX}I directory; allowed the --out of "
                          "`klrl train CONFIG --out OUT --task I --num-tasks N` runs")
    return [found[i] for i in sorted(found)]


def _same_config(a: dict, b: dict) -> bool:
    """Records of one config whose hashes differ only by the schema version that wrote them
    (a task started after an upgrade; klrl.config_hash)."""
    from klrl.config import engine_schema

    schema = engine_schema()
    return schema.record_hash(a) == schema.record_hash(b)


def check_tasks(out: str, dirs: Sequence[str], record: str) -> list[dict]:
    """The tasks' records (`record`: config.json, or sweep.json for a sweep over env.name),
    after checking that they are the N finished tasks of one split of one config."""
    records = []
    for d in dirs:
        path = os.path.join(d, record)
        rec = _load(path) if os.path.isfile(path) else {}
        if not isinstance(rec.get("task"), dict):
            raise ConfigError(f"merge: got {d!r} which holds no array task ({record} without a \"task\" field); "
                              f"allowed directories written by `klrl train ... --task I --num-tasks N`")
        records.append(rec)
    first, n = records[0], records[0]["task"]["num_tasks"]
    for d, rec in zip(dirs, records):
        if rec["task"]["num_tasks"] != n:
            raise ConfigError(f"merge: got {d!r} of --num-tasks {rec['task']['num_tasks']} next to "
                              f"{dirs[0]!r} of {n}; allowed the tasks of one split")
        if rec.get("config_hash") != first.get("config_hash") and not _same_config(rec, first):
            raise ConfigError(f"merge: got {d!r} with config hash {str(rec.get('config_hash'))[:12]}, "
                              f"{dirs[0]!r} with {str(first.get('config_hash'))[:12]}; allowed the tasks of "
                              "one run (same resolved config)")
    indices = [rec["task"]["task"] for rec in records]
    if indices != list(range(n)):
        missing = sorted(set(range(n)) - set(indices))
        raise ConfigError(f"merge: got tasks {', '.join(map(str, indices))} of {n} in {out!r}"
                          + (f" (missing {', '.join(TASK_PREFIX + str(i) for i in missing)})" if missing else "")
                          + f"; allowed every task 0..{n - 1}")
    for i, d in enumerate(dirs):
        if not os.path.isfile(os.path.join(d, "summary.json")):
            raise ConfigError(f"merge: got unfinished {d!r} (no summary.json); allowed finished tasks "
                              f"(resume it: klrl train CONFIG --out {out} --task {i} --num-tasks {n} --resume)")
    return records


def check_run(dirs: Sequence[str], records: Sequence[dict]) -> None:
    """The tasks of one run directory fit together: they trained every member of the run's
    table exactly once, and have a final_eval.csv all or none; their score rule is valid."""
    score_rule(records[0]["config"])
    ran = [m for rec in records for m in rec["task_members"]]
    table = [m["member"] for m in records[0]["members"]]
    if sorted(ran) != sorted(table):
        missing = sorted(set(table) - set(ran))
        twice = sorted({m for m, k in Counter(ran).items() if k > 1} | (set(ran) - set(table)))
        raise ConfigError(f"merge: got tasks in {os.path.dirname(dirs[0])!r} that trained no member {missing} and "
                          f"{twice} twice or outside the run; allowed every member of the run exactly once")
    finals = [os.path.isfile(os.path.join(d, FINAL_EVAL)) for d in dirs]
    if any(finals) and not all(finals):
        raise ConfigError(f"merge: got {FINAL_EVAL} in {finals.count(True)} of {len(dirs)} tasks; allowed all or none")


def ordered_rows(paths: Sequence[str], members: Sequence[dict]) -> tuple[list[str], str]:
    """(header, CSV text) of the tidy files `paths` (one per task) with their rows in the
    unsplit run's order. Within a task's file a member's rows come chunk by chunk, so the
    k-th row of a (member, metric) is from chunk k; a stable sort on (agent's rank, chunk,
    member) keeps the metrics of a member's chunk in their written order."""
    agents = list(dict.fromkeys(m["agent"] for m in members))
    rank = {m["member"]: agents.index(m["agent"]) for m in members}
    head, keyed = None, []
    for path in paths:
        with open(path, newline="") as fh:
            lines = fh.read().splitlines(keepends=True)
        this = next(csv.reader(lines[:1]))
        if head is not None and this != head:
            raise ConfigError(f"merge: got {path!r} with header {','.join(this)}; allowed the header of the "
                              f"other tasks' files ({','.join(head)})")
        head, metric_at, seen = this, this.index("metric"), {}
        for line in lines[1:]:
            cells = next(csv.reader([line]))
            member = int(cells[0])
            chunk = seen.get((member, cells[metric_at]), 0)
            seen[(member, cells[metric_at])] = chunk + 1
            keyed.append(((rank[member], chunk, member), line))
    keyed.sort(key=lambda kv: kv[0])
    return head, "".join(line for _, line in keyed)


def merged_record(records: Sequence[dict], dirs: Sequence[str], out: str) -> dict:
    """The unsplit run's config.json (or sweep.json) from its tasks': task 0's, less the
    split, plus `merged_from` (the task directories, relative to `out`)."""
    record = {k: v for k, v in records[0].items() if k not in SPLIT_KEYS}
    record["merged_from"] = [os.path.relpath(d, out) for d in dirs]
    return record


def _timing(task_dir: str, index: int, base: str) -> dict:
    """One task's entry of timing.json: its timing.json and timing_resume.json, as written."""
    entry = {"task": index, "run_dir": os.path.relpath(task_dir, base)}
    for name in ("timing.json", "timing_resume.json"):
        path = os.path.join(task_dir, name)
        if os.path.isfile(path):
            entry[name.removesuffix(".json")] = _load(path)
    return entry


def merge_run(task_dirs: Sequence[str], records: Sequence[dict], out: str) -> list[dict]:
    """Write the unsplit run's directory `out` from its tasks' run directories; returns the
    summary rows. `records` are the tasks' config.json contents (checked by the caller:
    check_tasks, check_run)."""
    from klrl.plotting import plot_run

    members = records[0]["members"]
    os.makedirs(out, exist_ok=True)
    prov = records[0]["provenance"]
    commits = sorted({str(rec["provenance"].get("commit")) for rec in records})
    if len(commits) > 1:
        _log(f"klrl merge: note: the tasks ran on different commits ({', '.join(commits)}); "
             "config.json records task 0's provenance, timing.json every task's")

    TidyWriter(os.path.join(out, METRICS), *ordered_rows([os.path.join(d, METRICS) for d in task_dirs], members))
    if os.path.isfile(os.path.join(task_dirs[0], FINAL_EVAL)):      # then every task has one (check_run)
        TidyWriter(os.path.join(out, FINAL_EVAL), *ordered_rows([os.path.join(d, FINAL_EVAL) for d in task_dirs],
                                                                 members))

    config = records[0]["config"]                  # the run's resolved config: its score rule too
    summary = run_summary(out, config)
    write_json(os.path.join(out, SUMMARY), {"summary": summary, "provenance": prov})
    write_json(os.path.join(out, "timing.json"),
                {"tasks": [_timing(d, i, out) for i, d in enumerate(task_dirs)], "provenance": prov})
    write_json(os.path.join(out, RUN_RECORD), merged_record(records, task_dirs, out))   # last: complete
    _log(f"klrl merge: {len(task_dirs)} tasks -> run directory {out} ({len(members)} members)")
    print_summary(summary, score=score_rule(config))
    for path in plot_run(out):
        _log(f"klrl merge: wrote {path}")
    return summary


def merge(out: str) -> str:
    """Merge the array job in `out` (see the module docstring); returns `out`."""
    dirs = find_tasks(out)
    sweep = os.path.isfile(os.path.join(dirs[0], SWEEP_RECORD))
    for name in (RUN_RECORD, SWEEP_RECORD):
        if os.path.isfile(os.path.join(out, name)):
            raise ConfigError(f"merge: got {out!r} which already holds a merged run ({name}); allowed an "
                              "array job's --out that is not merged yet")
    records = check_tasks(out, dirs, SWEEP_RECORD if sweep else RUN_RECORD)
    # (merged directory, its tasks' directories, their records): one run, or one per env.
    runs = [(out, dirs, records)]
    if sweep:
        runs = []
        for env in records[0]["runs"]:
            env_dirs = [os.path.join(d, env) for d in dirs]
            runs.append((os.path.join(out, env), env_dirs, check_tasks(out, env_dirs, RUN_RECORD)))
    for _, run_dirs, run_records in runs:          # every check before the first write
        check_run(run_dirs, run_records)

    summaries = {}
    for k, (target, run_dirs, run_records) in enumerate(runs):
        if sweep:
            _log(f"klrl merge: sweep over env.name: {os.path.basename(target)} ({k + 1}/{len(runs)})")
        summaries[os.path.basename(target)] = merge_run(run_dirs, run_records, target)
    if sweep:
        prov = records[0]["provenance"]
        write_json(os.path.join(out, SUMMARY), {"summary": summaries, "provenance": prov})
        write_json(os.path.join(out, SWEEP_RECORD), merged_record(records, dirs, out))   # last: complete
    return out


__all__ = ["check_run", "check_tasks", "find_tasks", "merge", "merge_run", "ordered_rows"]
