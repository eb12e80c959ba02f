"""The τ = 0 error bound of "Leverage the Average" (Vieillard et al. 2020, Thm. 1) as a
function of a run's noise (the form of docs/algorithms.md; constants not checked against the paper).

For MD-VI with τ = 0 (KL only) and m = 1, after k noisy iterations

    ‖q* − q^{π}‖_∞ ≤ (2/(1−γ))·‖(1/k) Σ_{j≤k} ε_j‖_∞ + (4/(1−γ)²)·(R_max + γ λ ln|A|)/k.

The policy that has seen ε_1 … ε_k is π_{k+1} (greedy w.r.t. q_k); the bound is also
written for π_k.
`kl_bound` returns the right-hand side; the experiments check it against BOTH readings
(`policy_offset` below) and report the worst ratio measured/bound, never a weakened bound.
"""

from __future__ import annotations

import jax.numpy as jnp


def kl_bound(noise_mean_norm, num_noise_terms, gamma, lam, r_max, num_actions):
    """Right-hand side of the τ = 0 bound above.

    `noise_mean_norm`: ‖(1/k) Σ_{j≤k} ε_j‖_∞ for k = `num_noise_terms` (≥ 1); broadcasts.
    """
    k = jnp.asarray(num_noise_terms)
    horizon = 1.0 / (1.0 - gamma)
    return (2.0 * horizon * noise_mean_norm
            + 4.0 * horizon**2 * (r_max + gamma * lam * jnp.log(num_actions)) / k)


def bound_for_policies(noise_mean_norm, iterations, gamma, lam, r_max, num_actions,
                       *, policy_offset: int = 1):
    """The bound at the evaluated policies of a `SchemeResult`.

    `noise_mean_norm` [..., K] (per iteration, from the result), `iterations` [E] (policy
    indices k + 1 of `π_{k+1}`). `policy_offset = 1`: π_{k+1} is bounded with the noises it has
    seen, ε_1..ε_k (the paper's indexing); `policy_offset = 0`: π_k with ε_1..ε_k, the bound
    read literally for π_k (a stricter check, since π_k has seen only k − 1 noises).
    Returns [..., E]; +inf where the bound is undefined (no noise term yet, k = 0).
    """
    iterations = jnp.asarray(iterations)
    k = iterations - policy_offset  # number of noise terms in the bound
    idx = jnp.clip(k - 1, 0, noise_mean_norm.shape[-1] - 1)
    noise = jnp.take(noise_mean_norm, idx, axis=-1)
    b = kl_bound(noise, jnp.maximum(k, 1), gamma, lam, r_max, num_actions)
    return jnp.where(k >= 1, b, jnp.inf)
