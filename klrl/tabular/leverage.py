"""The "Leverage the Average" tabular experiments (Vieillard et al. 2020).

`klrl tabular experiments/leverage_average.toml [--quick] [--out DIR] [--set SECTION.KEY=VALUE]`
runs, over several Garnets × noise seeds, exact MD-VI / VI with i.i.d. Gaussian noise on every
(s, a) and iteration, and writes to the output directory (`--out`, else `experiment.out_dir`;
an existing non-empty one is refused or, with `output.if_exists = "new_subdir"`, the run goes
to `<dir>/runs/<UTC timestamp>/`, as for `klrl train`):

  metrics.csv   tidy long form, one row per (part, scheme, garnet, seed, γ, λ, τ, σ,
                iteration, metric): the measurements behind every figure
  summary.json  fitted horizon slopes, the bound check (max measured/bound), mean final errors
  config.json   the resolved config (after --quick), run times and provenance
  *.png         the figures (klrl.tabular.plots; the notebook redraws them from metrics.csv)

Parts: (a) `curves`: ‖q* − q^{π_k}‖_∞ vs k for VI, entropy only, KL only, KL + entropy,
with and without noise; (b) `heatmap`: the final error over a log grid of (λ, τ);
(c) `horizon`: the final error vs 1/(1−γ) and fitted log-log slopes; (d) `bound`: the
τ = 0 runs against the bound of `klrl.tabular.bounds` (both indexings; never weakened).

Schemes are MD-VI(λ, τ) (entropy only: λ = 0; KL only: τ = 0) and VI. Every part is one
jitted program vmapped over garnets × seeds × noise levels × coefficients; runs that share a
(garnet, seed) share their noise sequence, so schemes are compared on the same noise.

Defaults (chosen here; the paper's exact sizes were not verified, see docs/algorithms.md):
Garnet(N_S = 50, N_A = 4, N_B = 5): branching at 10% of the states, as is common for Garnets,
small enough that an exact 50×50 solve per evaluation is cheap. Rewards uniform in [0, 1].
Noise σ = 1.0 per entry and iteration: the size of the reward range, large enough that VI
sits on a visible noise floor at γ = 0.9 while KL averaging still converges within 1000
iterations.

On the horizon slopes (part (c)): the bounds give ~1/(1−γ) with KL and ~1/(1−γ)² for VI,
but those are worst cases over the error sequence. With i.i.d. noise of a fixed σ, VI's
error cannot exceed the value range, which is itself linear in the horizon (rewards in
[0, 1] give q ∈ [0, 1/(1−γ)]); VI sits at a fixed fraction of that range, so its measured
slope is about 1. The KL schemes' errors are one to two orders of magnitude smaller and grow
more slowly. The numbers are reported as measured (summary.json), not adjusted.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, NamedTuple

import numpy as np

# The config lives in klrl.tabular.leverage_config; the names its users read stay importable here.
from klrl.tabular.leverage_config import (  # noqa: F401
    QUICK, SCHEMES, LeverageConfig, heatmap_grid, load_config, quick_config, scheme_coefficients,
)


# ----------------------------------------------------------------------------------------
# Computation: one jitted, vmapped program per part.


@functools.lru_cache(maxsize=None)
def _sweep_fns():
    """Builds the jitted sweeps once per process (imports JAX lazily: config errors never pay
    for it). Cached so that repeated runs in one process reuse the compiled programs."""
    import jax

    from klrl.tabular.schemes import md_vi, vi

    def md_run(mdp, q_star, key, gamma, std, lam, tau, *, num_iterations, eval_every):
        res = md_vi(mdp, gamma, lam, tau, num_iterations, noise_std=std, key=key,
                    q_star=q_star, eval_every=eval_every)
        return res.errors, res.noise_mean_norm

    def vi_run(mdp, q_star, key, gamma, std, *, num_iterations, eval_every):
        res = vi(mdp, gamma, num_iterations, noise_std=std, key=key, q_star=q_star,
                 eval_every=eval_every)
        return res.errors, res.noise_mean_norm

    static = ("num_iterations", "eval_every")

    def md_sweep(mdps, q_stars, keys, gamma, stds, lams, taus, *, num_iterations, eval_every):
        """-> errors [G, R, N, C, E], noise_mean_norm [G, R, N, C, K]; C pairs (λ_c, τ_c)."""
        f = lambda m, q, k, s, l, t: md_run(m, q, k, gamma, s, l, t, num_iterations=num_iterations,
                                             eval_every=eval_every)
        f = jax.vmap(f, (None, None, None, None, 0, 0))      # coefficient pairs
        f = jax.vmap(f, (None, None, None, 0, None, None))   # noise levels
        f = jax.vmap(f, (None, None, 0, None, None, None))   # seeds
        f = jax.vmap(f, (0, 0, 0, None, None, None))         # garnets
        return f(mdps, q_stars, keys, stds, lams, taus)

    def vi_sweep(mdps, q_stars, keys, gamma, stds, *, num_iterations, eval_every):
        """-> errors [G, R, N, E], noise_mean_norm [G, R, N, K]."""
        f = lambda m, q, k, s: vi_run(m, q, k, gamma, s, num_iterations=num_iterations,
                                       eval_every=eval_every)
        f = jax.vmap(f, (None, None, None, 0))
        f = jax.vmap(f, (None, None, 0, None))
        f = jax.vmap(f, (0, 0, 0, None))
        return f(mdps, q_stars, keys, stds)

    from klrl.tabular.bounds import bound_for_policies
    from klrl.tabular.evaluation import optimal_q

    return (jax.jit(md_sweep, static_argnames=static), jax.jit(vi_sweep, static_argnames=static),
            jax.jit(jax.vmap(optimal_q, (0, None))),
            jax.jit(bound_for_policies, static_argnames=("num_actions", "policy_offset")))


def make_instances(cfg):
    """The Garnets [G] and the noise keys [G, R] of an experiment (deterministic in the seed:
    garnet i and seed j always get the same MDP and noise; different (i, j), different noise)."""
    import jax

    from klrl.tabular.mdp import garnet

    g, n = cfg.garnet, cfg.noise
    root = jax.random.key(cfg.experiment.seed)
    mdp_keys = jax.random.split(jax.random.fold_in(root, 0), g.num_garnets)
    mdps = jax.vmap(lambda k: garnet(k, g.num_states, g.num_actions, g.branching))(mdp_keys)
    noise_keys = jax.random.split(jax.random.fold_in(root, 1), g.num_garnets * n.num_seeds)
    noise_keys = noise_keys.reshape(g.num_garnets, n.num_seeds)
    return mdps, noise_keys


def _optimal_qs(mdps, gamma):
    """q* of every Garnet [G, S, A] (one compiled program, γ traced)."""
    return _sweep_fns()[2](mdps, gamma)


class _Shared(NamedTuple):
    """What every part uses: the compiled sweeps, the instances, the scheme coefficients."""

    md_sweep: Any
    vi_sweep: Any
    bound_jit: Any
    mdps: Any
    keys: Any
    r_max: np.ndarray   # [G]
    coefs: dict         # scheme -> (λ, τ), MD-VI schemes only
    md_names: list
    lams_c: Any         # [C] λ of the MD-VI schemes, in md_names order
    taus_c: Any         # [C]
    stds: Any           # [0, σ]: noiseless and noisy


def _shared(cfg) -> _Shared:
    import jax.numpy as jnp

    md_sweep, vi_sweep, _, bound_jit = _sweep_fns()
    mdps, keys = make_instances(cfg)
    coefs = scheme_coefficients(cfg)
    md_names = list(coefs)
    return _Shared(md_sweep, vi_sweep, bound_jit, mdps, keys,
                   r_max=np.asarray(jnp.max(jnp.abs(mdps.r), axis=(1, 2))), coefs=coefs,
                   md_names=md_names, lams_c=jnp.array([coefs[n][0] for n in md_names]),
                   taus_c=jnp.array([coefs[n][1] for n in md_names]),
                   stds=jnp.array([0.0, cfg.noise.std]))


def _curves(cfg, sh: _Shared, q_stars) -> dict[str, Any]:
    """(a) ‖q* − q^{π_k}‖_∞ vs k for VI and the MD-VI schemes, with and without noise."""
    import jax.numpy as jnp

    c = cfg.curves
    kw = dict(num_iterations=c.num_iterations, eval_every=c.eval_every)
    g = jnp.asarray(c.gamma)
    md_err, _ = sh.md_sweep(sh.mdps, q_stars, sh.keys, g, sh.stds, sh.lams_c, sh.taus_c, **kw)
    vi_err, _ = sh.vi_sweep(sh.mdps, q_stars, sh.keys, g, sh.stds, **kw)
    errs = np.concatenate([np.asarray(vi_err)[:, :, :, None], np.asarray(md_err)], axis=3)
    return {"errors": errs, "schemes": ["vi", *sh.md_names], "noise_stds": np.asarray(sh.stds),
            "iterations": np.arange(1, c.num_iterations // c.eval_every + 1) * c.eval_every}


def _heatmap(cfg, sh: _Shared, q_stars) -> dict[str, Any]:
    """(b) the final noisy error over the (λ, τ) log grid."""
    import jax.numpy as jnp

    h = cfg.heatmap
    lams, taus = heatmap_grid(cfg)
    L, T = np.meshgrid(lams, taus, indexing="ij")
    hm_err, _ = sh.md_sweep(sh.mdps, q_stars, sh.keys, jnp.asarray(h.gamma), jnp.array([cfg.noise.std]),
                            jnp.asarray(L.ravel()), jnp.asarray(T.ravel()),
                            num_iterations=h.num_iterations, eval_every=h.num_iterations)
    final = np.asarray(hm_err)[:, :, 0, :, -1].reshape(*hm_err.shape[:2], len(lams), len(taus))
    return {"final_error": final, "lams": lams, "taus": taus}


def _horizon(cfg, sh: _Shared) -> tuple[dict[str, Any], list]:
    """(c) the final error vs 1/(1−γ), without and with noise, and the KL-only runs' bound
    ratios (final iteration, both indexings). γ is traced, so every γ reuses one compiled
    program (the same as (a) when the shapes agree)."""
    import jax.numpy as jnp

    hz = cfg.horizon
    kw = dict(num_iterations=hz.num_iterations, eval_every=hz.eval_every)
    kl = sh.md_names.index("kl")
    finals, bound_ratio_h = [], []
    for gamma in hz.gammas:
        g = jnp.asarray(gamma)
        qs = _optimal_qs(sh.mdps, g)
        md_e, md_noise = sh.md_sweep(sh.mdps, qs, sh.keys, g, sh.stds, sh.lams_c, sh.taus_c, **kw)
        vi_e, _ = sh.vi_sweep(sh.mdps, qs, sh.keys, g, sh.stds, **kw)
        finals.append(np.concatenate([np.asarray(vi_e)[:, :, :, None, -1],
                                      np.asarray(md_e)[..., -1]], axis=3))  # [G, R, N, scheme]
        for offset in (0, 1):
            b = sh.bound_jit(md_noise[:, :, :, kl], jnp.array([hz.num_iterations]), g,
                             sh.coefs["kl"][0], jnp.asarray(sh.r_max)[:, None, None, None],
                             cfg.garnet.num_actions, policy_offset=offset)
            bound_ratio_h.append((offset, np.asarray(md_e[:, :, :, kl, -1] / b[..., -1])))
    return ({"final_error": np.stack(finals, axis=2),  # [G, R, Γ, N, scheme]
             "gammas": np.asarray(hz.gammas), "noise_stds": np.asarray(sh.stds),
             "schemes": ["vi", *sh.md_names]}, bound_ratio_h)


def _bound(cfg, sh: _Shared) -> dict[str, Any]:
    """(d) τ = 0 runs over λ × σ against the bound, at every evaluated iteration."""
    import jax.numpy as jnp

    bd = cfg.bound
    q_stars_b = _optimal_qs(sh.mdps, jnp.asarray(bd.gamma))
    lam_b = jnp.asarray(bd.lams, dtype=jnp.float64)
    b_err, b_noise = sh.md_sweep(sh.mdps, q_stars_b, sh.keys, jnp.asarray(bd.gamma),
                                 jnp.asarray(bd.noise_stds), lam_b, jnp.zeros_like(lam_b),
                                 num_iterations=bd.num_iterations, eval_every=bd.eval_every)
    iters = np.arange(1, bd.num_iterations // bd.eval_every + 1) * bd.eval_every
    bounds = {}
    for offset, name in ((1, "bound"), (0, "bound_literal")):
        bounds[name] = np.asarray(sh.bound_jit(
            b_noise, jnp.asarray(iters), jnp.asarray(bd.gamma), lam_b[None, None, None, :, None],
            jnp.asarray(sh.r_max)[:, None, None, None, None], cfg.garnet.num_actions,
            policy_offset=offset))
    return {"errors": np.asarray(b_err), "iterations": iters, **bounds,
            "lams": np.asarray(bd.lams), "noise_stds": np.asarray(bd.noise_stds)}


def compute(cfg) -> dict[str, Any]:
    """Runs parts (a)-(d) in float64 and returns numpy arrays plus compute times."""
    import jax
    import jax.numpy as jnp

    out: dict[str, Any] = {"seconds": {}}
    with jax.enable_x64(True):
        sh = _shared(cfg)
        t0 = time.perf_counter()
        q_stars = _optimal_qs(sh.mdps, jnp.asarray(cfg.curves.gamma))
        out["curves"] = _curves(cfg, sh, q_stars)
        out["seconds"]["curves"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        if cfg.heatmap.gamma != cfg.curves.gamma:
            q_stars = _optimal_qs(sh.mdps, jnp.asarray(cfg.heatmap.gamma))
        out["heatmap"] = _heatmap(cfg, sh, q_stars)
        out["seconds"]["heatmap"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        out["horizon"], out["bound_horizon_ratios"] = _horizon(cfg, sh)
        out["seconds"]["horizon"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        out["bound"] = _bound(cfg, sh)
        out["seconds"]["bound"] = time.perf_counter() - t0
    return out


# ----------------------------------------------------------------------------------------
# Summaries: slopes and the bound check.


def fit_loglog_slope(x, y) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def summarize(cfg, out) -> dict[str, Any]:
    hz = out["horizon"]
    horizons = 1.0 / (1.0 - hz["gammas"])
    mean_final = hz["final_error"][:, :, :, -1].mean(axis=(0, 1))  # noisy runs: [Γ, scheme]
    slopes = {s: fit_loglog_slope(horizons, mean_final[:, i]) for i, s in enumerate(hz["schemes"])}
    # Without noise VI is exact (error ~1e-15, rounding): a slope is only fitted where every
    # mean error is well above rounding.
    clean = hz["final_error"][:, :, :, 0].mean(axis=(0, 1))
    slopes_clean = {s: fit_loglog_slope(horizons, clean[:, i]) for i, s in enumerate(hz["schemes"])
                    if np.all(clean[:, i] > 1e-9)}

    bd = out["bound"]
    ratio = bd["errors"] / bd["bound"]
    ratio_lit = bd["errors"] / bd["bound_literal"]
    h_ratios = {o: max(float(r.max()) for oo, r in out["bound_horizon_ratios"] if oo == o) for o in (0, 1)}
    cv = out["curves"]
    final_curves = cv["errors"][..., -1].mean(axis=(0, 1))  # [N, scheme]
    return {
        "horizon_slopes": slopes,
        "horizon_slopes_noiseless": slopes_clean,
        "horizon_mean_final_error": {s: mean_final[:, i].tolist() for i, s in enumerate(hz["schemes"])},
        "horizons": horizons.tolist(),
        "bound_check": {
            "max_ratio_measured_over_bound": max(float(ratio.max()), h_ratios[1]),
            "max_ratio_literal_indexing": max(float(ratio_lit.max()), h_ratios[0]),
            "holds_everywhere": bool(ratio.max() <= 1.0 and h_ratios[1] <= 1.0),
            "holds_everywhere_literal_indexing": bool(ratio_lit.max() <= 1.0 and h_ratios[0] <= 1.0),
            "num_runs": int(ratio[..., 0].size + sum(r.size for o, r in out["bound_horizon_ratios"] if o == 1)),
            "num_checked_points": int(ratio.size + sum(r.size for o, r in out["bound_horizon_ratios"] if o == 1)),
        },
        "curves_mean_final_error": {
            f"{s}@noise_std={float(sd):g}": float(final_curves[n, i])
            for n, sd in enumerate(cv["noise_stds"]) for i, s in enumerate(cv["schemes"])
        },
        "heatmap_best": _heatmap_best(out["heatmap"]),
        "compute_seconds": out["seconds"],
    }


def _heatmap_best(hm) -> dict[str, float]:
    mean = hm["final_error"].mean(axis=(0, 1))
    i, j = np.unravel_index(np.argmin(mean), mean.shape)
    return {"lam": float(hm["lams"][i]), "tau": float(hm["taus"][j]), "mean_final_error": float(mean[i, j])}


# ----------------------------------------------------------------------------------------
# Tidy metrics (written by klrl.results.TidyWriter, the writer of `klrl train`'s metrics.csv).

COLUMNS = ("part", "scheme", "garnet", "seed", "gamma", "lam", "tau", "noise_std",
           "iteration", "metric", "value")


def metric_rows(cfg, out):
    """Yields tidy rows (tuples in `COLUMNS` order) for every measurement of `out`."""
    coefs = scheme_coefficients(cfg)
    coefs["vi"] = (math.nan, math.nan)

    cv = out["curves"]
    G, R = cv["errors"].shape[:2]
    gamma = cfg.curves.gamma
    for g in range(G):
        for r in range(R):
            for n, sd in enumerate(cv["noise_stds"]):
                for i, s in enumerate(cv["schemes"]):
                    lam, tau = coefs[s]
                    for e, it in enumerate(cv["iterations"]):
                        yield ("curves", s, g, r, gamma, lam, tau, sd, it, "error", cv["errors"][g, r, n, i, e])

    hm = out["heatmap"]
    gamma, K, sd = cfg.heatmap.gamma, cfg.heatmap.num_iterations, cfg.noise.std
    for g in range(G):
        for r in range(R):
            for i, lam in enumerate(hm["lams"]):
                for j, tau in enumerate(hm["taus"]):
                    yield ("heatmap", "md_vi", g, r, gamma, lam, tau, sd, K, "error", hm["final_error"][g, r, i, j])

    hz = out["horizon"]
    K = cfg.horizon.num_iterations
    for g in range(G):
        for r in range(R):
            for k, gamma in enumerate(hz["gammas"]):
                for n, sd in enumerate(hz["noise_stds"]):
                    for i, s in enumerate(hz["schemes"]):
                        lam, tau = coefs[s]
                        yield ("horizon", s, g, r, gamma, lam, tau, sd, K, "error", hz["final_error"][g, r, k, n, i])

    bd = out["bound"]
    gamma = cfg.bound.gamma
    for g in range(G):
        for r in range(R):
            for n, sd in enumerate(bd["noise_stds"]):
                for c, lam in enumerate(bd["lams"]):
                    for e, it in enumerate(bd["iterations"]):
                        for metric in ("error", "bound", "bound_literal"):
                            arr = bd["errors"] if metric == "error" else bd[metric]
                            yield ("bound", "kl", g, r, gamma, lam, 0.0, sd, it, metric, arr[g, r, n, c, e])


def read_metrics(path: str) -> dict[str, np.ndarray]:
    """metrics.csv -> dict of column arrays (strings for part/scheme/metric, numbers else)."""
    from klrl.results import read_columns

    return read_columns(path, COLUMNS, strings=("part", "scheme", "metric"), ints=("garnet", "seed", "iteration"))
