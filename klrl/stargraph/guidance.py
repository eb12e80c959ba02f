"""Guided decoding of a token MDP with a success-probability critic, through klrl's Q♯ operators.

With a 0/1 terminal reward, π_ref's return after (x, a) is Bernoulli(p(x, a)), p the probability
that π_ref completes the sequence correctly. Its two-atom distribution (atoms z = (0, 1),
probabilities (1 − p, p)) is the input of `klrl.operators.entropic_q`, so (Zhou et al. 2025)

    Q♯:  Q_η(x, a) = η ln(1 − p + p e^{1/η}),   π(a|x) ∝ π_ref(a|x)·(1 − p + p e^{1/η})
    CD:  Q(x, a)   = E[Z] = p,                   π(a|x) ∝ π_ref(a|x)·e^{p/η}

(`klrl.operators.categorical_mean` and `guided_logits`: the same functions the `qsharp` and
`qsharp_cd` agents call). The two coincide where p ∈ {0, 1} and differ in between.
π_ref is first truncated as the sampler uses it (`truncate`: top-k, temperature), so the guided
policy's support is π_ref's top-k.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from klrl import operators as ops

GUIDANCES = ("qsharp", "cd")
ATOMS = jnp.array([0.0, 1.0])


def truncate(logits: jax.Array, top_k: int | None = None, temperature: float = 1.0) -> jax.Array:
    """ln π_ref restricted to its `top_k` largest logits (−inf elsewhere), at `temperature`."""
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits >= kth, logits, -jnp.inf)
    return jax.nn.log_softmax(logits, axis=-1)


def bernoulli_logits(p: jax.Array) -> jax.Array:
    """[..., 2] log-probabilities of the atoms (0, 1) of a Bernoulli(p) return."""
    return jnp.stack([jnp.log1p(-p), jnp.log(p)], axis=-1)


def critic_value(p: jax.Array, eta, guidance: str) -> jax.Array:
    """Q♯'s entropic value η ln(1 − p + p e^{1/η}) or CD's E[Z] = p, per candidate token [..., V]."""
    logits = bernoulli_logits(p)
    if guidance == "qsharp":
        return ops.entropic_q(logits, ATOMS, eta)
    if guidance == "cd":
        return ops.categorical_mean(logits, ATOMS)
    raise ValueError(f"guidance: got {guidance!r}; allowed one of {', '.join(GUIDANCES)}")


def guided_log_policy(log_ref: jax.Array, p: jax.Array, eta, guidance: str) -> jax.Array:
    """ln π(·|x) = log_softmax(ln π_ref + Q/η) (`klrl.operators.guided_logits`)."""
    return jax.nn.log_softmax(ops.guided_logits(log_ref, critic_value(p, eta, guidance), eta), axis=-1)


def kl(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """KL(p‖q) = Σ_a p(a)(ln p(a) − ln q(a)) over the last axis (terms with p(a) = 0 are 0)."""
    p = jnp.exp(log_p)
    return jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)


__all__ = ["ATOMS", "GUIDANCES", "bernoulli_logits", "critic_value", "guided_log_policy", "kl", "truncate"]
