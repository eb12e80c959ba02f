"""Figures of a run directory, drawn from its metrics.csv only (never retrains).

`plot_run(run_dir)` writes `learning_curves.png`: evaluation return, training return and
loss against environment steps per member, one line per group (agent + swept values), the
line the median over seeds and the band the interquartile range over seeds; and the final
score panel(s): per swept hyperparameter, each group's final score (klrl.results.final_score
by the run's `eval.score` rule, the number summary.json reports) against the hyperparameter's
value, the interquartile mean over seeds with its stratified-bootstrap 95% CI (Agarwal et al.
2021, klrl.results.summarize), one dot per seed; without a sweep, the same per group.
Colours: one colour family per agent, one shade per swept value (klrl.plot_style); the legend
sits outside the axes.
"""

from __future__ import annotations

import math
import os

import numpy as np

from klrl.errors import ConfigError
from klrl.plot_style import group_colors, group_order, readable_ticks
from klrl.results import ScoreRule, curves, final_scores, group_label, read_metrics, score_rule, summarize, \
    swept_columns

PANELS = (("eval_return", "greedy evaluation return"), ("train_return", "training episode return"),
          ("loss", "TD loss"))


def plot_curves(ax, rows, metric: str, columns, title: str, colors=None) -> int:
    """Median over seeds with an interquartile band, one line per group (colours: `colors`,
    group key -> colour, default matplotlib's cycle); returns the number of lines drawn (a
    group with no finite value yet draws none, a panel with none says so)."""
    colors = colors or {}
    data = curves(rows, metric, columns)
    drawn = 0
    for key in group_order(data):
        steps, vals = data[key]
        with np.errstate(all="ignore"):
            ok = ~np.all(np.isnan(vals), axis=0)
            if not ok.any():
                continue
            s, v = steps[ok], vals[:, ok]
            med = np.nanmedian(v, axis=0)
            lo, hi = np.nanpercentile(v, 25, axis=0), np.nanpercentile(v, 75, axis=0)
        label = f"{group_label(key, columns)} (n={vals.shape[0]})"
        (line,) = ax.plot(s, med, label=label, color=colors.get(key))
        ax.fill_between(s, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        drawn += 1
    ax.set_title(title)
    ax.set_xlabel("environment steps per member")
    ax.grid(alpha=0.3)
    readable_ticks(ax)
    if not drawn:   # e.g. a short Atari run: no episode has ended yet
        ax.text(0.5, 0.5, "nothing measured yet", transform=ax.transAxes, ha="center", va="center", color="0.4")
        ax.set_xticks([])
        ax.set_yticks([])
    return drawn


def _point(scores) -> tuple[float, float, float]:
    """(IQM, CI low, CI high) over seeds of one group's final scores (klrl.results.summarize)."""
    s = summarize(scores)
    return s["iqm"], s["iqm_ci_low"], s["iqm_ci_high"]


def _dodge(xs, j: int, lines: int, log: bool) -> np.ndarray:
    """x positions of the j-th of `lines` lines, shifted a little so error bars do not overlap."""
    xs = np.asarray(xs, dtype=float)
    if lines <= 1:
        return xs
    f = (j - (lines - 1) / 2) * 0.015
    if log:
        span = math.log10(xs.max() / xs.min()) if xs.size and xs.min() > 0 and xs.max() > xs.min() else 1.0
        return xs * 10 ** (f * span)
    span = float(xs.max() - xs.min()) if xs.size and xs.max() > xs.min() else 1.0
    return xs + f * span


def _draw_point(ax, x, scores, color, label=None):
    """One group's IQM with its 95% CI as an error bar, and its seeds as small dots."""
    mid, lo, hi = _point(scores)
    if not math.isfinite(mid):
        return False
    finite = np.asarray(scores, dtype=float)
    finite = finite[np.isfinite(finite)]
    ax.scatter(np.full(finite.size, x), finite, s=12, facecolors="none", edgecolors=color, alpha=0.8,
               linewidths=0.8, zorder=4)
    ax.errorbar([x], [mid], yerr=[[mid - lo], [hi - mid]], color=color, marker="o", capsize=3, zorder=3,
                label=label)
    return True


def _score_vs_value(ax, finals, columns, column, colors) -> int:
    """Final score against the swept `column`'s value: one line per agent (and other swept values),
    a dashed level with a band for a group that does not use `column`. Returns points drawn."""
    i = columns.index(column)
    lines: dict[tuple, list] = {}
    for key, scores in finals.items():
        if key[1 + i] is not None:
            lines.setdefault(key[:1 + i] + key[2 + i:], []).append((key[1 + i], key, scores))
    xs_all = sorted({x for pts in lines.values() for x, _, _ in pts})
    log = bool(xs_all) and xs_all[0] > 0 and xs_all[-1] / xs_all[0] >= 20
    drawn = 0
    for j, line in enumerate(group_order(lines)):
        pts = sorted(lines[line], key=lambda p: p[0])
        xs = _dodge([x for x, _, _ in pts], j, len(lines), log)
        label = group_label(line, [c for c in columns if c != column])
        mids = [_point(s)[0] for _, _, s in pts]
        ax.plot(xs, mids, color=colors[pts[-1][1]], linewidth=1, alpha=0.8, label=label)  # its darkest shade
        for x, (_, key, scores) in zip(xs, pts):
            drawn += _draw_point(ax, x, scores, colors[key])
    for key, scores in finals.items():
        if key[1 + i] is None:                              # a group that does not use `column`
            mid, lo, hi = _point(scores)
            if math.isfinite(mid):
                ax.axhline(mid, color=colors[key], linestyle="--", linewidth=1, label=group_label(key, columns))
                ax.axhspan(lo, hi, color=colors[key], alpha=0.12, linewidth=0)
                drawn += 1
    if log:
        ax.set_xscale("log")
    if xs_all:
        ax.set_xticks(xs_all, [f"{x:g}" for x in xs_all])
        ax.minorticks_off()
    ax.set_xlabel(column)
    return drawn


def _score_per_group(ax, finals, columns, colors) -> int:
    """Final score per group, side by side (a run without a sweep). Returns points drawn."""
    keys = group_order(finals)
    drawn = sum(_draw_point(ax, x, finals[k], colors[k]) for x, k in enumerate(keys))
    ax.set_xticks(range(len(keys)), [group_label(k, columns) for k in keys], rotation=20 if len(keys) > 3 else 0,
                  ha="right" if len(keys) > 3 else "center", fontsize=8)
    ax.set_xlim(-0.6, len(keys) - 0.4)
    return drawn


def plot_final_scores(ax, rows, columns, score: ScoreRule, colors, column=None) -> None:
    """The final score panel: each group's final eval_return by `score` (klrl.results.final_scores,
    the summary's number), IQM over seeds with its bootstrap 95% CI, against the value of the swept
    `column` (None: one point per group)."""
    finals = final_scores(rows, "eval_return", columns, *score)
    drawn = (_score_vs_value(ax, finals, list(columns), column, colors) if column is not None
             else _score_per_group(ax, finals, columns, colors))
    if not drawn:
        ax.text(0.5, 0.5, "no evaluation yet", transform=ax.transAxes, ha="center", va="center", color="0.4")
    elif column is not None and len(ax.get_legend_handles_labels()[0]) > 1:
        ax.legend(fontsize=7)
    ax.set_title(f"final score vs {column}" if column else "final score per group")
    ax.set_ylabel(f"eval return ({score.describe()})", fontsize=8)
    ax.grid(alpha=0.3)
    readable_ticks(ax, x=False)                             # x: the swept values or the group names


def _grid(panels: int) -> tuple[int, int]:
    """(rows, columns) of the figure: 2 x 2 for four panels, else rows of three."""
    cols = 2 if panels == 4 else 3
    return -(-panels // cols), cols


def _read_config(run_dir: str) -> dict:
    """The run's resolved config (config.json's "config"), {} when there is none."""
    import json

    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as fh:
        return json.load(fh).get("config", {})


def _legend(fig, rows, columns, colors) -> None:
    """One legend for the figure, outside the axes on the right: every group in its colour
    (also a group with nothing evaluated yet) and its number of seeds."""
    from matplotlib.lines import Line2D

    seeds = {key: vals.shape[0] for key, (_, vals) in curves(rows, "eval_return", columns).items()}
    keys = group_order(colors)
    handles = [Line2D([], [], color=colors[k], linewidth=2) for k in keys]
    labels = [f"{group_label(k, columns)} (n={seeds.get(k, 0)})" for k in keys]
    if handles:
        fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.93), fontsize=8, frameon=False)


def run_figure(run_dir: str):
    """The matplotlib Figure of a run directory: the curve panels (PANELS), the final score
    panel(s) (one per swept hyperparameter, or one per group without a sweep), the legend."""
    path = os.path.join(run_dir, "metrics.csv")
    if not os.path.isfile(path):
        raise ConfigError(f"run_dir: got {run_dir!r} (no metrics.csv); allowed a run directory")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(path)
    columns = swept_columns(path)
    config = _read_config(run_dir)
    colors = group_colors(curves(rows, "eval_return", columns))
    score_panels = columns or [None]
    nrows, ncols = _grid(len(PANELS) + len(score_panels))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False)
    axes = axes.ravel()
    for ax, (metric, title) in zip(axes, PANELS):
        if plot_curves(ax, rows, metric, columns, title, colors) and metric == "loss":
            ax.set_yscale("log")
    for ax, column in zip(axes[len(PANELS):], score_panels):
        plot_final_scores(ax, rows, columns, score_rule(config), colors, column)
    for ax in axes[len(PANELS) + len(score_panels):]:
        ax.axis("off")
    env = config.get("env", {}).get("name", "")
    fig.suptitle(f"{env}: median over seeds, band = interquartile range; final score: IQM over seeds, "
                 "95% bootstrap CI")
    fig.tight_layout()
    _legend(fig, rows, columns, colors)
    return fig


def plot_run(run_dir: str) -> list[str]:
    """Draw the figures of a run directory (`learning_curves.png`, run_figure); returns the paths
    written."""
    fig = run_figure(run_dir)
    import matplotlib.pyplot as plt

    out = os.path.join(run_dir, "learning_curves.png")
    fig.savefig(out, dpi=110, bbox_inches="tight")   # "tight": the legend outside the axes is kept
    plt.close(fig)
    return [out]
