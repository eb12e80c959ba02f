# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Q♯ on CartPole: the return / KL(π‖π_ref) frontier
#
# KL-regularized control toward a FIXED reference policy π_ref with temperature η:
# `max_π E_π[Σ r] − η Σ_t KL(π(·|s_t) ‖ π_ref(·|s_t))`, solved by
# `π*(a|s) ∝ π_ref(a|s)·exp(Q*(s, a)/η)` (docs/algorithms.md §4). Q♯ (Zhou et al. 2025) learns
# π_ref's return DISTRIBUTION Z and guides π_ref with the entropic value
# `Q_η = η ln E[exp(Z/η)]`, which equals Q* on deterministic MDPs with γ = 1
# (`klrl.tabular.qsharp` checks this exactly; stochastic transitions make it optimistic).
#
# Methods (all in the same `klrl train` program, `klrl.agents.qsharp`):
# - **Q♯ (td)**: categorical critic by distributional expected SARSA under π_ref;
# - **Q♯ (rollout)**: the Q♯ recipe, critic fit by maximum likelihood to returns of
#   roll-outs that switch from the guided policy to π_ref at a random step;
# - **CD (td / rollout)**: the same critics, guided with E[Z] instead of Q_η;
# - **soft-Q prior (td)**: scalar TD soft Q with prior, `y = r + η·lse(q̄(s')/η + ln π_ref(s'))`;
# - **C51**: unregularized distributional DQN (greedy; its KL is −ln π_ref(greedy action)).
#
# π_ref is a deliberately weak DQN (experiments/qsharp_reference.toml), softened to
# `softmax(Q_ref/1.0)`. Each point is one (method, η): x = per-step KL(π‖π_ref) measured along
# the evaluation episodes of the policy itself (metric `kl_ref`), y = their undiscounted
# return (`eval_return`); both are a member's final score by its run's own rule (`eval.score`
# in the run's config, `klrl.results.final_score`, as the run's summary.json scores it: the
# last evaluation (10 episodes) by default, or the mean of the last `eval.score_k`), then the
# IQM over seeds with a stratified-bootstrap 95% CI (`klrl.results`).
# With 3 seeds the IQM is the mean and the CIs are wide; the seed count is printed.
#
# The notebook never trains. Parameters (the next cell, or the environment): `KLRL_RUNS`, the
# run directories to draw (or folders holding them; separated by `:` or commas; default the
# committed `results/qsharp_frontier`, or `KLRL_RESULTS_DIR`); `KLRL_FIGURES_DIR`, where the
# figures and `frontier.csv`/`frontier.json` go (default `figures/qsharp_frontier/`, outside
# `results/`). Runs without a `kl_ref` metric (no `agent.reference`) give no point; if none has
# one, the notebook ends with one line saying so (exit status 2). To regenerate the committed
# runs (about 10 minutes on 2 CPU cores), then redraw into the committed folder:
#
# ```
# klrl train experiments/qsharp_reference.toml     --out results/qsharp_frontier/reference
# klrl train experiments/qsharp_frontier.toml      --out results/qsharp_frontier/td
# klrl train experiments/qsharp_frontier_rollout.toml --out results/qsharp_frontier/rollout
# klrl train experiments/qsharp_frontier_c51.toml  --out results/qsharp_frontier/c51
# KLRL_FIGURES_DIR=results/qsharp_frontier python notebooks/qsharp_frontier.py
# ```

# %%
import csv
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from klrl.provenance import provenance  # noqa: E402
from klrl.results import (  # noqa: E402
    final_scores, iqm, read_metrics, score_rule, stratified_bootstrap_ci, swept_columns,
)

from klrl.notebook_io import NotebookInputError, fail, figures_dir, find_train_runs, repo_root, run_paths  # noqa: E402

# Parameters: set them here, or in the environment.
HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
ROOT = repo_root(HERE)
RESULTS = os.environ.get("KLRL_RESULTS_DIR", os.path.join(ROOT, "results", "qsharp_frontier"))
RUN_DIRS, _ = run_paths([RESULTS])              # KLRL_RUNS: the run directories to draw
FIGURES = figures_dir(ROOT, "qsharp_frontier")   # KLRL_FIGURES_DIR
REPS = int(os.environ.get("KLRL_BOOTSTRAP_REPS", "2000"))

# %% [markdown]
# ## Read the runs
# A run is a directory holding `config.json` and `metrics.csv`; the π_ref run itself (a DQN
# without a reference, so without `kl_ref`) is listed but not plotted.

# %%
NAMES = {"qsharp": "Q♯", "qsharp_cd": "CD", "kl_prior": "soft-Q prior", "c51": "C51"}


def method_of(agent: str, config: dict) -> str:
    mode = config.get("agent", {}).get("qsharp_mode", "td")
    name = NAMES.get(agent, agent)
    return f"{name} ({mode})" if agent in ("qsharp", "qsharp_cd", "kl_prior") else name


try:
    RUN_PATHS = find_train_runs(RUN_DIRS, "Q♯ / KL-to-reference agents")
except NotebookInputError as err:
    fail(err)
runs, points = [], []
for run in RUN_PATHS:
    name = os.path.basename(os.path.normpath(run))
    with open(os.path.join(run, "config.json")) as fh:
        record = json.load(fh)
    config = record["config"]
    rows = read_metrics(os.path.join(run, "metrics.csv"))
    columns = swept_columns(os.path.join(run, "metrics.csv"))
    has_kl = any(r["metric"] == "kl_ref" for r in rows)
    score = score_rule(config)               # the run's own rule (eval.score; default: last)
    runs.append({"run": name, "env": config["env"]["name"], "agents": config["agent"]["name"],
                 "has_kl_ref": has_kl, "score": score.describe(), "provenance": record.get("provenance", {})})
    if not has_kl:
        continue
    ret = final_scores(rows, "eval_return", columns, *score)
    kl = final_scores(rows, "kl_ref", columns, *score)
    for key in sorted(ret, key=lambda k: (k[0], [v if v is not None else -1 for v in k[1:]])):
        agent, *vals = key
        eta = dict(zip(columns, vals)).get("agent.eta", dict(zip(columns, vals)).get("eta"))
        r, k = ret[key], kl[key]
        points.append({
            "run": name, "method": method_of(agent, config), "agent": agent,
            "eta": (float(eta) if eta is not None else float(config["agent"].get("eta", np.nan))
                    if agent in ("qsharp", "qsharp_cd", "kl_prior") else float("nan")),   # c51: no η
            "seeds": int(r.size),
            "return_iqm": iqm(r), "return_ci": stratified_bootstrap_ci(r, reps=REPS),
            "kl_iqm": iqm(k), "kl_ci": stratified_bootstrap_ci(k, reps=REPS),
            "returns": [float(x) for x in r], "kls": [float(x) for x in k],
        })
print(f"{len(runs)} run(s) in {', '.join(RUN_DIRS)}: " + ", ".join(f"{r['run']} ({r['env']})" for r in runs))
if not points:
    fail(NotebookInputError(f"KLRL_RUNS: got {', '.join(RUN_DIRS)}, whose runs have no kl_ref metric; allowed "
                            "runs of agents with agent.reference set (qsharp, qsharp_cd, kl_prior, c51)"))

# %% [markdown]
# ## The table
# One row per (method, η): IQM over seeds [95% CI] of the return and of the per-step KL.

# %%
print(f"{'method':<22} {'eta':>7} {'n':>3}  {'return IQM [95% CI]':<26} {'KL/step IQM [95% CI]':<26}")
for p in sorted(points, key=lambda p: (p["method"], p["eta"])):
    print(f"{p['method']:<22} {p['eta']:>7g} {p['seeds']:>3}  "
          f"{p['return_iqm']:>7.1f} [{p['return_ci'][0]:.1f}, {p['return_ci'][1]:.1f}]".ljust(40)
          + f" {p['kl_iqm']:>7.3f} [{p['kl_ci'][0]:.3f}, {p['kl_ci'][1]:.3f}]")

os.makedirs(FIGURES, exist_ok=True)
with open(os.path.join(FIGURES, "frontier.csv"), "w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(["run", "method", "agent", "eta", "seeds", "return_iqm", "return_ci_low", "return_ci_high",
                "kl_iqm", "kl_ci_low", "kl_ci_high"])
    for p in points:
        w.writerow([p["run"], p["method"], p["agent"], p["eta"], p["seeds"], p["return_iqm"], *p["return_ci"],
                    p["kl_iqm"], *p["kl_ci"]])
with open(os.path.join(FIGURES, "frontier.json"), "w") as fh:
    json.dump({"points": points, "runs": runs, "provenance": provenance()}, fh, indent=2)
    fh.write("\n")

# %% [markdown]
# ## The frontier
# Up and to the left is better: more return for less deviation from π_ref. Each line joins
# one method's η grid (η decreasing to the right: a smaller η trusts the critic more).

# %%
methods = sorted({p["method"] for p in points})
colors = dict(zip(methods, plt.cm.tab10(np.arange(len(methods)) % 10)))
fig, ax = plt.subplots(figsize=(7.5, 5))
for m in methods:
    ps = sorted((p for p in points if p["method"] == m), key=lambda p: -p["eta"] if np.isfinite(p["eta"]) else 0)
    x = np.array([p["kl_iqm"] for p in ps])
    y = np.array([p["return_iqm"] for p in ps])
    xerr = np.abs(np.array([[p["kl_iqm"] - p["kl_ci"][0], p["kl_ci"][1] - p["kl_iqm"]] for p in ps]).T)
    yerr = np.abs(np.array([[p["return_iqm"] - p["return_ci"][0], p["return_ci"][1] - p["return_iqm"]] for p in ps]).T)
    ax.errorbar(x, y, xerr=xerr, yerr=yerr, marker="o", capsize=3, color=colors[m], label=m,
                linestyle="-" if len(ps) > 1 else "none")
    for p in ps:
        if np.isfinite(p["eta"]) and len(ps) > 1:
            ax.annotate(f"η={p['eta']:g}", (p["kl_iqm"], p["return_iqm"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points", color=colors[m])
ax.set_xscale("symlog", linthresh=0.01)
ax.set_xlabel("KL(π‖π_ref) per step along evaluation episodes")
ax.set_ylabel("undiscounted return")
env_names = sorted({r["env"] for r in runs if r["has_kl_ref"]})
ax.set_title(f"Return vs KL to π_ref ({', '.join(env_names)}; IQM over seeds, 95% CI)")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(FIGURES, "qsharp_frontier.png"), dpi=120)

# %% [markdown]
# ## Return and KL against η
# The same numbers per η, to read how each method's guidance scales with the temperature.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for m in methods:
    ps = sorted((p for p in points if p["method"] == m and np.isfinite(p["eta"])), key=lambda p: p["eta"])
    if len(ps) < 2:
        continue
    eta = [p["eta"] for p in ps]
    for ax, key in zip(axes, ("return", "kl")):
        mid = np.array([p[f"{key}_iqm"] for p in ps])
        lo = np.array([p[f"{key}_ci"][0] for p in ps])
        hi = np.array([p[f"{key}_ci"][1] for p in ps])
        ax.plot(eta, mid, marker="o", color=colors[m], label=m)
        ax.fill_between(eta, lo, hi, color=colors[m], alpha=0.15)
for ax, label in zip(axes, ("undiscounted return", "KL(π‖π_ref) per step")):
    ax.set_xscale("log")
    ax.set_xlabel("η")
    ax.set_ylabel(label)
axes[1].set_yscale("symlog", linthresh=0.01)
axes[0].legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(FIGURES, "qsharp_vs_eta.png"), dpi=120)
print("wrote", os.path.join(FIGURES, "qsharp_frontier.png"), "and", os.path.join(FIGURES, "qsharp_vs_eta.png"))
