"""Figures of the Leverage-the-Average experiments, drawn from metrics.csv alone.

Shared by `klrl tabular` (which calls `draw_all` after writing its results) and
notebooks/leverage_average.py (which calls the single-figure functions). Matplotlib with
the Agg backend; every function takes the column dict of `klrl.tabular.leverage.read_metrics`
and returns a Figure.
"""

from __future__ import annotations

import os

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from klrl.tabular.leverage import SCHEMES, fit_loglog_slope, read_metrics  # noqa: E402

LABELS = {"vi": "VI", "entropy": "entropy only", "kl": "KL only", "kl_entropy": "KL + entropy"}
COLORS = {"vi": "tab:gray", "entropy": "tab:orange", "kl": "tab:blue", "kl_entropy": "tab:green"}
STYLE = {"vi": {"ls": "--", "lw": 2.0, "zorder": 5}}  # VI and entropy-only overlap under noise
FLOOR = 1e-8
FIGURES = ("curves.png", "heatmap.png", "horizon.png", "bound.png")


def _mask(m, **conds):
    mask = np.ones(len(m["value"]), bool)
    for key, val in conds.items():
        mask &= np.isclose(m[key], val) if m[key].dtype.kind == "f" else (m[key] == val)
    return mask


def _runs_by_iteration(m, mask):
    """Values of the selected rows as [runs, iterations] (runs = garnet × seed)."""
    iters = np.unique(m["iteration"][mask])
    run_id = m["garnet"][mask] * 100_000 + m["seed"][mask]
    runs = np.unique(run_id)
    out = np.full((len(runs), len(iters)), np.nan)
    out[np.searchsorted(runs, run_id), np.searchsorted(iters, m["iteration"][mask])] = m["value"][mask]
    return iters, out


def plot_curves(m) -> plt.Figure:
    """(a) ‖q* − q^{π_k}‖_∞ vs k, per scheme, without and with noise (mean, 10-90% band)."""
    sel = m["part"] == "curves"
    stds = np.unique(m["noise_std"][sel])
    fig, axes = plt.subplots(1, len(stds), figsize=(5.5 * len(stds), 4), squeeze=False)
    for ax, sd in zip(axes[0], stds):
        for s in SCHEMES:
            mask = sel & _mask(m, scheme=s, noise_std=sd, metric="error")
            if not mask.any():
                continue
            iters, vals = _runs_by_iteration(m, mask)
            vals = np.maximum(vals, FLOOR)  # exact zeros (noiseless VI) on a log axis
            ax.plot(iters, vals.mean(0), color=COLORS[s], label=LABELS[s], **STYLE.get(s, {}))
            ax.fill_between(iters, *np.quantile(vals, [0.1, 0.9], axis=0), color=COLORS[s], alpha=0.2)
        ax.set(xscale="log", yscale="log", xlabel="iteration k", ylabel=r"$\|q^* - q^{\pi_k}\|_\infty$",
               title=f"noise std {sd:g}" if sd > 0 else f"no noise (errors below {FLOOR:g} drawn at it)")
        ax.legend(fontsize=8)
    fig.suptitle("Error of the greedy policies (mean over Garnets × seeds, 10-90% band)")
    fig.tight_layout()
    return fig


def plot_heatmap(m) -> plt.Figure:
    """(b) log10 of the final error (mean over runs) over the (λ, τ) grid."""
    sel = m["part"] == "heatmap"
    lams, taus = np.unique(m["lam"][sel]), np.unique(m["tau"][sel])
    grid = np.full((len(lams), len(taus)), np.nan)
    for i, lam in enumerate(lams):
        for j, tau in enumerate(taus):
            grid[i, j] = m["value"][sel & _mask(m, lam=lam, tau=tau)].mean()
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(np.log10(grid), origin="lower", aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(taus)), [f"{t:.0e}" for t in taus], rotation=45, fontsize=8)
    ax.set_yticks(range(len(lams)), [f"{x:.0e}" for x in lams], fontsize=8)
    ax.set(xlabel=r"entropy $\tau$", ylabel=r"KL $\lambda$")
    i, j = np.unravel_index(np.nanargmin(grid), grid.shape)
    ax.plot(j, i, "r*", ms=12, label=f"best λ={lams[i]:.2g}, τ={taus[j]:.2g}")
    ax.legend(loc="upper left", fontsize=8)
    k = int(m["iteration"][sel][0])
    fig.colorbar(im, ax=ax, label=r"$\log_{10}\|q^* - q^{\pi_K}\|_\infty$")
    ax.set_title(f"Final error after K={k} noisy MD-VI iterations")
    fig.tight_layout()
    return fig


def _horizon_noisy(m):
    sel = m["part"] == "horizon"
    return sel & (m["noise_std"] == m["noise_std"][sel].max())


def horizon_slopes(m) -> dict[str, float]:
    """Log-log slope of the mean final error against the horizon 1/(1−γ), per scheme, on
    the noisy runs (the largest noise level of part (c))."""
    sel = _horizon_noisy(m)
    slopes = {}
    for s in SCHEMES:
        mask = sel & (m["scheme"] == s)
        if not mask.any():
            continue
        gammas = np.unique(m["gamma"][mask])
        means = [m["value"][mask & _mask(m, gamma=g)].mean() for g in gammas]
        slopes[s] = fit_loglog_slope(1.0 / (1.0 - gammas), means)
    return slopes


def plot_horizon(m) -> plt.Figure:
    """(c) mean final error vs horizon 1/(1−γ), log-log, with the fitted slopes (noisy runs)."""
    sel = _horizon_noisy(m)
    slopes = horizon_slopes(m)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for s, slope in slopes.items():
        mask = sel & (m["scheme"] == s)
        gammas = np.unique(m["gamma"][mask])
        h = 1.0 / (1.0 - gammas)
        vals = [m["value"][mask & _mask(m, gamma=g)] for g in gammas]
        means = np.array([v.mean() for v in vals])
        ax.errorbar(h, means, yerr=[means - [np.quantile(v, 0.1) for v in vals],
                                    [np.quantile(v, 0.9) for v in vals] - means],
                    fmt="s--" if s == "vi" else "o-", color=COLORS[s], capsize=3, zorder=5 if s == "vi" else 2,
                    label=f"{LABELS[s]} (slope {slope:.2f})")
    ax.set(xscale="log", yscale="log", xlabel=r"horizon $1/(1-\gamma)$",
           ylabel=r"final $\|q^* - q^{\pi_K}\|_\infty$",
           title=f"Error growth with the horizon (noise std {m['noise_std'][sel].max():g})")
    h = 1.0 / (1.0 - np.unique(m["gamma"][sel]))
    ax.set_xticks(h, [f"{x:.3g}" for x in h])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_bound(m) -> plt.Figure:
    """(d) τ = 0 runs: measured error (mean and max over runs) against the bound (min over
    runs), one panel per λ, at the largest noise level."""
    sel = m["part"] == "bound"
    lams = np.unique(m["lam"][sel])
    sd = np.unique(m["noise_std"][sel]).max()
    fig, axes = plt.subplots(1, len(lams), figsize=(4.5 * len(lams), 4), squeeze=False)
    for ax, lam in zip(axes[0], lams):
        base = sel & _mask(m, lam=lam, noise_std=sd)
        iters, err = _runs_by_iteration(m, base & (m["metric"] == "error"))
        _, bnd = _runs_by_iteration(m, base & (m["metric"] == "bound"))
        _, lit = _runs_by_iteration(m, base & (m["metric"] == "bound_literal"))
        ax.plot(iters, err.mean(0), color="tab:blue", label="error (mean)")
        ax.plot(iters, err.max(0), color="tab:blue", ls=":", label="error (max over runs)")
        ax.plot(iters, bnd.min(0), color="tab:red", label=r"bound for $\pi_{k+1}$ (min over runs)")
        ax.plot(iters, np.where(np.isfinite(lit), lit, np.nan).min(0), color="tab:red", ls="--",
                label=r"same bound for $\pi_k$")
        ratio = np.nanmax(err / bnd)
        ax.set(xscale="log", yscale="log", xlabel="iteration k", ylabel=r"$\|q^* - q^{\pi}\|_\infty$",
               title=f"λ={lam:g}, τ=0, σ={sd:g}: max ratio {ratio:.3f}")
        ax.legend(fontsize=7)
    fig.suptitle("KL-only MD-VI against the τ = 0 bound of Leverage the Average")
    fig.tight_layout()
    return fig


def draw_all(results_dir: str, figures_dir: str | None = None) -> list[str]:
    """Reads `results_dir/metrics.csv` and writes the four PNGs into `figures_dir`."""
    figures_dir = figures_dir or results_dir
    os.makedirs(figures_dir, exist_ok=True)
    m = read_metrics(os.path.join(results_dir, "metrics.csv"))
    paths = []
    for name, fn in zip(FIGURES, (plot_curves, plot_heatmap, plot_horizon, plot_bound)):
        fig = fn(m)
        path = os.path.join(figures_dir, name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
