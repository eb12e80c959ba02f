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
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from klrl.output import OutputSection
from klrl.sections import Section, Sections, ranged, section_field, setting

# ----------------------------------------------------------------------------------------
# Config: one self-checking section per TOML table (klrl.sections), read by klrl.config's
# walker (pure Python: nothing is compiled here).

DEFAULT_OUT_DIR = "results/leverage_average"


@dataclass(frozen=True)
class ExperimentSection(Section):
    SECTION: ClassVar[str] = "experiment"
    out_dir: str = setting(DEFAULT_OUT_DIR, doc="output directory unless --out is given")
    seed: int = ranged(0, lo=0, doc="root of the Garnets' and the noise's keys")

    def check(self) -> None:
        if not self.out_dir:
            self.fail("out_dir", self.out_dir, "a non-empty path")


@dataclass(frozen=True)
class GarnetSection(Section):
    """Garnet(N_S, N_A, N_B): branching = 10% of the states, rewards U[0, 1]."""

    SECTION: ClassVar[str] = "garnet"
    num_garnets: int = ranged(5, lo=1)
    num_states: int = ranged(50, lo=1)
    num_actions: int = ranged(4, lo=1)
    branching: int = ranged(5, lo=1)

    def check(self) -> None:
        if self.branching > self.num_states:
            self.fail("branching", self.branching, f"1..garnet.num_states={self.num_states}")


@dataclass(frozen=True)
class NoiseSection(Section):
    SECTION: ClassVar[str] = "noise"
    std: float = ranged(1.0, lo=0.0, lo_open=True, doc="per entry and iteration")
    num_seeds: int = ranged(3, lo=1, doc="noise seeds per Garnet")


def _positive(default: float):
    return ranged(default, lo=0.0, lo_open=True)


def _discount(default):
    return ranged(default, lo=0.0, hi=1.0, lo_open=True, hi_open=True)


@dataclass(frozen=True)
class SchemesSection(Section):
    """(λ, τ) of the MD-VI schemes of parts (a) and (c)."""

    SECTION: ClassVar[str] = "schemes"
    entropy_tau: float = _positive(0.01)
    kl_lam: float = _positive(1.0)
    kl_entropy_lam: float = _positive(1.0)
    kl_entropy_tau: float = _positive(0.01)


class _Iterations(Section):
    """num_iterations and an evaluation period that divides it (fields of the subclasses)."""

    def check(self) -> None:
        if self.num_iterations % self.eval_every:
            self.fail("eval_every", self.eval_every,
                      f"a divisor of {self.SECTION}.num_iterations={self.num_iterations}")


@dataclass(frozen=True)
class CurvesSection(_Iterations):
    SECTION: ClassVar[str] = "curves"
    gamma: float = _discount(0.9)
    num_iterations: int = ranged(1000, lo=1)
    eval_every: int = ranged(20, lo=1)


@dataclass(frozen=True)
class HeatmapSection(Section):
    SECTION: ClassVar[str] = "heatmap"
    gamma: float = _discount(0.9)
    num_iterations: int = ranged(1000, lo=1)
    lam_min: float = _positive(1e-2)
    lam_max: float = _positive(1e2)
    num_lam: int = ranged(9, lo=1)
    tau_min: float = _positive(1e-4)
    tau_max: float = _positive(1.0)
    num_tau: int = ranged(9, lo=1)

    def check(self) -> None:
        for name in ("lam", "tau"):
            lo, hi = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
            if lo > hi:
                self.fail(f"{name}_min", lo, f"<= heatmap.{name}_max={hi}")


@dataclass(frozen=True)
class HorizonSection(_Iterations):
    SECTION: ClassVar[str] = "horizon"
    gammas: tuple[float, ...] = _discount((0.8, 0.9, 0.95, 0.975, 0.9875))
    num_iterations: int = ranged(1000, lo=1)
    eval_every: int = ranged(20, lo=1)


@dataclass(frozen=True)
class BoundSection(_Iterations):
    SECTION: ClassVar[str] = "bound"
    gamma: float = _discount(0.9)
    num_iterations: int = ranged(1000, lo=1)
    eval_every: int = ranged(20, lo=1)
    lams: tuple[float, ...] = _positive((0.1, 1.0, 10.0))
    noise_stds: tuple[float, ...] = _positive((0.3, 1.0))


@dataclass(frozen=True)
class LeverageConfig(Sections):
    """The whole experiment file (experiments/leverage_average.toml lists every key)."""

    experiment: ExperimentSection = section_field(ExperimentSection)
    garnet: GarnetSection = section_field(GarnetSection)
    noise: NoiseSection = section_field(NoiseSection)
    schemes: SchemesSection = section_field(SchemesSection)
    curves: CurvesSection = section_field(CurvesSection)
    heatmap: HeatmapSection = section_field(HeatmapSection)
    horizon: HorizonSection = section_field(HorizonSection)
    bound: BoundSection = section_field(BoundSection)
    output: OutputSection = section_field(OutputSection)


# --quick: tiny sizes for smoke tests (same code path, a few seconds of compute). Parts (a),
# (c) and (d) then have identical shapes (2 noise levels × 3 coefficient pairs, same K and
# evaluation period), as with the defaults, so they share one compiled program.
QUICK: dict[str, dict[str, Any]] = {
    "garnet": {"num_garnets": 2, "num_states": 8, "num_actions": 3, "branching": 2},
    "noise": {"num_seeds": 2},
    "curves": {"num_iterations": 60, "eval_every": 10},
    "heatmap": {"num_iterations": 60, "num_lam": 3, "num_tau": 3},
    "horizon": {"gammas": [0.8, 0.9, 0.95], "num_iterations": 60, "eval_every": 10},
    "bound": {"num_iterations": 60, "eval_every": 10},
}


def _with_quick(raw: dict[str, Any]) -> dict[str, Any]:
    out = {s: dict(t) if isinstance(t, dict) else t for s, t in raw.items()}
    for section, table in QUICK.items():
        out[section] = {**out.get(section, {}), **table}
    return out


def load_config(config_path: str, quick: bool = False, overrides: Sequence[str] = ()) -> LeverageConfig:
    """Reads and checks a TOML experiment file plus `--set` overrides (klrl.config's walker);
    `quick` then shrinks it (`QUICK`, under the overrides). Nothing is written."""
    from klrl import config

    raw = config.read_toml(config_path)
    cfg = config.build_config(LeverageConfig, raw, overrides)
    if quick:
        cfg = config.build_config(LeverageConfig, _with_quick(raw), overrides)
    return cfg


def quick_config(cfg: LeverageConfig) -> LeverageConfig:
    """`cfg` with the `QUICK` sizes."""
    return cfg.replace(**QUICK)


def heatmap_grid(cfg) -> tuple[np.ndarray, np.ndarray]:
    """The (λ, τ) log grids of part (b)."""
    h = cfg.heatmap
    lams = np.geomspace(h.lam_min, h.lam_max, h.num_lam)
    taus = np.geomspace(h.tau_min, h.tau_max, h.num_tau)
    return lams, taus


def scheme_coefficients(cfg) -> dict[str, tuple[float, float]]:
    """(λ, τ) of the MD-VI schemes of parts (a) and (c); VI is separate."""
    s = cfg.schemes
    return {
        "entropy": (0.0, s.entropy_tau),
        "kl": (s.kl_lam, 0.0),
        "kl_entropy": (s.kl_entropy_lam, s.kl_entropy_tau),
    }


SCHEMES = ("vi", "entropy", "kl", "kl_entropy")

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


def compute(cfg) -> dict[str, Any]:
    """Runs parts (a)-(d) in float64 and returns numpy arrays plus compute times."""
    import jax
    import jax.numpy as jnp

    out: dict[str, Any] = {"seconds": {}}
    with jax.enable_x64(True):
        md_sweep, vi_sweep, _, bound_jit = _sweep_fns()
        mdps, keys = make_instances(cfg)
        r_max = np.asarray(jnp.max(jnp.abs(mdps.r), axis=(1, 2)))  # [G]
        A = cfg.garnet.num_actions
        coefs = scheme_coefficients(cfg)
        md_names = list(coefs)
        lams_c = jnp.array([coefs[n][0] for n in md_names])
        taus_c = jnp.array([coefs[n][1] for n in md_names])
        sigma = cfg.noise.std

        # (a) curves: with and without noise.
        t0 = time.perf_counter()
        c = cfg.curves
        kw = dict(num_iterations=c.num_iterations, eval_every=c.eval_every)
        q_stars = _optimal_qs(mdps, jnp.asarray(c.gamma))
        stds = jnp.array([0.0, sigma])
        md_err, _ = md_sweep(mdps, q_stars, keys, jnp.asarray(c.gamma), stds, lams_c, taus_c, **kw)
        vi_err, _ = vi_sweep(mdps, q_stars, keys, jnp.asarray(c.gamma), stds, **kw)
        errs = np.concatenate([np.asarray(vi_err)[:, :, :, None], np.asarray(md_err)], axis=3)
        out["curves"] = {"errors": errs, "schemes": ["vi", *md_names], "noise_stds": np.asarray(stds),
                         "iterations": np.arange(1, c.num_iterations // c.eval_every + 1) * c.eval_every}
        out["seconds"]["curves"] = time.perf_counter() - t0

        # (b) heatmap: final error over the (λ, τ) log grid, noisy.
        t0 = time.perf_counter()
        h = cfg.heatmap
        lams, taus = heatmap_grid(cfg)
        L, T = np.meshgrid(lams, taus, indexing="ij")
        q_stars = _optimal_qs(mdps, jnp.asarray(h.gamma)) if h.gamma != c.gamma else q_stars
        hm_err, _ = md_sweep(mdps, q_stars, keys, jnp.asarray(h.gamma), jnp.array([sigma]),
                             jnp.asarray(L.ravel()), jnp.asarray(T.ravel()),
                             num_iterations=h.num_iterations, eval_every=h.num_iterations)
        final = np.asarray(hm_err)[:, :, 0, :, -1].reshape(*hm_err.shape[:2], len(lams), len(taus))
        out["heatmap"] = {"final_error": final, "lams": lams, "taus": taus}
        out["seconds"]["heatmap"] = time.perf_counter() - t0

        # (c) horizon: final error vs 1/(1−γ), without and with noise; γ is traced, so every
        # γ reuses one compiled program (the same as (a) when the shapes agree).
        t0 = time.perf_counter()
        hz = cfg.horizon
        kw = dict(num_iterations=hz.num_iterations, eval_every=hz.eval_every)
        kl = md_names.index("kl")
        finals, bound_ratio_h = [], []
        for gamma in hz.gammas:
            g = jnp.asarray(gamma)
            qs = _optimal_qs(mdps, g)
            md_e, md_noise = md_sweep(mdps, qs, keys, g, stds, lams_c, taus_c, **kw)
            vi_e, _ = vi_sweep(mdps, qs, keys, g, stds, **kw)
            finals.append(np.concatenate([np.asarray(vi_e)[:, :, :, None, -1],
                                          np.asarray(md_e)[..., -1]], axis=3))  # [G, R, N, scheme]
            # The KL-only runs also enter the bound check (final iteration, both indexings).
            for offset in (0, 1):
                b = bound_jit(md_noise[:, :, :, kl], jnp.array([hz.num_iterations]), g,
                              coefs["kl"][0], jnp.asarray(r_max)[:, None, None, None], A,
                              policy_offset=offset)
                bound_ratio_h.append((offset, np.asarray(md_e[:, :, :, kl, -1] / b[..., -1])))
        out["horizon"] = {"final_error": np.stack(finals, axis=2),  # [G, R, Γ, N, scheme]
                          "gammas": np.asarray(hz.gammas), "noise_stds": np.asarray(stds),
                          "schemes": ["vi", *md_names]}
        out["bound_horizon_ratios"] = bound_ratio_h
        out["seconds"]["horizon"] = time.perf_counter() - t0

        # (d) bound: τ = 0 runs over λ × σ against the bound, at every evaluated iteration.
        t0 = time.perf_counter()
        bd = cfg.bound
        q_stars_b = _optimal_qs(mdps, jnp.asarray(bd.gamma))
        lam_b = jnp.asarray(bd.lams, dtype=jnp.float64)
        b_err, b_noise = md_sweep(mdps, q_stars_b, keys, jnp.asarray(bd.gamma), jnp.asarray(bd.noise_stds),
                                  lam_b, jnp.zeros_like(lam_b), num_iterations=bd.num_iterations,
                                  eval_every=bd.eval_every)
        iters = np.arange(1, bd.num_iterations // bd.eval_every + 1) * bd.eval_every
        bounds = {}
        for offset, name in ((1, "bound"), (0, "bound_literal")):
            bounds[name] = np.asarray(bound_jit(
                b_noise, jnp.asarray(iters), jnp.asarray(bd.gamma), lam_b[None, None, None, :, None],
                jnp.asarray(r_max)[:, None, None, None, None], A, policy_offset=offset))
        out["bound"] = {"errors": np.asarray(b_err), "iterations": iters, **bounds,
                        "lams": np.asarray(bd.lams), "noise_stds": np.asarray(bd.noise_stds)}
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
