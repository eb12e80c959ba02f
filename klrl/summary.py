"""A run's summary: summary.json's rows and the table printed at the end of a run.

One row per group (agent + swept values, the members that differ only by seed): the
members' final scores by the run's score rule (klrl.results.final_score, `eval.score`), the
number of diverged members, and, with a final_eval.csv, the final evaluation's scores. The
runner writes it at the end of a run and `klrl merge` from the merged files, both through
`summary_rows`, so a run's reported numbers have one definition.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping, Sequence

import numpy as np

from klrl.results import (
    ScoreRule, final_scores, group_label, json_safe, read_metrics, score_rule, summarize, swept_columns,
)
from klrl.rundir import FINAL_EVAL, METRICS


def summary_rows(metrics_path: str, columns: Sequence[str], final_eval_path: str | None = None,
                 score: ScoreRule = ScoreRule()) -> list[dict]:
    """Per group: the final scores of `eval_return` by `score` over seeds ("final_eval_return"),
    diverged members (the flag at the last step), and (with a final_eval.csv) the final
    evaluation's scores."""
    rows = read_metrics(metrics_path)
    finals = final_scores(rows, "eval_return", columns, *score)
    div = final_scores(rows, "diverged", columns, "last")       # diverged by the end (a flag, not a score)
    final_eval = {}
    if final_eval_path is not None:
        frows = read_metrics(final_eval_path)
        final_eval = {k: (v, final_scores(frows, "final_eval_episodes", columns, "last")[k])   # one row each
                      for k, v in final_scores(frows, "final_eval_return", columns, "last").items()}
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
    return json_safe(out)   # strict JSON: a score not measured yet is null, never a bare NaN


def run_summary(run_dir: str, config: Mapping) -> list[dict]:
    """summary_rows of the run directory `run_dir` (its metrics.csv, and final_eval.csv when
    there is one), scored by the rule of `config` (the run's resolved config, as config.json
    records it under "config")."""
    metrics = os.path.join(run_dir, METRICS)
    final = os.path.join(run_dir, FINAL_EVAL)
    return summary_rows(metrics, swept_columns(metrics), final if os.path.isfile(final) else None,
                        score_rule(config))


def _num(x) -> str:
    """One decimal, or "—" for a score not measured (null in summary.json)."""
    return "—" if x is None or x != x else f"{x:.1f}"


def _table(title: str, last_column: str, rows: Sequence[tuple[str, dict, str]], width: int, file) -> None:
    print(title, file=file)
    print(f"{'group':<{width}}  {'seeds':>5}  {'median':>7}  {'IQM':>7}  {'IQM 95% CI':<17}  {last_column:>8}",
          file=file)
    for group, s, last in rows:
        ci = "—" if s["iqm_ci_low"] is None else f"[{_num(s['iqm_ci_low'])}, {_num(s['iqm_ci_high'])}]"
        print(f"{group:<{width}}  {s['n']:>5}  {_num(s['median']):>7}  {_num(s['iqm']):>7}  {ci:<17}  {last:>8}",
              file=file)


def print_summary(summary: list[dict], file=None, score: ScoreRule = ScoreRule()) -> None:
    """The final-evaluation table: one row per group (agent + swept values), over seeds;
    `score` (the run's rule) names how the returns were scored."""
    file = file or sys.stdout
    w = max([len("group")] + [len(r["group"]) for r in summary])
    _table(f"final greedy evaluation return ({score.describe()}), over seeds:", "diverged",
           [(r["group"], r["final_eval_return"], str(r["diverged_members"])) for r in summary], w, file)
    if any("final_evaluation" in r for r in summary):
        _table("final evaluation (eval.final_episodes after training), over seeds:", "episodes",
               [(r["group"], r["final_evaluation"], ">= " + str(r["final_evaluation_min_episodes"]))
                for r in summary if "final_evaluation" in r], w, file)


__all__ = ["print_summary", "run_summary", "summary_rows"]
