# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Leverage the Average: KL regularization averages the errors
#
# Figures of Vieillard et al. (NeurIPS 2020), "Leverage the Average: an Analysis of KL
# Regularization in RL", reproduced on Garnet MDPs with exact model-based MD-VI
# (`klrl.tabular`). This notebook only **reads** the results of
#
#     klrl tabular experiments/leverage_average.toml
#
# and draws the figures. It never recomputes. Parameters (the next cell, or the environment):
# `KLRL_RUNS`, the output folder of that command (default the committed `results/leverage_average`,
# or `KLRL_RESULTS_DIR`); `KLRL_FIGURES_DIR`, where the figures go (default
# `figures/leverage_average/`, outside `results/`: redraw the committed figures with
# `KLRL_FIGURES_DIR=results/leverage_average`). A folder that is not such an output ends the
# notebook with one line saying so (exit status 2).
#
# Every scheme iterates `π_{k+1} = greedy step of q_k`, `q_{k+1} = r + bonus + γ P v(q_k) + ε_{k+1}`
# with i.i.d. Gaussian noise ε, and we plot `‖q* − q^{π_k}‖_∞` (exact linear solves).
# MD-VI(λ, τ): KL weight λ, entropy weight τ. Its policy is a softmax of a β-discounted
# sum of the past q's (β = λ/(λ+τ)), so the noise is averaged, not accumulated.

# %%
import json
import os

from klrl.notebook_io import NotebookInputError, fail, figures_dir, repo_root, run_paths
from klrl.tabular import plots
from klrl.tabular.leverage import read_metrics

# Parameters: set them here, or in the environment.
HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
ROOT = repo_root(HERE)
RUN_DIRS, _ = run_paths([os.environ.get("KLRL_RESULTS_DIR", os.path.join(ROOT, "results", "leverage_average"))])
FIGURES = figures_dir(ROOT, "leverage_average")     # KLRL_FIGURES_DIR
WANTED = "the output folder of `klrl tabular experiments/leverage_average.toml`"


def load(paths):
    """(metrics, summary, resolved config record) of the one tabular output folder in `paths`."""
    if len(paths) != 1:
        raise NotebookInputError(f"KLRL_RUNS: got {len(paths)} paths ({', '.join(paths)}); allowed one: {WANTED}")
    (results,) = paths
    for name in ("metrics.csv", "summary.json", "config.json"):
        if not os.path.isfile(os.path.join(results, name)):
            raise NotebookInputError(f"KLRL_RUNS: got {results!r}, which has no {name}; allowed {WANTED}")
    try:
        metrics = read_metrics(os.path.join(results, "metrics.csv"))
    except ValueError:
        raise NotebookInputError(f"KLRL_RUNS: got {results!r}, whose metrics.csv is not a Leverage-the-Average "
                                 f"table (a `klrl train` run?); allowed {WANTED}") from None
    with open(os.path.join(results, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(results, "config.json")) as f:
        return metrics, summary, json.load(f)


try:
    metrics, summary, resolved = load(RUN_DIRS)
except NotebookInputError as err:
    fail(err)
cfg = resolved["config"]
print("commit:", resolved["provenance"]["commit"], "| quick:", resolved["quick"])
print("Garnet:", cfg["garnet"], "| noise:", cfg["noise"])
print("schemes:", cfg["schemes"])


def save(fig, name):
    os.makedirs(FIGURES, exist_ok=True)
    path = os.path.join(FIGURES, name)
    fig.savefig(path, dpi=110)
    print("wrote", path)
    return fig


# %% [markdown]
# ## (a) Error vs iterations, without and with noise
#
# Without noise every scheme converges (entropy-regularized ones to a biased limit, the
# τ-regularized optimum). With noise, VI and entropy-only MD-VI stall on a noise floor,
# while KL-regularized MD-VI keeps improving: the policy averages the noise.

# %%
save(plots.plot_curves(metrics), "curves.png")
for name, value in summary["curves_mean_final_error"].items():
    print(f"{name:30s} final error {value:.4g}")

# %% [markdown]
# ## (b) Final error over a (λ, τ) grid
#
# Larger λ (longer averaging window ~1/(1−β)) and small τ (little bias) give the lowest error.

# %%
save(plots.plot_heatmap(metrics), "heatmap.png")
print("best cell:", summary["heatmap_best"])

# %% [markdown]
# ## (c) Growth of the error with the horizon 1/(1−γ)
#
# The bounds predict a linear dependence with KL and a quadratic one for approximate VI
# (worst-case errors). With i.i.d. noise, VI's error cannot grow faster than the value
# range itself (rewards in [0, 1] give q ∈ [0, 1/(1−γ)]), so its measured slope is about 1:
# the noise floor is a fixed fraction of the value range. KL-regularized errors are far
# smaller and grow more slowly.

# %%
save(plots.plot_horizon(metrics), "horizon.png")
for scheme, slope in plots.horizon_slopes(metrics).items():
    print(f"{scheme:12s} log-log slope {slope:.2f}")

# %% [markdown]
# ## (d) KL only (τ = 0): measured error against the bound
#
# `‖q* − q^{π}‖ ≤ (2/(1−γ))‖(1/k)Σ_{j≤k} ε_j‖ + (4/(1−γ)²)(R_max + γλ ln|A|)/k`, checked
# for π_{k+1} (the policy that has seen ε_1..ε_k) and, more strictly, for π_k.

# %%
save(plots.plot_bound(metrics), "bound.png")
print(json.dumps(summary["bound_check"], indent=1))
