"""`klrl bench tabular`: the default (λ, τ) grid of the Leverage-the-Average experiment, jitted
JAX against a straightforward numpy loop of the same computation.

The timed computation is part (b) of `klrl.tabular.leverage` with its default sizes
(`leverage.LeverageConfig()`, mirrored by experiments/leverage_average.toml): for every Garnet, noise
seed and (λ, τ) of the grid, K noisy MD-VI iterations in float64 and the exact error of the
final policy, plus q* of every Garnet (policy iteration). Noise is drawn once per
(Garnet, seed) and shared by the grid in both implementations.

- JAX: one jitted, vmapped program. `compile_seconds` = tracing + XLA compilation (AOT
  `lower().compile()`), `seconds` = the best of `repeats` executions of the compiled program.
  The same grid is also timed in float32 (`float32_info`, for information; everything else,
  the speedup included, is float64).
- numpy: a Python loop over runs and iterations (`numpy_md_vi`), written independently of
  klrl.operators from the definitions (mirror step by log-softmax, value by its defining sum
  <π₊, q − λ ln(π₊/π₋) − τ ln π₊>), so the agreement test also cross-checks the operators.
  In full mode a subset of runs (evenly spread over the grid) is measured, best of `repeats`,
  and the time extrapolated linearly in the number of runs (`numpy_extrapolated`,
  `numpy_runs_measured`); in quick mode every run is timed.

Writes results/bench/tabular.json (or `out_path`) with the times, speedup, sizes, provenance.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

DEFAULT_OUT = "results/bench/tabular.json"

# ----------------------------------------------------------------------------------------
# The numpy reference.


def numpy_q_of_policy(P: np.ndarray, r: np.ndarray, pi: np.ndarray, gamma: float) -> np.ndarray:
    """q^π by solving (I − γ P_π) v = r_π, then q = r + γ P v (no terminal states)."""
    S = r.shape[0]
    P_pi = np.einsum("sa,sat->st", pi, P)
    v = np.linalg.solve(np.eye(S) - gamma * P_pi, (pi * r).sum(1))
    return r + gamma * P @ v


def numpy_optimal_q(P: np.ndarray, r: np.ndarray, gamma: float, max_iterations: int = 200) -> np.ndarray:
    """q* by policy iteration (switch only on strict improvement)."""
    S, A = r.shape
    actions = r.argmax(1)
    for _ in range(max_iterations):
        q = numpy_q_of_policy(P, r, np.eye(A)[actions], gamma)
        q_act = q[np.arange(S), actions]
        better = q.max(1) > q_act + 1e-12 * (1.0 + np.abs(q_act))
        if not better.any():
            return q
        actions = np.where(better, q.argmax(1), actions)
    return q


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(1, keepdims=True))


def numpy_md_vi(P, r, gamma, lam, tau, num_iterations, *, noise=None, q_star=None, eval_every=None):
    """MD-VI(λ, τ) with q_0 = 0, π_0 uniform, `noise[k]` (= ε_{k+1}, [K, S, A]) or none.

    Returns (errors [E], policies [E, S, A]) at iterations eval_every, 2·eval_every, … (default:
    only the last), with errors ‖q* − q^{π_{k+1}}‖_∞.
    """
    S, A = r.shape
    eval_every = eval_every or num_iterations
    q_star = numpy_optimal_q(P, r, gamma) if q_star is None else q_star
    P_flat = P.reshape(S * A, S)
    q = np.zeros((S, A))
    log_pi = np.full((S, A), -np.log(A))
    errors, policies = [], []
    for k in range(num_iterations):
        log_pi_next = _log_softmax((lam * log_pi + q) / (lam + tau))
        pi = np.exp(log_pi_next)
        v = (pi * (q - lam * (log_pi_next - log_pi) - tau * log_pi_next)).sum(1)
        q = r + gamma * (P_flat @ v).reshape(S, A)
        if noise is not None:
            q = q + noise[k]
        log_pi = log_pi_next
        if (k + 1) % eval_every == 0:
            errors.append(np.abs(q_star - numpy_q_of_policy(P, r, pi, gamma)).max())
            policies.append(pi)
    return np.asarray(errors), np.asarray(policies)


# ----------------------------------------------------------------------------------------
# The benchmark.


def _time_jax(cfg, L, T, x64: bool, repeats: int):
    """Compiles part (b)'s sweep (AOT) and times `repeats` executions; -> (times, compile
    seconds, final errors [G, R, C], the Garnets)."""
    import jax
    import jax.numpy as jnp

    from klrl.tabular import leverage

    h, sigma = cfg.heatmap, cfg.noise.std
    K = h.num_iterations
    with jax.enable_x64(x64):
        md_sweep, _, optimal_qs, _ = leverage._sweep_fns()
        mdps, keys = leverage.make_instances(cfg)
        gamma = jnp.asarray(h.gamma)
        args = (jnp.array([sigma]), jnp.asarray(L, mdps.r.dtype), jnp.asarray(T, mdps.r.dtype))
        static = dict(num_iterations=K, eval_every=K)
        t0 = time.perf_counter()
        q_c = optimal_qs.lower(mdps, gamma).compile()
        q_stars = q_c(mdps, gamma)
        sweep_c = md_sweep.lower(mdps, q_stars, keys, gamma, *args, **static).compile()
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            q_stars = q_c(mdps, gamma)
            errors, _ = sweep_c(mdps, q_stars, keys, gamma, *args)
            jax.block_until_ready(errors)
            times.append(time.perf_counter() - t0)
        return times, compile_s, np.asarray(errors)[:, :, 0, :, -1], mdps


def _time_numpy(cfg, P_np, r_np, L, T, chosen, repeats: int):
    """q* per Garnet, noise per (Garnet, seed) (the setup), then the loop over the `chosen`
    runs × iterations, best of `repeats`; -> (setup seconds, loop seconds, all loop times)."""
    g, h, sigma = cfg.garnet, cfg.heatmap, cfg.noise.std
    G, R, K = g.num_garnets, cfg.noise.num_seeds, h.num_iterations
    rng = np.random.default_rng(cfg.experiment.seed)
    t0 = time.perf_counter()
    q_np = [numpy_optimal_q(P_np[i], r_np[i], h.gamma) for i in range(G)]
    noise = [[sigma * rng.standard_normal((K, g.num_states, g.num_actions)) for _ in range(R)]
             for _ in range(G)]
    setup_seconds = time.perf_counter() - t0
    loop_times = []
    for _ in range(repeats):  # best of `repeats`, like the JAX timing
        t0 = time.perf_counter()
        for run in chosen:
            i, rest = divmod(int(run), R * len(L))
            j, c = divmod(rest, len(L))
            numpy_md_vi(P_np[i], r_np[i], h.gamma, L[c], T[c], K, noise=noise[i][j], q_star=q_np[i])
        loop_times.append(time.perf_counter() - t0)
    return setup_seconds, min(loop_times), loop_times


def bench_tabular(out_path: str | None = None, quick: bool = False, *, repeats: int = 3,
                  numpy_runs: int = 24) -> dict[str, Any]:
    """Times the default (λ, τ) grid in JAX and numpy; writes and returns the JSON record."""
    from klrl.provenance import provenance
    from klrl.tabular import leverage

    out_path = out_path or DEFAULT_OUT
    load_before = os.getloadavg()
    if os.path.isdir(out_path):
        from klrl.errors import ConfigError

        raise ConfigError(f"out: got {out_path!r}; allowed a JSON file path (it is a directory)")
    cfg = leverage.LeverageConfig()
    if quick:
        cfg = leverage.quick_config(cfg)
    g, h, sigma = cfg.garnet, cfg.heatmap, cfg.noise.std
    G, R, K = g.num_garnets, cfg.noise.num_seeds, h.num_iterations
    lams, taus = leverage.heatmap_grid(cfg)
    L, T = (a.ravel() for a in np.meshgrid(lams, taus, indexing="ij"))
    num_runs = G * R * len(L)

    times, compile_seconds, errors, mdps = _time_jax(cfg, L, T, True, repeats)
    P_np, r_np = np.asarray(mdps.P), np.asarray(mdps.r)
    # The same grid in float32, for information only (the experiment and the speedup use float64).
    # (skipped in quick mode: it would only add a compilation to the smoke test)
    times32, compile32, _, _ = _time_jax(cfg, L, T, False, repeats) if not quick else (None,) * 4

    measure_all = quick or numpy_runs >= num_runs
    chosen = range(num_runs) if measure_all else np.linspace(0, num_runs - 1, numpy_runs).round().astype(int)
    setup_seconds, loop_seconds, loop_times = _time_numpy(cfg, P_np, r_np, L, T, chosen, repeats)
    numpy_seconds = setup_seconds + loop_seconds * num_runs / len(chosen)

    seconds = min(times)
    record = {
        "benchmark": "tabular: default (lambda, tau) grid of the Leverage-the-Average experiment",
        "quick": quick,
        "seconds": seconds,
        "seconds_all_repeats": times,
        "compile_seconds": compile_seconds,
        "numpy_seconds": numpy_seconds,
        "numpy_extrapolated": not measure_all,
        "numpy_runs_measured": len(chosen),
        "numpy_loop_seconds_measured": loop_seconds,
        "numpy_loop_seconds_all_repeats": loop_times,
        "numpy_setup_seconds": setup_seconds,
        "speedup_vs_numpy": numpy_seconds / seconds,
        "grid": {"num_garnets": G, "num_seeds": R, "num_lam": len(lams), "num_tau": len(taus),
                 "num_runs": num_runs, "num_iterations": K, "num_states": g.num_states,
                 "num_actions": g.num_actions, "branching": g.branching, "gamma": h.gamma,
                 "noise_std": sigma, "dtype": "float64",
                 "iterations_total": num_runs * K},
        "iterations_per_second": num_runs * K / seconds,
        "mean_final_error_jax": float(errors.mean()),
        "float32_info": None if quick else {"seconds": min(times32), "compile_seconds": compile32,
                         "speedup_vs_numpy_float64": numpy_seconds / min(times32),
                         "note": "float32 draws different Garnets and noise (dtype-dependent "
                                 "sampling): a timing, not a numerical comparison"},
        # The machine may be shared: the 1-minute load average before and after the timings
        # says how contended the CPU was (numpy's single thread suffers less than XLA's pool).
        "load_average_1min_before_after": [load_before[0], os.getloadavg()[0]],
        "provenance": provenance(),
    }
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(record, f, indent=2)
    print(f"klrl bench tabular: {num_runs} runs x {K} iterations: jax {seconds:.2f} s "
          f"(compile {compile_seconds:.1f} s), numpy {numpy_seconds:.1f} s"
          f"{' (extrapolated from %d runs)' % len(chosen) if not measure_all else ''}, "
          f"speedup {record['speedup_vs_numpy']:.1f}x -> {out_path}")
    return record
