# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Munchausen agents on gymnax: DQN vs M-DQN vs MVI(q)
#
# This notebook draws run directories written by `klrl train` (it never trains): each holds
# `config.json` (resolved config + provenance) and a tidy `metrics.csv`. Its parameters (the
# next cell, or the environment):
# - `KLRL_RUNS`: your run directories (or folders holding them), separated by `:` or commas,
#   e.g. `KLRL_RUNS=runs/my_cartpole python notebooks/munchausen_gymnax.py`; unset, the
#   committed evidence under `results/` (`KLRL_RESULTS_DIR` names another results folder);
# - `KLRL_FIGURES_DIR`: where the PNG files go (default `figures/munchausen_gymnax/`, outside
#   `results/`).
# A path that holds no run directory ends the notebook with one line naming it (exit status 2).
#
# Agents (targets from `klrl.operators`, docs/algorithms.md §2):
# - DQN: `y = r + γ max q̄(s')`;
# - M-DQN (Vieillard et al. 2020): `y = r + α·clip(τ ln π̄(a|s), l0, 0) + γ·τ·lse(q̄(s')/τ)`;
# - MVI(q) (Tsallis Munchausen, Zhu et al. 2023): the same with the Tsallis policy and
#   `ln_q`; q = 2 is the sparsemax case.
#
# Statistics: per group (agent + swept values) the interquartile mean (IQM) over seeds with a
# stratified-bootstrap 95% confidence interval (Agarwal et al. 2021), computed by
# `klrl.results`. With few seeds these intervals are wide; the seed count is printed with
# every number. `KLRL_WRITE_SUMMARY` names a JSON file for the final-score table.

# %%
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from klrl.results import (  # noqa: E402
    curves, final_scores, group_label, iqm, json_safe, read_metrics, score_rule, stratified_bootstrap_ci,
    summarize, swept_columns,
)
from klrl.notebook_io import (  # noqa: E402
    NotebookInputError, fail, figures_dir, find_train_runs, read_record, repo_root, run_paths, train_run_dirs,
)
from klrl.plot_style import group_colors, group_order, readable_ticks  # noqa: E402

# Parameters: set them here, or in the environment.
HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
ROOT = repo_root(HERE)
RESULTS = os.environ.get("KLRL_RESULTS_DIR", os.path.join(ROOT, "results"))
RUN_DIRS, RUNS_GIVEN = run_paths([])            # KLRL_RUNS: the run directories to draw
FIGURES = figures_dir(ROOT, "munchausen_gymnax")
BOOTSTRAP_REPS = int(os.environ.get("KLRL_BOOTSTRAP_REPS", "1000"))
WRITE_SUMMARY = os.environ.get("KLRL_WRITE_SUMMARY")


def save(fig, name):
    os.makedirs(FIGURES, exist_ok=True)
    path = os.path.join(FIGURES, name)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print("wrote", path)


# The deep-agent evidence of this notebook: results/quickstart (CartPole), results/minatar_breakout
# and results/cartpole* (other results/ folders belong to other notebooks: the per-game runs of
# results/minatar_munchausen and results/minatar_mvi_q are notebooks/munchausen_minatar.py's).
# Re-runs under <run>/runs/ are skipped.
RUN_PATTERNS = ("quickstart", "minatar_breakout", "cartpole*")


def find_runs(root):
    """Run directories (config.json + metrics.csv) under root/<RUN_PATTERNS>, with their records."""
    import fnmatch

    tops = sorted(d for d in (os.listdir(root) if os.path.isdir(root) else [])
                  if any(fnmatch.fnmatch(d, p) for p in RUN_PATTERNS))
    return [(path, read_record(path)) for top in tops for path in train_run_dirs(os.path.join(root, top))]


try:
    if RUNS_GIVEN:
        RUNS = [(path, read_record(path)) for path in find_train_runs(RUN_DIRS, "gymnax or MinAtar agents")]
    else:
        RUNS = find_runs(RESULTS)
        if not RUNS:
            raise NotebookInputError(f"KLRL_RESULTS_DIR: got {RESULTS!r}, which holds none of "
                                     f"{', '.join(RUN_PATTERNS)}; set KLRL_RUNS to your run directories")
except NotebookInputError as err:
    fail(err)
print(f"{len(RUNS)} run(s): " + ", ".join(os.path.relpath(p) for p, _ in RUNS))
for path, record in RUNS:
    cfg, prov = record["config"], record.get("provenance", {})
    print(f"- {os.path.relpath(path)}: {cfg['env']['name']}, agents {cfg['agent']['name']}, "
          f"{len(cfg['train']['seeds'])} seeds x {cfg['train']['total_steps']:,} env steps per member; "
          f"commit {str(prov.get('commit'))[:12]}, device {prov.get('device', {}).get('platform')}")

# %% [markdown]
# ## Learning curves
# Greedy evaluation return against environment steps per member: IQM over seeds, the band
# its stratified-bootstrap 95% CI at every evaluation point.

# %%


def iqm_band(values, reps=BOOTSTRAP_REPS):
    """IQM over seeds and its bootstrap 95% CI at every step; values [seeds, T]."""
    mid = np.array([iqm(values[:, t]) for t in range(values.shape[1])])
    lo, hi = np.full_like(mid, np.nan), np.full_like(mid, np.nan)
    for t in range(values.shape[1]):
        col = values[:, t]
        col = col[~np.isnan(col)]
        if col.size:
            lo[t], hi[t] = stratified_bootstrap_ci(col, reps=reps, seed=t)
    return mid, lo, hi


def plot_run_curves(path, record, ax):
    metrics_path = os.path.join(path, "metrics.csv")
    rows, columns = read_metrics(metrics_path), swept_columns(metrics_path)
    data = curves(rows, "eval_return", columns)
    colors = group_colors(data)                  # one colour family per agent, a shade per swept value
    for key in group_order(data):
        steps, vals = data[key]
        mid, lo, hi = iqm_band(vals)
        ax.plot(steps, mid, color=colors[key], label=f"{group_label(key, columns)} (n={vals.shape[0]})")
        ax.fill_between(steps, lo, hi, color=colors[key], alpha=0.2, linewidth=0)
    cfg = record["config"]
    ax.set_title(f"{cfg['env']['name']} ({len(cfg['train']['seeds'])} seeds, "
                 f"{cfg['train']['total_steps']:,} steps)")
    ax.set_xlabel("environment steps per member")
    ax.set_ylabel("greedy evaluation return (IQM)")
    ax.grid(alpha=0.3)
    readable_ticks(ax)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)   # outside the curves


if RUNS:
    fig, axes = plt.subplots(1, len(RUNS), figsize=(7.5 * len(RUNS), 4.2), squeeze=False)
    for ax, (path, record) in zip(axes[0], RUNS):
        plot_run_curves(path, record, ax)
    fig.tight_layout()
    save(fig, "munchausen_gymnax_curves.png")
    plt.show()

# %% [markdown]
# ## Final scores
# Each member's evaluation return scored by its run's own rule (`eval.score` in the run's
# config, `klrl.results.final_score`, as the run's summary.json and `klrl merge` score it: the
# value at the last evaluation point by default, or the mean of the last `eval.score_k`);
# IQM [95% CI] and median over seeds, and the number of diverged members (non-finite loss,
# flagged by the engine).

# %%
TABLE = []
for path, record in RUNS:
    metrics_path = os.path.join(path, "metrics.csv")
    rows, columns = read_metrics(metrics_path), swept_columns(metrics_path)
    div = final_scores(rows, "diverged", columns, "last")
    score = score_rule(record["config"])
    for key, scores in final_scores(rows, "eval_return", columns, *score).items():
        s = summarize(scores)
        TABLE.append({"env": record["config"]["env"]["name"], "group": group_label(key, columns), **s,
                      "score": score.describe(), "scores": [float(x) for x in scores],
                      "diverged": int(np.nansum(div.get(key, np.zeros(0)) > 0))})

print(f"{'env':<22} {'group':<34} {'n':>3} {'median':>8} {'IQM':>8}  {'95% CI':<18} {'div':>3}")
for r in TABLE:
    print(f"{r['env']:<22} {r['group']:<34} {r['n']:>3} {r['median']:>8.1f} {r['iqm']:>8.1f}  "
          f"[{r['iqm_ci_low']:7.1f}, {r['iqm_ci_high']:7.1f}] {r['diverged']:>3}")
if WRITE_SUMMARY:
    with open(WRITE_SUMMARY, "w") as fh:
        json.dump(json_safe({"final_scores": TABLE}), fh, indent=2)

# %% [markdown]
# ## Final-score distributions
# One dot per seed, so that the spread behind each IQM is visible.

# %%
if TABLE:
    envs = sorted({r["env"] for r in TABLE})
    fig, axes = plt.subplots(1, len(envs), figsize=(6 * len(envs), 3.8), squeeze=False)
    for ax, env in zip(axes[0], envs):
        for path, record in RUNS:
            if record["config"]["env"]["name"] != env:
                continue
            metrics_path = os.path.join(path, "metrics.csv")
            rows, columns = read_metrics(metrics_path), swept_columns(metrics_path)
            finals = sorted(final_scores(rows, "eval_return", columns, *score_rule(record["config"])).items(),
                            key=lambda kv: str(kv[0]))
            colors = group_colors(k for k, _ in finals)
            for i, (key, scores) in enumerate(finals):
                ax.scatter(np.full(len(scores), i) + np.linspace(-0.1, 0.1, len(scores)), scores, s=14,
                           color=colors[key])
                ax.hlines(iqm(scores), i - 0.25, i + 0.25, color="k")
            ax.set_xticks(range(len(finals)), [group_label(k, columns) for k, _ in finals], rotation=20,
                          fontsize=7)
        ax.set_title(f"{env}: final evaluation return (bar = IQM)")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    save(fig, "munchausen_gymnax_finals.png")
    plt.show()
