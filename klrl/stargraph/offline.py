"""The paper's one offline round for Q♯ / CD on the star graph (Zhou et al. 2025, §3.1, App. C):
for each post-training prompt, the correct path (label 1) and the first FAILED sample of π_ref
(label 0); a separate classifier (klrl.stargraph.critic) fit by BCE at every target position;
then guided decoding over π_ref's top-k (klrl.stargraph.evaluate).
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from klrl.stargraph import sampler
from klrl.stargraph.critic import CriticConfig, critic_model, init_critic, make_critic_step


class Labelled(NamedTuple):
    """Labelled sequences. The offline round (`paired`): 2n rows, [0, n) the correct paths,
    [n, 2n) π_ref's first failures, a weight per sequence. Algorithm 1 (klrl.stargraph.rounds):
    unpaired rows with a weight per target position [N, ℓ]."""

    tokens: jax.Array   # [2n, L]
    labels: jax.Array   # [2n] float 1/0
    weight: jax.Array   # [2n] 0 where a prompt had no failure in `tries` samples; or [N, ℓ] per position
    paired: bool = True  # row i and row n + i are one prompt's pair (the critic's batches keep them together)


def first_failures(key, log_ref: Callable, starts: jax.Array, path: jax.Array, prompt_len: int, tries: int):
    """π_ref's first failed completion of each prompt among `tries` samples: (tokens [n, L], found [n])."""
    n, ell = path.shape
    reps = jnp.tile(starts, (tries, 1))
    out = sampler.sample(key, reps, log_ref, lambda tokens, t, lref: lref, prompt_len, ell)
    failed = (1.0 - sampler.exact_match(out.tokens, jnp.tile(path, (tries, 1)), prompt_len)).reshape(tries, n)
    first = jnp.argmax(failed, axis=0)
    tokens = out.tokens.reshape(tries, n, -1)[first, jnp.arange(n)]
    return tokens, failed.max(0) > 0


def labelled_pairs(key, log_ref: Callable, starts: jax.Array, path: jax.Array, prompt_len: int,
                   tries: int = 8, chunk: int = 4096) -> Labelled:
    """The offline dataset (see module docstring). π_ref is sampled `chunk` prompts at a time
    (memory grows with chunk·tries); chunk i draws from fold_in(key, i), a single chunk from key."""
    correct = starts.at[:, prompt_len:].set(path.astype(starts.dtype))
    fail = jax.jit(lambda k, s, p: first_failures(k, log_ref, s, p, prompt_len, tries))
    n = path.shape[0]
    parts = [fail(key if n <= chunk else jax.random.fold_in(key, i // chunk), starts[i:i + chunk], path[i:i + chunk])
             for i in range(0, n, chunk)]
    failures, found = (jnp.concatenate([p[j] for p in parts]) for j in (0, 1))
    return Labelled(jnp.concatenate([correct, failures]), jnp.concatenate([jnp.ones(n), jnp.zeros(n)]),
                    jnp.concatenate([found, found]).astype(jnp.float32))


def train_critic(task, cfg: CriticConfig, data: Labelled, prompt_len: int, log: Callable = print,
                 log_every: int = 100, ref_params=None, params=None):
    """Fit the classifier on `data` (from π_ref's trunk when cfg.init is `ref`: pass
    `ref_params`; from given `params` to continue a fit, with a fresh optimiser); returns
    (model, params, history of (step, loss, seconds))."""
    model = critic_model(task, cfg)
    k_init, k_data = jax.random.split(jax.random.PRNGKey(cfg.seed))
    if params is None:
        params = init_critic(model, cfg, k_init, data.tokens[:1].astype(jnp.int32), ref_params)
    init_opt, step = make_critic_step(model, cfg, data.tokens.astype(jnp.int32), data.labels, data.weight,
                                      prompt_len, task.path_length, data.paired)
    opt_state, history, start = init_opt(params), [], time.time()
    for i in range(1, cfg.steps + 1):
        params, opt_state, loss = step(params, opt_state, jax.random.fold_in(k_data, i))
        if i % log_every == 0 or i == cfg.steps:
            history.append({"step": i, "loss": float(loss), "seconds": round(time.time() - start, 1)})
            log(history[-1])
    return model, params, history


__all__ = ["Labelled", "first_failures", "labelled_pairs", "train_critic"]
