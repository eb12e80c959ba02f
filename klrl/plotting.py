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


def plot_curves(ax, rows, metric: str, columns, title: str) -> None:
    """Median over seeds with an interquartile band, one line per group."""
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
    ax.set_title(title)
    ax.set_xlabel("environment steps per member")
    ax.grid(alpha=0.3)


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
    for ax, (metric, title) in zip(axes, PANELS):
        plot_curves(ax, rows, metric, columns, title)
        if metric == "loss":
            ax.set_yscale("log")
    axes[0].legend(fontsize=7)
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
