"""Scores across tasks: reference tables, per-task normalization, aggregates with CIs.

- Atari reference tables shipped in klrl/data (their provenance is the comment block at the
  top of each file): random and human scores of the 57 games, and published Atari-100k
  per-game scores (DER, DrQ, SPR).
- Normalization per task: human-normalized (s − random)/(human − random) (Mnih et al. 2015),
  min–max over a set of reference scores, or relative to a baseline's score.
- Aggregates over a [runs, tasks] matrix, as defined by Agarwal et al. (2021, "Deep RL at the
  edge of the statistical precipice"): IQM over all runs × tasks, the mean over tasks of the
  per-task mean, the median over tasks of the per-task mean, each with a percentile
  stratified-bootstrap 95% CI (runs resampled within each task; `klrl.results`).

Game names are matched loosely (`BankHeist`, `bank_heist` and `BankHeist-v5` are one game).
"""

from __future__ import annotations

import csv
import functools
import os
import re
from typing import Callable, Mapping

import numpy as np

from klrl.results import iqm, stratified_bootstrap_ci

DATA_DIR = os.path.join(os.path.dirname(__file__), "data")


def game_key(name: str) -> str:
    """Loose game key: `BankHeist-v5` / `bank_heist` / `BankHeist` -> `bankheist`."""
    return re.sub(r"-v\d+$", "", str(name)).replace("_", "").replace("-", "").lower()


@functools.lru_cache(maxsize=None)
def table(name: str) -> dict[str, dict[str, float]]:
    """A shipped CSV (`atari_human_random` or `atari100k_published`) as game key -> column -> value."""
    path = os.path.join(DATA_DIR, f"{name}.csv")
    with open(path, newline="") as fh:
        rows = [line for line in fh if line.strip() and not line.startswith("#")]
    reader = csv.DictReader(rows)
    return {game_key(r["game"]): {k: float(v) for k, v in r.items() if k != "game"} for r in reader}


def atari_games(subset: str = "atari100k") -> tuple[str, ...]:
    """Games of a subset column of the random/human table (`atari100k`: 26, `atari5`: 5)."""
    with open(os.path.join(DATA_DIR, "atari_human_random.csv"), newline="") as fh:
        rows = csv.DictReader(line for line in fh if line.strip() and not line.startswith("#"))
        return tuple(r["game"] for r in rows if float(r[subset]) == 1)


def human_normalized(game: str, score):
    """(score − random) / (human − random) with the shipped DQN-Zoo table (KeyError: unknown game)."""
    ref = table("atari_human_random")[game_key(game)]
    return (np.asarray(score, dtype=float) - ref["random"]) / (ref["human"] - ref["random"])


def minmax_normalized(score, low: float, high: float):
    """(score − low) / (high − low): e.g. low/high = the worst and best agent's score on a task."""
    if not high > low:
        raise ValueError(f"minmax: got low={low!r}, high={high!r}; allowed low < high")
    return (np.asarray(score, dtype=float) - low) / (high - low)


def mean_over_tasks(x: np.ndarray) -> float:
    """Mean over tasks of the per-task mean over runs."""
    return float(np.mean(np.nanmean(x, axis=0)))


def median_over_tasks(x: np.ndarray) -> float:
    """Median over tasks of the per-task mean over runs."""
    return float(np.median(np.nanmean(x, axis=0)))


STATISTICS: dict[str, Callable[[np.ndarray], float]] = {
    "iqm": iqm, "mean": mean_over_tasks, "median": median_over_tasks,
}


def aggregate(scores, *, reps: int = 2000, seed: int = 0) -> dict[str, float]:
    """IQM, mean and median of a [runs, tasks] matrix with stratified-bootstrap 95% CIs.

    Returns {"runs", "tasks", "<stat>", "<stat>_ci_low", "<stat>_ci_high"} for every statistic.
    """
    x = np.asarray(scores, dtype=float)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"scores: got shape {x.shape}; allowed a non-empty [runs, tasks] matrix")
    out: dict[str, float] = {"runs": int(x.shape[0]), "tasks": int(x.shape[1])}
    for name, stat in STATISTICS.items():
        lo, hi = stratified_bootstrap_ci(x, stat, reps=reps, seed=seed)
        out[name], out[f"{name}_ci_low"], out[f"{name}_ci_high"] = stat(x), lo, hi
    return out


def score_matrix(per_task: Mapping[str, np.ndarray]) -> tuple[np.ndarray, tuple[str, ...]]:
    """{task: scores [runs]} -> ([runs, tasks] matrix, task order); tasks must have equal run counts."""
    tasks = tuple(per_task)
    counts = {t: len(np.ravel(per_task[t])) for t in tasks}
    if len(set(counts.values())) != 1:
        raise ValueError(f"per_task: got run counts {counts}; allowed the same number of runs for every task")
    return np.stack([np.ravel(np.asarray(per_task[t], dtype=float)) for t in tasks], axis=1), tasks


__all__ = ["DATA_DIR", "STATISTICS", "aggregate", "atari_games", "game_key", "human_normalized",
           "mean_over_tasks", "median_over_tasks", "minmax_normalized", "score_matrix", "table"]

