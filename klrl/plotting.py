"""Figures of a run directory, drawn from its metrics.csv only (never retrains).

`plot_run(run_dir)` writes `learning_curves.png`: evaluation return, training return and
loss against environment steps per member, one line per group (agent + swept values), the
line the median over seeds and the band the interquartile range over seeds.
"""

from __future__ import annotations

import os

import numpy as np

from klrl.errors import ConfigError
from klrl.results import curves, group_label, read_metrics, swept_columns

PANELS = (("eval_return", "greedy evaluation return"), ("train_return", "training episode return"),
          ("loss", "TD loss"))


def plot_curves(ax, rows, metric: str, columns, title: str) -> int:
    """Median over seeds with an interquartile band, one line per group; returns the number of
    lines drawn (a group with no finite value yet draws none)."""
    drawn = 0
    for key, (steps, vals) in sorted(curves(rows, metric, columns).items(), key=lambda kv: str(kv[0])):
        with np.errstate(all="ignore"):
            ok = ~np.all(np.isnan(vals), axis=0)
            if not ok.any():
                continue
            s, v = steps[ok], vals[:, ok]
            med = np.nanmedian(v, axis=0)
            lo, hi = np.nanpercentile(v, 25, axis=0), np.nanpercentile(v, 75, axis=0)
        label = f"{group_label(key, columns)} (n={vals.shape[0]})"
        (line,) = ax.plot(s, med, label=label)
        ax.fill_between(s, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        drawn += 1
    ax.set_title(title)
    ax.set_xlabel("environment steps per member")
    ax.grid(alpha=0.3)
    if not drawn:   # e.g. a short Atari run: no episode has ended yet
        ax.text(0.5, 0.5, "— nothing measured yet —", transform=ax.transAxes, ha="center", va="center",
                color="0.4")
        ax.set_xticks([])
        ax.set_yticks([])
    return drawn


def plot_run(run_dir: str) -> list[str]:
    """Draw the figures of a run directory; returns the paths written."""
    path = os.path.join(run_dir, "metrics.csv")
    if not os.path.isfile(path):
        raise ConfigError(f"run_dir: got {run_dir!r} (no metrics.csv); allowed a run directory")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(path)
    columns = swept_columns(path)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4))
    drawn = [plot_curves(ax, rows, metric, columns, title) for ax, (metric, title) in zip(axes, PANELS)]
    for ax, (metric, _), n in zip(axes, PANELS, drawn):
        if metric == "loss" and n:
            ax.set_yscale("log")
    legend = next((ax for ax, n in zip(axes, drawn) if n), None)   # the first panel with lines
    if legend is not None:
        legend.legend(fontsize=7)
    env = ""
    cfg = os.path.join(run_dir, "config.json")
    if os.path.isfile(cfg):
        import json

        with open(cfg) as fh:
            env = json.load(fh)["config"]["env"]["name"]
    fig.suptitle(f"{env}: median over seeds, band = interquartile range")
    fig.tight_layout()
    out = os.path.join(run_dir, "learning_curves.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return [out]
