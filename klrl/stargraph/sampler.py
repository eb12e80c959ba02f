"""Sampling a token MDP episode by episode under a (guided) policy, with its exact KL to π_ref.

`sample(key, starts, log_ref, log_policy, prompt_len, ell)` writes ℓ tokens after each prompt:
at step t it evaluates ln π_ref(·|x_t) and ln π(·|x_t) at the current states [n, L], draws
a_t ~ π(·|x_t) and accumulates the exact per-episode KL

    KL_episode = Σ_t KL(π(·|x_t) ‖ π_ref(·|x_t))      (klrl.stargraph.guidance.kl),

whose mean over episodes is KL(π‖π_ref) over whole sequences. One jittable `lax.fori_loop`;
`log_policy(tokens, t, log_ref_t)` sees π_ref's (truncated) log-probs, so guidance adds to them.
Success is exact match with the path (the env's reward, klrl.stargraph.env).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from klrl.stargraph.guidance import kl


class Samples(NamedTuple):
    tokens: jax.Array     # [n, L] the completed sequences
    kl: jax.Array         # [n] Σ_t KL(π(·|x_t) ‖ π_ref(·|x_t))
    log_prob: jax.Array   # [n] ln π(y) of the sampled target
    log_ref: jax.Array    # [n] ln π_ref(y)


def sample(key: jax.Array, starts: jax.Array, log_ref: Callable[[jax.Array], jax.Array],
           log_policy: Callable[[jax.Array, jax.Array, jax.Array], jax.Array], prompt_len: int,
           ell: int) -> Samples:
    """ℓ autoregressive steps from the PAD-tailed prompts `starts` [n, L] (see module docstring)."""
    n = starts.shape[0]

    def body(t, carry):
        tokens, k, total_kl, lp, lr = carry
        lref = log_ref(tokens)
        lpi = log_policy(tokens, t, lref)
        a = jax.random.categorical(jax.random.fold_in(k, t), lpi, axis=-1)
        pick = lambda x: jnp.take_along_axis(x, a[:, None], axis=-1)[:, 0]  # noqa: E731
        tokens = tokens.at[:, prompt_len + t].set(a.astype(tokens.dtype))
        return tokens, k, total_kl + kl(lpi, lref), lp + pick(lpi), lr + pick(lref)

    zeros = jnp.zeros((n,), jnp.float32)
    tokens, _, total_kl, lp, lr = jax.lax.fori_loop(0, ell, body, (starts, key, zeros, zeros, zeros))
    return Samples(tokens, total_kl, lp, lr)


def exact_match(tokens: jax.Array, path: jax.Array, prompt_len: int) -> jax.Array:
    """1.0 where the written target equals the path exactly (the env's terminal reward) [n]."""
    ell = path.shape[-1]
    return jnp.all(tokens[:, prompt_len:prompt_len + ell].astype(path.dtype) == path, axis=1).astype(jnp.float32)


__all__ = ["Samples", "exact_match", "sample"]
