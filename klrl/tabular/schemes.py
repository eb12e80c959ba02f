"""Regularized approximate value iteration on a known MDP: VI, MD-VI, M-VI and Tsallis M-VI.

Every scheme iterates (Vieillard et al. 2020, "Leverage the Average", MD-MPI with m = 1):

    π_{k+1} = greedy step of q_k                  (regularized: softmax, mirror step, Tsallis)
    q_{k+1} = r + bonus(q_k) + γ P v(q_k) + ε_{k+1}

with `q_0 = 0`, `P v` the exact expectation over next states (`klrl.tabular.mdp.expected_next`)
and `ε_{k+1}` i.i.d. Gaussian noise of std `noise_std` on every (s, a), the "approximate" part
of approximate dynamic programming. The greedy step, value and bonus are THE SAME functions
the deep agents call (`klrl.operators`), so these exact runs check the agents' target math.

Indexing (all schemes): iteration k = 0 … K−1 produces `π_{k+1}` (greedy w.r.t. `q_k`) and
`q_{k+1}`. A `SchemeResult` stores, at the evaluated iterations (every `eval_every`-th, the
last one always included), `policies[e] = π_{k+1}`, `q[e] = q_{k+1}` and
`errors[e] = ‖q* − q^{π_{k+1}}‖_∞` with `q*` the UNregularized optimum and `q^π` an exact
linear solve; `iterations[e] = k + 1` names the policy index. With the default
`eval_every = 1` these are all K iterations (`policies[k] = π_{k+1}`; `π_1` is greedy w.r.t.
`q_0 = 0`, hence uniform for the regularized schemes and, ties split evenly, for VI).
Per-iteration noise statistics (for the error bounds) cover all K iterations:
`noise_norm[k] = ‖ε_{k+1}‖_∞` and `noise_mean_norm[k] = ‖(1/(k+1)) Σ_{j≤k+1} ε_j‖_∞`.

Everything is a `lax.scan`; coefficients (γ, λ, τ, α, noise_std, the entropic index) may be
traced arrays, so a whole grid of them, of MDPs or of noise seeds is one `jax.vmap`.
`num_iterations` and `eval_every` are static (they set shapes). The noise sequence depends
only on `key` (not on the scheme or its coefficients): runs that share a key see the same
`ε_1, ε_2, …`, which makes scheme comparisons paired.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from klrl import operators as ops
from klrl.tabular.evaluation import greedy_policy, optimal_q, policy_error
from klrl.tabular.mdp import MDP, expected_next


class SchemeResult(NamedTuple):
    """Output of one scheme run (any leading batch axes from vmap come first).

    policies [E, S, A], q [E, S, A], errors [E], iterations [E] (policy index k + 1) at the
    evaluated iterations; noise_norm [K], noise_mean_norm [K] for every iteration.
    """

    policies: jax.Array
    q: jax.Array
    errors: jax.Array
    iterations: jax.Array
    noise_norm: jax.Array
    noise_mean_norm: jax.Array


# A scheme's step: (q_k, aux_k) -> (policy state of π_{k+1}, noiseless q_{k+1}, aux_{k+1}), and
# `policy_of(policy state) = π_{k+1}`. `aux` is the scheme's extra state (MD-VI: ln π_k; the
# others: nothing). The policy itself is only formed at evaluation points: forming it every
# iteration would cost S·A transcendental functions per iteration for nothing.
Step = Callable[[jax.Array, Any], tuple[jax.Array, jax.Array, Any]]
PolicyOf = Callable[[jax.Array], jax.Array]


def noise_at(key: jax.Array, k, shape, dtype) -> jax.Array:
    """The standard-normal draw behind ε_{k+1} (iteration k = 0, 1, …): `ε_{k+1} = σ·noise_at(key, k)`.
    Public so that reference implementations can replay a run's exact noise."""
    return jax.random.normal(jax.random.fold_in(key, k), shape, dtype)


def check_run_args(num_iterations: int, eval_every: int, noise_std, key) -> None:
    """Host-side argument checks (shapes and the noise/key pairing), before any tracing."""
    if not (isinstance(num_iterations, int) and isinstance(eval_every, int)) or \
            num_iterations < 1 or eval_every < 1 or num_iterations % eval_every:
        raise ValueError(f"num_iterations={num_iterations} must be a positive multiple of "
                         f"eval_every={eval_every}")
    if key is None and not (isinstance(noise_std, (int, float)) and noise_std == 0):
        raise ValueError("noise_std != 0 needs a PRNG `key`")


def run_scheme(mdp: MDP, gamma, step: Step, policy_of: PolicyOf, aux0: Any, num_iterations: int, *,
               noise_std=0.0, key: jax.Array | None = None, q_star: jax.Array | None = None,
               eval_every: int = 1) -> SchemeResult:
    """Runs `num_iterations` of `q_{k+1} = step(q_k) + ε_{k+1}` from `q_0 = 0` (module doc).

    Without `key` no noise is added (`noise_std` is then ignored; the public schemes insist
    it is 0). This building block is not jitted itself; the schemes below are. `q_star` may be
    passed to avoid recomputing the optimum when many runs share an MDP.
    Two nested scans: the outer one over evaluation points solves for `q^{π}` once per
    `eval_every` iterations, so a sparse evaluation costs no wasted solves.
    """
    if key is None and isinstance(noise_std, (int, float)) and noise_std != 0:
        raise ValueError("noise_std != 0 needs a PRNG `key`")
    q0 = jnp.zeros_like(mdp.r)
    if q_star is None:
        q_star = optimal_q(mdp, gamma)

    def inner(carry, k):
        q, aux, pi_state, noise_sum = carry
        pi_state, q_next, aux = step(q, aux)
        if key is not None:
            eps = noise_std * noise_at(key, k, q.shape, q.dtype)
            q_next = q_next + eps
            noise_sum = noise_sum + eps
            stats = (jnp.max(jnp.abs(eps)), jnp.max(jnp.abs(noise_sum)) / (k + 1).astype(q.dtype))
        else:
            zero = jnp.zeros((), q.dtype)
            stats = (zero, zero)
        return (q_next, aux, pi_state, noise_sum), stats

    def outer(carry, e):
        ks = e * eval_every + jnp.arange(eval_every)
        carry, stats = jax.lax.scan(inner, carry, ks)
        q, _, pi_state, _ = carry
        pi = policy_of(pi_state)
        err = policy_error(mdp, pi, gamma, q_star)
        return carry, (pi, q, err, stats)

    # The policy state is overwritten by the first step before any evaluation reads it.
    carry0 = (q0, aux0, jnp.zeros_like(q0), jnp.zeros_like(q0))
    num_evals = num_iterations // eval_every
    _, (pis, qs, errs, (n_norm, n_mean)) = jax.lax.scan(outer, carry0, jnp.arange(num_evals))
    iterations = (jnp.arange(num_evals) + 1) * eval_every
    return SchemeResult(pis, qs, errs, iterations, n_norm.reshape(-1), n_mean.reshape(-1))


def _backup(mdp: MDP, gamma, v: jax.Array, bonus: jax.Array | float = 0.0) -> jax.Array:
    """`r + bonus + γ P v`: the tabular regularized Bellman backup (the exact expectation of a deep target)."""
    return mdp.r + bonus + gamma * expected_next(mdp, v)


@partial(jax.jit, static_argnames=("num_iterations", "eval_every"))
def _vi(mdp, gamma, num_iterations, noise_std, key, q_star, eval_every):
    """Jitted body of `vi`."""

    def step(q, aux):
        return q, _backup(mdp, gamma, ops.greedy_value(q)), aux

    return run_scheme(mdp, gamma, step, greedy_policy, (), num_iterations,
                      noise_std=noise_std, key=key, q_star=q_star, eval_every=eval_every)


@partial(jax.jit, static_argnames=("num_iterations", "eval_every"))
def _md_vi(mdp, gamma, lam, tau, num_iterations, noise_std, key, q_star, eval_every):
    """Jitted body of `md_vi`."""
    log_pi0 = jnp.full_like(mdp.r, -jnp.log(mdp.num_actions))

    def step(q, log_pi):
        log_pi_next = ops.mirror_descent_log_policy(q, log_pi, lam=lam, tau=tau)
        v = ops.mirror_descent_value(q, log_pi, lam=lam, tau=tau)
        return log_pi_next, _backup(mdp, gamma, v), log_pi_next

    return run_scheme(mdp, gamma, step, jnp.exp, log_pi0, num_iterations,
                      noise_std=noise_std, key=key, q_star=q_star, eval_every=eval_every)


@partial(jax.jit, static_argnames=("num_iterations", "eval_every"))
def _m_vi(mdp, gamma, alpha, tau, num_iterations, noise_std, key, q_star, eval_every):
    """Jitted body of `m_vi`."""

    def step(q, aux):
        bonus = ops.munchausen_bonus(q, alpha=alpha, tau=tau, clip_min=-jnp.inf)
        v = ops.soft_value(q, tau)
        return q, _backup(mdp, gamma, v, bonus), aux

    return run_scheme(mdp, gamma, step, lambda q: ops.softmax_policy(q, tau), (), num_iterations,
                      noise_std=noise_std, key=key, q_star=q_star, eval_every=eval_every)


def _tsallis_m_vi(mdp, gamma, alpha, tau, entropic_index, num_iterations, noise_std, key, q_star,
                  eval_every, consistent_weight):
    """Jitted body of `tsallis_m_vi`."""
    def step(q, aux):
        bonus = ops.tsallis_munchausen_bonus(q, alpha=alpha, tau=tau, entropic_index=entropic_index,
                                             clip_min=-jnp.inf, consistent_weight=consistent_weight)
        v = ops.tsallis_value(q, tau=tau, entropic_index=entropic_index,
                              consistent_weight=consistent_weight)
        return q, _backup(mdp, gamma, v, bonus), aux

    def policy_of(q):
        return ops.tsallis_greedy_policy(q, tau=tau, entropic_index=entropic_index,
                                         consistent_weight=consistent_weight)

    return run_scheme(mdp, gamma, step, policy_of, (), num_iterations,
                      noise_std=noise_std, key=key, q_star=q_star, eval_every=eval_every)


# A Python-number index is static (tsallis_policy then dispatches to softmax / sparsemax /
# bisection at trace time); an array index is traced (all three evaluated and selected).
_TSALLIS_STATIC = ("num_iterations", "eval_every", "consistent_weight")
_tsallis_m_vi_traced = jax.jit(_tsallis_m_vi, static_argnames=_TSALLIS_STATIC)
_tsallis_m_vi_static = jax.jit(_tsallis_m_vi, static_argnames=_TSALLIS_STATIC + ("entropic_index",))


# Public entry points: host-side checks, then the jitted scheme. They nest inside a user's
# own jit/vmap (an inner jit is inlined), e.g. `jax.vmap(lambda lam: md_vi(mdp, γ, lam, τ, K))`.
# Keyword arguments common to all: noise_std (std of ε, may be traced), key (PRNG key; no
# noise without one), q_star (precomputed optimum), eval_every (static; divides K).

def vi(mdp: MDP, gamma, num_iterations: int, *, noise_std=0.0, key=None, q_star=None,
       eval_every: int = 1) -> SchemeResult:
    """(Approximate) value iteration: `π_{k+1} = greedy(q_k)`, `q_{k+1} = r + γ P max q_k + ε`.

    The unregularized baseline (AVI error propagation: errors accumulate, bound
    `(2γ/(1−γ)²)·Σ_j γ^{k−j}‖ε_j‖`, Vieillard et al. 2020).
    """
    check_run_args(num_iterations, eval_every, noise_std, key)
    return _vi(mdp, gamma, num_iterations, noise_std, key, q_star, eval_every)


def md_vi(mdp: MDP, gamma, lam, tau, num_iterations: int, *, noise_std=0.0, key=None,
          q_star=None, eval_every: int = 1) -> SchemeResult:
    """Mirror-descent VI, MD-MPI(λ, τ, m = 1) of Vieillard et al. 2020 ("Leverage the Average").

        π_{k+1} = argmax_π <π, q_k> − λ KL(π‖π_k) + τ H(π)       (`mirror_descent_log_policy`)
        q_{k+1} = r + γ P <π_{k+1}, q_k − λ ln(π_{k+1}/π_k) − τ ln π_{k+1}> + ε_{k+1}
                                                                   (`mirror_descent_value`)

    from π_0 uniform and q_0 = 0. λ = 0 is entropy-only (soft VI), τ = 0 KL-only; λ + τ > 0
    is required. Implicitly π_{k+1} = softmax(h_k/(λ+τ)), h_k = q_k + β h_{k−1}, β = λ/(λ+τ):
    the policy is a softmax of a (β-discounted) AVERAGE of the q's, so noise averages out.
    Keyword arguments (all schemes): noise_std, key, q_star, eval_every (module docstring).
    """
    check_run_args(num_iterations, eval_every, noise_std, key)
    return _md_vi(mdp, gamma, lam, tau, num_iterations, noise_std, key, q_star, eval_every)


def m_vi(mdp: MDP, gamma, alpha, tau, num_iterations: int, *, noise_std=0.0, key=None,
         q_star=None, eval_every: int = 1) -> SchemeResult:
    """Munchausen VI(α, τ) (Vieillard et al. 2020, "Munchausen RL"), unclipped:

        π_{k+1} = softmax(q_k/τ)
        q_{k+1} = r + α τ ln π_{k+1} + γ P τ lse(q_k/τ) + ε_{k+1}
                  (`munchausen_bonus` with clip_min = −inf, `soft_value`)

    Equivalent to MD-VI(λ = ατ, τ' = (1−α)τ): the same policies (tests check it to 1e-10).
    """
    check_run_args(num_iterations, eval_every, noise_std, key)
    return _m_vi(mdp, gamma, alpha, tau, num_iterations, noise_std, key, q_star, eval_every)


def tsallis_m_vi(mdp: MDP, gamma, alpha, tau, entropic_index, num_iterations: int, *,
                 consistent_weight: bool = False, noise_std=0.0, key=None, q_star=None,
                 eval_every: int = 1) -> SchemeResult:
    """Tsallis Munchausen VI, MVI(q) (Zhu et al. 2023), unclipped:

        π_{k+1} = tsallis_policy(q_k/τ, q)                  (literal weight; see below)
        q_{k+1} = r + α τ ln_q π_{k+1} + γ P <π_{k+1}, q_k − τ ln_q π_{k+1}> + ε_{k+1}
                  (`tsallis_munchausen_bonus` with clip_min = −inf, `tsallis_value`)

    Index 1 is M-VI, index 2 the sparsemax convention. `consistent_weight` selects the
    operators' consistent variant (policy greedy for weight τ, i.e. of q_k/(q τ)).
    """
    check_run_args(num_iterations, eval_every, noise_std, key)
    fn = _tsallis_m_vi_static if isinstance(entropic_index, (int, float)) else _tsallis_m_vi_traced
    return fn(mdp, gamma, alpha, tau, entropic_index, num_iterations, noise_std, key, q_star,
              eval_every, consistent_weight)
