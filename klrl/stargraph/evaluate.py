"""Evaluation as the paper does it (sampling with π_ref's top-k at temperature 1, exact match on
test graphs), plus what it does not report: the exact per-episode KL to π_ref of every sample,
95% confidence intervals over test prompts, and a critic's calibration against the exact p.

A method is a `p_fn(tokens, t, log_ref_t) -> p [n, V]` (a success-probability critic: the
oracle of klrl.stargraph.exact, or a learned one, klrl.stargraph.critic) and a guidance rule
(`qsharp` / `cd`), or `None` for π_ref itself.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from klrl.stargraph import exact, guidance, sampler


def mean_ci(x) -> dict:
    """Mean and its 95% normal interval half-width over test prompts (1.96·sd/√n)."""
    x = np.asarray(x, np.float64)
    return {"mean": float(x.mean()), "ci95": float(1.96 * x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else 0.0}


def oracle_p_fn(log_ref: Callable, starts: jax.Array, path: jax.Array, prompt_len: int, num_tokens: int):
    """The exact p of every state from one teacher-forced pass of π_ref (klrl.stargraph.exact)."""
    tail = exact.success_tail(exact.path_log_probs(log_ref, starts, path, prompt_len), path)
    return lambda tokens, t, lref: exact.oracle_p(tokens, t, path, tail, prompt_len, num_tokens)


def evaluator(log_ref: Callable, starts: jax.Array, path: jax.Array, prompt_len: int,
              p_fn: Callable | None = None, rule: str = "qsharp") -> Callable:
    """`run(key, eta) -> dict`, compiled once (η is traced): one sample per test prompt,
    exact-match accuracy and per-episode KL(π‖π_ref), with 95% CIs over prompts."""
    def sample(key, eta):
        if p_fn is None:
            log_policy = lambda tokens, t, lref: lref  # noqa: E731
        else:
            log_policy = lambda tokens, t, lref: guidance.guided_log_policy(lref, p_fn(tokens, t, lref), eta, rule)  # noqa: E731
        out = sampler.sample(key, starts, log_ref, log_policy, prompt_len, path.shape[-1])
        return sampler.exact_match(out.tokens, path, prompt_len), out.kl

    compiled = jax.jit(sample)

    def run(key, eta=0.1) -> dict:
        success, kl = compiled(key, jnp.float32(eta))
        return {"accuracy": mean_ci(success), "kl": mean_ci(kl), "n": int(success.shape[0])}
    return run


def evaluate(key, log_ref: Callable, starts: jax.Array, path: jax.Array, prompt_len: int,
             p_fn: Callable | None = None, eta=0.1, rule: str = "qsharp") -> dict:
    """One evaluation (`evaluator` compiled for a single call)."""
    return evaluator(log_ref, starts, path, prompt_len, p_fn, rule)(key, eta)


def calibration(p_fn: Callable, log_ref: Callable, starts: jax.Array, path: jax.Array, prompt_len: int,
                num_tokens: int) -> dict:
    """A critic against the exact p at every on-path state, per target position t:
    `abs_error` mean |p̂(y*_{<t}, y*_t) − p(y*_{<t}, y*_t)|; `off_path_p` mean p̂ of π_ref's
    other top candidates (exactly 0); `ranks_correct_first` the fraction of prompts where p̂
    puts y*_t strictly above every other candidate (the decision guidance needs)."""
    lrp = exact.path_log_probs(log_ref, starts, path, prompt_len)                    # [n, ℓ, V]
    tail = exact.success_tail(lrp, path)
    states = exact.path_states(starts, path, prompt_len)
    n, ell = path.shape
    rows = {"abs_error": [], "off_path_p": [], "ranks_correct_first": []}
    for t in range(ell):
        p_hat = p_fn(states[:, t], jnp.int32(t), lrp[:, t])
        cand = jnp.isfinite(lrp[:, t])
        y = jax.nn.one_hot(path[:, t], num_tokens, dtype=bool)
        p_y = jnp.sum(jnp.where(y, p_hat, 0.0), -1)
        others = cand & ~y
        best_other = jnp.max(jnp.where(others, p_hat, -1.0), -1)
        rows["abs_error"].append(float(jnp.mean(jnp.abs(p_y - tail[:, t]))))
        rows["off_path_p"].append(float(jnp.sum(jnp.where(others, p_hat, 0.0)) / jnp.maximum(jnp.sum(others), 1)))
        rows["ranks_correct_first"].append(float(jnp.mean(p_y > best_other)))
    return {k: np.round(v, 4).tolist() for k, v in rows.items()}


__all__ = ["calibration", "evaluate", "evaluator", "mean_ci", "oracle_p_fn"]
