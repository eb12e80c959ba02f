"""Exact quantities of the star-graph token MDP under a reference policy π_ref (the oracle critic).

The reward is 1 only for the unique correct path y*, so π_ref succeeds from a prefix only along
y*: for the on-path prefix y*_{<t} and candidate token a,

    p(y*_{<t}, a) = 1[a = y*_t] · Π_{s>t} π_ref(y*_s | y*_{<s}),   and p = 0 off the path,

so ONE teacher-forced pass of π_ref along y* gives the exact p of every state (`oracle_p`).
Per prompt, with p0 = Π_t π_ref(y*_t | y*_{<t}), the KL-regularized optimum π* ∝ π_ref·e^{Q*/η}
(Zhou et al. 2025) has the closed forms

    P*(success)     = p0 e^{1/η} / (1 − p0 + p0 e^{1/η})
    KL(π*‖π_ref)    = P*/η − ln(1 − p0 + p0 e^{1/η})

(the value V*(x) = η ln E_{π_ref}[e^{R/η}] = η ln(1 − p0 + p0 e^{1/η}) equals E_{π*}[R] − η KL).
All of it with π_ref exactly as the sampler uses it (top-k, temperature: klrl.stargraph.guidance).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from klrl.stargraph.guidance import guided_log_policy


def path_states(starts: jax.Array, path: jax.Array, prompt_len: int) -> jax.Array:
    """The ℓ on-path states of each prompt: [n, ℓ, L], state t holding y*_{<t} after the prompt."""
    ell = path.shape[-1]
    t = jnp.arange(ell)
    cols = jnp.arange(starts.shape[-1]) - prompt_len                        # target index of each column
    written = (cols[None, :] >= 0) & (cols[None, :] < t[:, None])           # [ℓ, L]
    full = starts.at[:, prompt_len:].set(path.astype(starts.dtype))
    return jnp.where(written[None], full[:, None, :], starts[:, None, :])


def path_log_probs(log_ref: Callable[[jax.Array], jax.Array], starts: jax.Array, path: jax.Array,
                   prompt_len: int) -> jax.Array:
    """Teacher-forced ln π_ref(·|y*_{<t}) at every on-path state: [n, ℓ, V]."""
    return log_ref(path_states(starts, path, prompt_len))


def success_tail(log_ref_path: jax.Array, path: jax.Array) -> jax.Array:
    """tail_t = Π_{s>t} π_ref(y*_s | y*_{<s}) [n, ℓ], from the teacher-forced [n, ℓ, V]."""
    lp = jnp.take_along_axis(log_ref_path, path[..., None].astype(jnp.int32), axis=-1)[..., 0]
    # Σ_{s>t} ln π_ref(y*_s) as an exclusive reverse cumsum (no subtraction: ln 0 = −inf stays exact)
    after = jnp.concatenate([jnp.cumsum(lp[:, :0:-1], axis=1)[:, ::-1], jnp.zeros_like(lp[:, :1])], axis=1)
    return jnp.exp(after)


def success_probability(log_ref_path: jax.Array, path: jax.Array) -> jax.Array:
    """p0 = Π_t π_ref(y*_t | y*_{<t}) [n]: π_ref's exact success probability per prompt."""
    lp = jnp.take_along_axis(log_ref_path, path[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jnp.exp(jnp.sum(lp, axis=1))


def oracle_p(tokens: jax.Array, t: jax.Array, path: jax.Array, tail: jax.Array, prompt_len: int,
             num_tokens: int) -> jax.Array:
    """The exact p(x, ·) [n, V] at the states `tokens` [n, L] holding t target tokens."""
    ell = path.shape[-1]
    cols = jnp.arange(ell)
    written = tokens[:, prompt_len:prompt_len + ell].astype(path.dtype)
    on_path = jnp.all((written == path) | (cols[None] >= t), axis=1)
    tail_t = jnp.take_along_axis(tail, jnp.broadcast_to(t, (tail.shape[0], 1)), axis=1)[:, 0]
    y_t = jnp.take_along_axis(path, jnp.broadcast_to(t, (path.shape[0], 1)), axis=1)[:, 0]
    return jnp.where(on_path, tail_t, 0.0)[:, None] * jax.nn.one_hot(y_t, num_tokens)


def guided_success(log_ref_path: jax.Array, path: jax.Array, eta, guidance: str) -> jax.Array:
    """Exact success probability [n] of the oracle-guided policy (Q♯ or CD): off the path every
    p is 0, so it is Π_t π(y*_t | y*_{<t}) with π the guided policy at the on-path states. For Q♯
    it equals `optimal_success`; for CD it is lower wherever some tail lies strictly in (0, 1)."""
    tail = success_tail(log_ref_path, path)
    p = tail[..., None] * jax.nn.one_hot(path, log_ref_path.shape[-1])
    lp = jnp.take_along_axis(guided_log_policy(log_ref_path, p, eta, guidance), path[..., None].astype(jnp.int32),
                             axis=-1)[..., 0]
    return jnp.exp(jnp.sum(lp, axis=1))


def optimal_success(p0: jax.Array, eta) -> jax.Array:
    """P*(success) = p0 e^{1/η} / (1 − p0 + p0 e^{1/η})."""
    w = p0 * jnp.exp(1.0 / eta)
    return w / (1.0 - p0 + w)


def optimal_kl(p0: jax.Array, eta) -> jax.Array:
    """KL(π*‖π_ref) = P*/η − ln(1 − p0 + p0 e^{1/η}) over whole sequences."""
    return optimal_success(p0, eta) / eta - jnp.log1p(p0 * jnp.expm1(1.0 / eta))


__all__ = ["guided_success", "optimal_kl", "optimal_success", "oracle_p", "path_log_probs", "path_states", "success_probability",
           "success_tail"]
