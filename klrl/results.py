"""Tidy result files and their aggregates (numpy only).

`TidyWriter` writes any tidy CSV (header, then appended rows; `klrl tabular` uses it too);
the rest of this module is about `klrl train`'s metrics.csv.

metrics.csv is in tidy long form, one row per (member, step, metric):

    member,seed,<one column per swept hyperparameter>,agent,step,metric,value

Swept columns are empty for members of an agent that does not use that hyperparameter.
Values are written with the shortest decimal that round-trips the float32 (`nan` for
missing), so the same arrays always give the same bytes: a resumed run's file can be
compared byte for byte with an uninterrupted one.

A member's reported final score has one definition, `final_score`, whose rule (the value at
the last step, or the mean of the last k evaluations) each run's config names (`score_rule`):
the run's summary, `klrl merge` and the notebooks all score through it.

Aggregates follow Agarwal et al. (2021), "Deep RL at the Edge of the Statistical Precipice":
the interquartile mean (IQM, the mean of the middle 50% of scores, i.e. a 25%-trimmed mean)
and stratified bootstrap percentile confidence intervals (runs are resampled with
replacement within each task independently).
"""

from __future__ import annotations

import csv
import math
import os
from typing import Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from klrl.errors import ConfigError

FIXED_HEAD = ("member", "seed")
FIXED_TAIL = ("agent", "step", "metric", "value")
# Metric rows in this order; any further metric from the engine follows, sorted by name.
METRIC_ORDER = ("eval_return", "train_return", "loss", "diverged")


def header(columns: Sequence[str]) -> list[str]:
    """The CSV header for a run whose swept hyperparameters are `columns`."""
    return [*FIXED_HEAD, *columns, *FIXED_TAIL]


def metric_names(metrics: Mapping[str, object]) -> list[str]:
    """Metric names to write (everything except `step`), in a fixed order."""
    names = [m for m in METRIC_ORDER if m in metrics]
    names += sorted(m for m in metrics if m not in METRIC_ORDER and m != "step")
    return names


def format_value(x) -> str:
    """Shortest round-tripping decimal of a float32 (`nan`, `inf`, `-inf` as such)."""
    x = np.float32(x)
    if np.isnan(x):
        return "nan"
    return str(x) if np.isfinite(x) else ("inf" if x > 0 else "-inf")


def _swept_cell(v) -> str:
    return "" if v is None else repr(float(v))


def format_chunk(members, columns: Sequence[str], metrics: Mapping[str, np.ndarray]) -> str:
    """CSV text of one chunk: `metrics` maps name -> array [M] (must contain `step`)."""
    names = metric_names(metrics)
    step = np.asarray(metrics["step"])
    lines = []
    for i, m in enumerate(members):
        head = [str(m.member), str(m.seed), *(_swept_cell(m.swept.get(c)) for c in columns), m.agent]
        for name in names:
            val = np.asarray(metrics[name])[i]
            lines.append(",".join([*head, str(int(step[i])), name, format_value(val)]))
    return "".join(line + "\n" for line in lines)


def format_history(members, columns, history: Mapping[str, np.ndarray]) -> str:
    """CSV text of several chunks: `history` maps name -> array [C, M]."""
    n = len(np.asarray(history["step"]))
    return "".join(
        format_chunk(members, columns, {k: np.asarray(v)[c] for k, v in history.items()}) for c in range(n)
    )


def format_cell(x) -> str:
    """One tidy cell: strings as they are, integers in decimal, floats as `format_value`."""
    if isinstance(x, str):
        return x
    if isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)):
        return str(int(x))
    return format_value(x)


def format_rows(rows: Iterable[Sequence]) -> tuple[str, int]:
    """(CSV text, number of rows) of tidy rows (sequences of cells)."""
    lines = [",".join(format_cell(c) for c in row) + "\n" for row in rows]
    return "".join(lines), len(lines)


class TidyWriter:
    """Append-only writer of a tidy CSV file: the header (and `prefix` rows) are written
    atomically, every append is flushed and fsynced, so the rows of a killed run are on
    disk up to its last append. Shared by `klrl train` and `klrl tabular`."""

    def __init__(self, path: str, head: Sequence[str], prefix: str | None = None):
        """Start a new file (header, then `prefix` rows, written atomically) at `path`."""
        self.path = path
        text = ",".join(head) + "\n" + (prefix or "")
        tmp = path + ".tmp"
        with open(tmp, "w", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def append(self, text: str) -> None:
        with open(self.path, "a", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    def append_rows(self, rows: Iterable[Sequence]) -> int:
        """Append tidy rows (cells formatted by `format_cell`); returns how many."""
        text, n = format_rows(rows)
        self.append(text)
        return n


class MetricsWriter(TidyWriter):
    """metrics.csv of `klrl train`: the header of a run whose swept hyperparameters are `columns`."""

    def __init__(self, path: str, columns: Sequence[str], prefix: str | None = None):
        super().__init__(path, header(columns), prefix)


def json_safe(x):
    """`x` with numpy scalars as Python numbers and non-finite floats as None (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def read_metrics(path: str) -> list[dict]:
    """Rows of a metrics.csv with typed fields (swept columns: float or None)."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        swept = [c for c in reader.fieldnames or [] if c not in FIXED_HEAD + FIXED_TAIL]
        rows = []
        for r in reader:
            row = {
                "member": int(r["member"]), "seed": int(r["seed"]), "agent": r["agent"],
                "step": int(r["step"]), "metric": r["metric"], "value": float(r["value"]),
            }
            for c in swept:
                row[c] = float(r[c]) if r[c] != "" else None
            rows.append(row)
    return rows


def read_columns(path: str, columns: Sequence[str], *, strings: Sequence[str] = (),
                 ints: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """A tidy CSV with exactly the header `columns` -> dict of column arrays (str for
    `strings`, int64 for `ints`, float64 for the others)."""
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        head = next(reader)
        if tuple(head) != tuple(columns):
            raise ValueError(f"{path}: unexpected header {head}")
        rows = list(reader)
    cols = list(zip(*rows)) if rows else [()] * len(columns)
    out = {}
    for name, values in zip(columns, cols):
        dtype = str if name in strings else np.int64 if name in ints else np.float64
        out[name] = np.asarray(values, dtype=dtype)
    return out


def swept_columns(path: str) -> list[str]:
    with open(path, newline="") as fh:
        head = next(csv.reader(fh))
    return [c for c in head if c not in FIXED_HEAD + FIXED_TAIL]


def group_key(row: Mapping, columns: Sequence[str]) -> tuple:
    """(agent, swept values...): the members that differ only by seed."""
    return (row["agent"], *(row.get(c) for c in columns))


def group_label(key: tuple, columns: Sequence[str]) -> str:
    agent, *vals = key
    parts = [f"{c}={v:g}" for c, v in zip(columns, vals) if v is not None]
    return agent + (f" ({', '.join(parts)})" if parts else "")


def curves(rows: Iterable[Mapping], metric: str, columns: Sequence[str]) -> dict[tuple, tuple[np.ndarray, np.ndarray]]:
    """group -> (steps [T], values [seeds, T]) for one metric (members as rows, by member id)."""
    data: dict[tuple, dict[int, dict[int, float]]] = {}
    for r in rows:
        if r["metric"] != metric:
            continue
        data.setdefault(group_key(r, columns), {}).setdefault(r["member"], {})[r["step"]] = r["value"]
    out = {}
    for key, per_member in data.items():
        steps = sorted({s for d in per_member.values() for s in d})
        vals = np.array([[d.get(s, np.nan) for s in steps] for _, d in sorted(per_member.items())], dtype=float)
        out[key] = (np.asarray(steps), vals)
    return out


# ---------------------------------------------------------------------------------------
# The reported final score of a member: ONE definition, chosen by the run's config.

SCORE_RULES: tuple[str, ...] = ("last", "mean_last_k")


class ScoreRule(NamedTuple):
    """How a member's evaluation curve becomes its final score (`eval.score`, `eval.score_k`).

    - `last`: the value at the last step (NaN when no evaluation episode ended in the last
      chunk, as concurrent evaluation reports);
    - `mean_last_k`: the mean of the last `k` evaluations, NaN ones skipped (a NaN is a chunk
      where no evaluation ended); NaN if there is none. Machado et al. (2018, "Revisiting the
      Arcade Learning Environment") report this average over the last evaluations.
    """

    rule: str = "mean_last_k"   # the default of `eval.score` (klrl.static.EvalConfig), also for older runs
    k: int = 3

    def describe(self) -> str:
        """The rule in words, for tables and figure captions."""
        return "last chunk" if self.rule == "last" else f"mean of the last {self.k} evaluations"


def check_score_rule(rule: str, k: int) -> ScoreRule:
    """ScoreRule(rule, k), or a one-line ConfigError naming the key (`eval.score`, `eval.score_k`)."""
    if rule not in SCORE_RULES:
        raise ConfigError(f"eval.score: got {rule!r}; allowed {', '.join(map(repr, SCORE_RULES))}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"eval.score_k: got {k!r}; allowed an integer >= 1")
    return ScoreRule(rule, int(k))


def score_rule(config: Mapping) -> ScoreRule:
    """The score rule of a run from its resolved config (config.json's "config"): the
    `[eval]` keys `score` and `score_k`, defaults `mean_last_k` and 3 where absent (older runs)."""
    section, default = config.get("eval") or {}, ScoreRule()
    return check_score_rule(section.get("score", default.rule), section.get("score_k", default.k))


def final_score(values, rule: str = "mean_last_k", k: int = 3) -> np.ndarray:
    """Final scores of curves `values` [..., T] (time last, in step order) -> [...] by `rule`
    (see ScoreRule): the value at the last step, or the mean of the last k non-NaN values."""
    rule, k = check_score_rule(rule, k)
    x = np.asarray(values, dtype=float)
    if rule == "last":
        return x[..., -1]
    flat = x.reshape(-1, x.shape[-1])
    out = np.full(flat.shape[0], math.nan)
    for i, row in enumerate(flat):
        row = row[~np.isnan(row)]
        if row.size:
            out[i] = np.mean(row[-k:])
    return out.reshape(x.shape[:-1])


def final_scores(rows: Iterable[Mapping], metric: str, columns: Sequence[str], rule: str = "mean_last_k",
                 k: int = 3) -> dict[tuple, np.ndarray]:
    """group -> final scores [seeds] of `metric` by `rule` (final_score; default: the mean of
    each member's last 3 values)."""
    return {key: final_score(v, rule, k) for key, (_, v) in curves(rows, metric, columns).items()}


# ---------------------------------------------------------------------------------------
# Aggregates.


def iqm(scores) -> float:
    """Interquartile mean: the mean after dropping the lowest and the highest
    floor(n/4) scores (25% trimmed mean, as in Agarwal et al. 2021). NaNs are dropped."""
    x = np.sort(np.asarray(scores, dtype=float).ravel())
    x = x[~np.isnan(x)]
    if x.size == 0:
        return math.nan
    k = int(0.25 * x.size)
    return float(np.mean(x[k: x.size - k]))


def stratified_bootstrap_ci(
    scores,
    statistic: Callable[[np.ndarray], float] = iqm,
    *,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of `statistic` over a [runs, tasks] score matrix (a 1-D
    array is one task): each replicate resamples the runs WITH replacement independently
    within every task (stratified by task), then applies `statistic` to all of it."""
    x = np.asarray(scores, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    runs, tasks = x.shape
    if runs == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, runs, size=(reps, runs, tasks))
    cols = np.arange(tasks)[None, None, :]
    samples = x[idx, cols]                                  # [reps, runs, tasks]
    stats = np.array([statistic(s) for s in samples])
    lo = (1.0 - confidence) / 2.0
    return (float(np.nanquantile(stats, lo)), float(np.nanquantile(stats, 1.0 - lo)))


def summarize(scores) -> dict[str, float]:
    """n, median, IQM and its stratified-bootstrap 95% CI of one group's final scores."""
    x = np.asarray(scores, dtype=float)
    finite = x[~np.isnan(x)]
    lo, hi = stratified_bootstrap_ci(finite) if finite.size else (math.nan, math.nan)
    return {
        "n": int(x.size),
        "median": float(np.median(finite)) if finite.size else math.nan,
        "iqm": iqm(finite),
        "iqm_ci_low": lo,
        "iqm_ci_high": hi,
    }
