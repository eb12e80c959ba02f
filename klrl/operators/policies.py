"""Regularized greedy steps: q-values -> policies, and the soft (log-sum-exp) value.

All functions act on arrays with the action axis LAST (`[..., A]`) and any leading shape.
Temperatures and indices may be Python floats or traced arrays (they are vmapped over in
populations); they broadcast against the leading shape of `q`.

Conventions (docs/conventions.md, docs/algorithms.md):
  τ ln softmax(q/τ) = q − (max q + τ·lse((q − max q)/τ))   (max subtracted: τ = 1e-3 safe)
  ln_q x = (x^(q−1) − 1)/(q−1),  exp_q x = [1 + (q−1)x]_+^(1/(q−1))   ("sparsemax" convention)
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = chex.Array
Numeric = chex.Numeric

# Bisection steps for the Tsallis normalizer ψ, by precision. The bracket has width
# |ln_q(1/A)| ≤ ln A (≤ 1 for q ≥ 2): 30 halvings reach float32 resolution of ψ and 60
# float64's for any practical A; more would only cost the agents time (the loop is serial).
_BISECTION_STEPS = {4: 30, 8: 60}


def _coef(x: Numeric, q: Array) -> Array:
    """A coefficient aligned with the LEADING axes of `q` [..., A].

    A scalar broadcasts everywhere; an array of shape [B] against q [B, ..., A] gets
    trailing singleton axes, so per-example (or per-member) coefficients line up.
    """
    x = jnp.asarray(x, dtype=q.dtype)
    if x.ndim == 0:
        return x
    if x.ndim >= q.ndim:
        raise ValueError(f"coefficient of shape {x.shape} must have fewer axes than q {q.shape}")
    return x.reshape(x.shape + (1,) * (q.ndim - x.ndim))


def _coef_lead(x: Numeric, q: Array) -> Array:
    """A coefficient aligned with the leading shape q.shape[:-1] (for per-transition values)."""
    x = jnp.asarray(x, dtype=q.dtype)
    if x.ndim == 0:
        return x
    return x.reshape(x.shape + (1,) * (q.ndim - 1 - x.ndim))


def static_index(entropic_index: Numeric, dtype) -> float | None:
    """A Python-number entropic index as the `dtype` value the arithmetic will use, or None
    for a traced index. The static dispatch (softmax at 1, sparsemax at 2) must compare the
    rounded value: 1 + 2⁻⁵² is 1.0 in float32, where ln_q must be ln, not the q = 2 branch."""
    if isinstance(entropic_index, (int, float)):
        return float(np.asarray(entropic_index, dtype))
    return None


def _shift(x: Array) -> tuple[Array, Array]:
    """(x − max x, max x) over the last axis (keepdims; the max is stop-gradient).

    Every policy and value operator works on the shifted array and adds the max back only
    to values: in float32 with q ≈ 100 and τ = 0.03, forming q/τ first loses ulp(q/τ) per
    entry and a simplex projection of it leaves Σπ − 1 ≈ A·ulp, which ⟨π, q⟩ multiplies by
    |q|. Shifted, the top entry is exactly 0 and errors scale with the spread of q instead.
    """
    m = jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
    return x - m, m


def _lse(x: Array) -> Array:
    """ln Σ exp(x) over the last axis (keepdims), max-subtracted.

    A lean form shared by every operator, so that when a jitted program asks for the same
    lse twice (e.g. the mirror-descent policy and value) XLA computes it once.
    """
    m = jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
    return m + jnp.log(jnp.sum(jnp.exp(x - m), axis=-1, keepdims=True))


def scaled_log_softmax(q: Array, tau: Numeric) -> Array:
    """τ·ln softmax(q/τ) over the last axis, computed stably (the log-policy term of M-DQN,
    Vieillard et al. 2020).

    τ ln π(a) = q(a) − max q − τ·lse((q − max q)/τ). Every term is bounded by the spread of
    q, so τ → 0 with large q stays finite (it tends to q(a) − max q, the action gap).

    Args:
      q: action values [..., A], float.
      tau: temperature τ > 0, a number or an array aligned with the leading axes of `q`.

    Returns:
      [..., A]: τ ln π, π = softmax(q/τ).
    """
    tau = _coef(tau, q)
    shifted = q - jnp.max(q, axis=-1, keepdims=True)
    return shifted - tau * _lse(shifted / tau)


def softmax_policy(q: Array, tau: Numeric) -> Array:
    """π = softmax(q/τ) over the last axis: the Boltzmann policy, greedy for the entropy-regularized
    value τ·lse(q/τ) (soft Q-learning, Haarnoja et al. 2017).

    Args:
      q: action values [..., A], float.
      tau: temperature τ > 0, a number or an array aligned with the leading axes of `q`.

    Returns:
      [..., A]: π, rows summing to 1.
    """
    tau = _coef(tau, q)
    return jax.nn.softmax(_shift(q)[0] / tau, axis=-1)


def soft_value(q: Array, tau: Numeric, log_prior: Array | None = None) -> Array:
    """τ·lse(q/τ + ln π_ref) over the last axis; τ·lse(q/τ) when `log_prior` is None.

    With a prior this is max_π <π, q> − τ KL(π‖π_ref), attained at π ∝ π_ref·exp(q/τ)
    (Fox et al. 2016; the Q♯ value of Zhou et al. 2025); without, max_π <π, q> + τ H(π)
    (soft Q-learning, Haarnoja et al. 2017). Returns the leading shape of `q`.

    Args:
      q: action values [..., A], float.
      tau: temperature τ > 0, a number or an array aligned with the leading axes of `q`.
      log_prior: ln π_ref [..., A], the shape of `q`, or None (no prior).

    Returns:
      [...]: the soft value.
    """
    tau = _coef(tau, q)
    shifted, m = _shift(q)   # v(q + c) = v(q) + c exactly: only the spread is divided by τ
    z = shifted / tau
    if log_prior is not None:
        chex.assert_equal_shape([q, log_prior])
        z = z + log_prior
    return jnp.squeeze(m + tau * _lse(z), -1)


def log_q(x: Array, entropic_index: Numeric) -> Array:
    """Tsallis q-logarithm ln_q x = (x^(q−1) − 1)/(q−1); ln x at q = 1 (Tsallis 1988; the
    convention of MVI(q), Zhu et al. 2023).

    For q > 1, ln_q(0) = −1/(q−1) is finite. `entropic_index` may be traced: both branches
    are evaluated and selected, with the unused one made safe.

    Args:
      x: array ≥ 0, any shape, float.
      entropic_index: k ≥ 1, a number or an array broadcasting against `x`.

    Returns:
      ln_k x, the shape of `x`.
    """
    x = jnp.asarray(x)
    k = jnp.asarray(entropic_index, dtype=x.dtype)
    is_one = k == 1.0
    k_safe = jnp.where(is_one, 2.0, k)
    general = (jnp.power(x, k_safe - 1.0) - 1.0) / (k_safe - 1.0)
    log = jnp.log(jnp.where(is_one, x, 1.0))
    return jnp.where(is_one, log, general)


def exp_q(x: Array, entropic_index: Numeric) -> Array:
    """Tsallis q-exponential exp_q x = [1 + (q−1)x]_+^(1/(q−1)); exp x at q = 1, the inverse of
    `log_q` on its range (Tsallis 1988; Zhu et al. 2023).

    Args:
      x: array, any shape, float.
      entropic_index: k ≥ 1, a number or an array broadcasting against `x`.

    Returns:
      exp_k x, the shape of `x`.
    """
    x = jnp.asarray(x)
    k = jnp.asarray(entropic_index, dtype=x.dtype)
    is_one = k == 1.0
    k_safe = jnp.where(is_one, 2.0, k)
    base = jnp.maximum(1.0 + (k_safe - 1.0) * x, 0.0)
    general = jnp.power(base, 1.0 / (k_safe - 1.0))
    return jnp.where(is_one, jnp.exp(jnp.where(is_one, x, 0.0)), general)


def sparsemax(z: Array) -> Array:
    """Euclidean projection of z onto the simplex (Martins & Astudillo 2016), exact by sorting.

    Sort z descending, k = max{k : 1 + k·z_(k) > Σ_{j≤k} z_(j)}, π = [z − (Σ_{j≤k} z_(j) − 1)/k]_+.
    This is the Tsallis policy with entropic index 2. z is shifted by its
    max first (the projection is shift-invariant), so the threshold is formed near 0.

    Args:
      z: logits [..., A], float.

    Returns:
      [..., A]: π, rows summing to 1, possibly with zeros.
    """
    z = _shift(z)[0]
    z_sorted = -jnp.sort(-z, axis=-1)
    cumsum = jnp.cumsum(z_sorted, axis=-1)
    ks = jnp.arange(1, z.shape[-1] + 1, dtype=z.dtype)
    support = 1.0 + ks * z_sorted > cumsum
    k = jnp.sum(support, axis=-1, keepdims=True)  # ≥ 1 always (the top action)
    threshold = (jnp.take_along_axis(cumsum, k.astype(jnp.int32) - 1, axis=-1) - 1.0) / k
    return jnp.maximum(z - threshold, 0.0)


def _tsallis_bisection(z: Array, k: Array) -> Array:
    """π = exp_q(z − ψ) with Σπ = 1, ψ found by bisection (k > 1; any shape broadcast)."""
    num_actions = z.shape[-1]
    z = _shift(z)[0]   # max z = 0: ψ is bracketed near 0, at full precision
    # ψ ∈ [0, −ln_q(1/A)]: the left end gives the top action mass 1 (Σ ≥ 1), the right end
    # gives every action at most 1/A (Σ ≤ 1); Σ exp_q(z − ψ) is decreasing in ψ.
    lo = jnp.zeros(z.shape[:-1] + (1,), z.dtype)
    hi = lo - log_q(jnp.asarray(1.0 / num_actions, z.dtype), k)

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        total = jnp.sum(exp_q(z - mid, k), axis=-1, keepdims=True)
        too_much = total > 1.0
        return jnp.where(too_much, mid, lo), jnp.where(too_much, hi, mid)

    lo, hi = lax.fori_loop(0, _BISECTION_STEPS.get(z.dtype.itemsize, 60), body, (lo, hi))
    pi = exp_q(z - 0.5 * (lo + hi), k)
    # Renormalizing removes the last bisection residual; the support is already exact.
    return pi / jnp.sum(pi, axis=-1, keepdims=True)


def tsallis_policy(z: Array, entropic_index: Numeric) -> Array:
    """Tsallis-regularized greedy policy π = exp_q(z − ψ(z)), Σπ = 1 (Zhu et al. 2023, MVI(q)).

    π maximizes <π, z> + S_q(π)/q with S_q the Tsallis entropy. Index 1 gives softmax(z),
    index 2 the exact sort-based sparsemax, any other index > 1 a fixed-step bisection on ψ.
    A Python-float index dispatches statically; a traced index evaluates softmax, sparsemax
    and bisection and selects (so q is sweepable inside one compiled population).

    Args:
      z: logits [..., A], float (q/τ for a q-array).
      entropic_index: k ≥ 1, a Python number (static dispatch) or an array aligned with the
        leading axes of `z` (traced).

    Returns:
      [..., A]: π, rows summing to 1.
    """
    k_static = static_index(entropic_index, z.dtype)
    if k_static is not None:
        if k_static == 1:
            return jax.nn.softmax(z, axis=-1)
        if k_static == 2:
            return sparsemax(z)
        if k_static < 1:
            raise ValueError(f"entropic_index: got {entropic_index}; allowed >= 1")
        return _tsallis_bisection(z, jnp.asarray(k_static, z.dtype))
    k = _coef(entropic_index, z)
    k_safe = jnp.where(k == 1.0, 2.0, k)
    general = jnp.where(k == 2.0, sparsemax(z), _tsallis_bisection(z, k_safe))
    return jnp.where(k == 1.0, jax.nn.softmax(z, axis=-1), general)


def tsallis_entropy(pi: Array, entropic_index: Numeric) -> Array:
    """S_q(π) = −<π, ln_q π> = (1 − Σ π^q)/(q − 1); Shannon entropy at q = 1 (Tsallis 1988).

    Args:
      pi: a policy [..., A], float, rows summing to 1.
      entropic_index: k ≥ 1, a number or an array aligned with the leading axes of `pi`.

    Returns:
      [...]: S_k(π).
    """
    k = _coef(entropic_index, pi)
    plogp = pi * log_q(jnp.where(pi > 0, pi, 1.0), k)  # 0·ln_q 0 = 0 for every q ≥ 1
    return -jnp.sum(plogp, axis=-1)


def mirror_descent_log_policy(q: Array, log_pi_prev: Array, *, lam: Numeric, tau: Numeric) -> Array:
    """ln π₊ for π₊ = argmax_π <π, q> − λ KL(π‖π₋) + τ H(π)  (Vieillard et al. 2020).

    Closed form π₊ ∝ π₋^β exp(β q/λ), β = λ/(λ+τ), i.e.
    ln π₊ = log_softmax((λ ln π₋ + q)/(λ + τ)). Requires λ + τ > 0.

    Args:
      q: action values [..., A], float.
      log_pi_prev: ln π₋ [..., A], the shape of `q`.
      lam: KL weight λ ≥ 0, a number or an array aligned with the leading axes of `q`.
      tau: entropy weight τ ≥ 0, a number or an array aligned with the leading axes of `q`.

    Returns:
      [..., A]: ln π₊.
    """
    u = mirror_descent_logits(q, log_pi_prev, lam=lam, tau=tau)
    return u - _lse(u)


def mirror_descent_logits(q: Array, log_pi_prev: Array, *, lam: Numeric, tau: Numeric) -> Array:
    """u = (λ ln π₋ + q − max q)/(λ + τ), the logits of the mirror-descent policy (π₊ = softmax(u)).

    The constant max q/(λ+τ) is dropped (softmax is shift-invariant): with q ≈ 1e3 and
    λ + τ ≈ 1e-2 it would cost ulp(1e5) ≈ 0.008 per logit in float32.
    """
    chex.assert_equal_shape([q, log_pi_prev])
    lam, tau = _coef(lam, q), _coef(tau, q)
    return (lam * log_pi_prev + _shift(q)[0]) / (lam + tau)
