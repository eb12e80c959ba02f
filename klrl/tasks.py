"""Array jobs: one run's members split over N independent tasks (`--task I --num-tasks N`).

Task I of N trains the members whose run-wide id m has `m mod N == I`, into `<out>/task-I/`,
a normal run directory (a sweep over env.name: `<out>/task-I/` holds the sweep, each env's
run split the same way). The round robin over member ids spreads every population (agent)
over the tasks, so tasks take about the same time; an agent left with no member in a task
is skipped there.

Why the pieces add up to the unsplit run: a member's key depends only on its (seed, grid
index) (klrl.population.member_keys), and with per-member replay nothing couples the members
of a population, so a member's numbers do not depend on which others share its program (up
to float rounding: XLA may pick other kernels for another population size). A shared replay
buffer would couple them, so it is refused for N > 1. The config hash does not change with
the split (tasks of one sweep share it); config.json records the split in `task`, the whole
run's member table in `members` and the members this task trained in `task_members`.
`klrl merge <out>` (klrl.merge) joins the finished tasks into the unsplit run's directory.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from klrl.errors import ConfigError
from klrl.population import Population

TASK_PREFIX = "task-"   # <out>/task-I/


@dataclass(frozen=True)
class Task:
    """Task `index` of an array job of `count` tasks."""

    index: int
    count: int

    @property
    def record(self) -> dict[str, int]:
        """What config.json (and sweep.json) store under "task"."""
        return {"task": self.index, "num_tasks": self.count}

    def directory(self, out: str) -> str:
        """The task's run directory below the array job's `--out`."""
        return os.path.join(out, f"{TASK_PREFIX}{self.index}")

    def owns(self, member: int) -> bool:
        return member % self.count == self.index

    def flags(self) -> str:
        return f"--task {self.index} --num-tasks {self.count}"


def _int_flag(flag: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{flag}: got {text!r}; allowed an integer") from None


def parse_task(task: str | None, num_tasks: str | None) -> Task | None:
    """The `--task I --num-tasks N` flags (strings, as typed) -> a Task, None when both are
    absent; a one-line ConfigError for anything else (checked before the config is read)."""
    if task is None and num_tasks is None:
        return None
    if task is None or num_tasks is None:
        given, missing = ("--task", "--num-tasks") if num_tasks is None else ("--num-tasks", "--task")
        raise ConfigError(f"{given}: got {given} without {missing}; allowed both --task and --num-tasks, or neither")
    n = _int_flag("--num-tasks", num_tasks)
    if n < 1:
        raise ConfigError(f"--num-tasks: got {n}; allowed an integer >= 1")
    i = _int_flag("--task", task)
    if not 0 <= i < n:
        raise ConfigError(f"--task: got {i}; allowed 0..{n - 1} (0 <= I < --num-tasks {n})")
    return Task(i, n)


def subset_population(pop: Population, keep: Sequence[bool]) -> Population:
    """`pop` restricted to the members where `keep` is true (ids, keys and hparams kept)."""
    keep = np.asarray(keep, dtype=bool)
    members = tuple(m for m, k in zip(pop.members, keep) if k)
    return dataclasses.replace(pop, members=members, keys=pop.keys[keep],
                               hparams={n: v[keep] for n, v in pop.hparams.items()})


def split_populations(pops: Sequence[Population], task: Task, replay_mode: str) -> list[Population]:
    """The task's share of a run's populations (agents without a member in it dropped).
    Refuses, before anything is written, a split that could not add up to the unsplit run:
    one with an empty task, or a shared replay buffer over several tasks."""
    total = sum(p.size for p in pops)
    if task.count > 1 and replay_mode == "shared":
        raise ConfigError(f"--num-tasks: got {task.count} with train.replay_mode = \"shared\"; allowed "
                          "--num-tasks 1, or train.replay_mode = \"per-member\" (a shared buffer would be "
                          "shared only within each task, so the merged run would not equal the unsplit one)")
    if task.count > total:
        raise ConfigError(f"--num-tasks: got {task.count}; allowed 1..{total} (the run has {total} members: "
                          "a larger split leaves some task empty)")
    share = [subset_population(p, [task.owns(m.member) for m in p.members]) for p in pops]
    return [p for p in share if p.size]


def check_resumed(record: Mapping, task: Task | None, out_dir: str) -> None:
    """A `--resume` continues a run as it was started: the same split (or none), and never a
    merged array job (it has no checkpoints: resume each task instead)."""
    if "merged_from" in record:
        raise ConfigError(f"--resume: got --out {out_dir!r} which holds a merged array job (klrl merge); "
                          "allowed a task's run: --out <the array job's out> --task I --num-tasks N --resume")
    old = record.get("task")
    new = task.record if task is not None else None
    if old != new:
        ran = f"task {old['task']} of {old['num_tasks']}" if old else "an unsplit run"
        asked = f"task {task.index} of {task.count}" if task else "an unsplit run"
        flags = f"--task {old['task']} --num-tasks {old['num_tasks']}" if old else "no --task/--num-tasks"
        raise ConfigError(f"--resume: got {asked} for {out_dir!r}, which holds {ran}; allowed {flags}")


__all__ = ["TASK_PREFIX", "Task", "check_resumed", "parse_task", "split_populations", "subset_population"]
