"""A pretrained star-graph LM (klrl.stargraph.pretrain) as a `klrl.reference.Reference`.

`agent.reference_run` loads Q-networks of `klrl train` runs (klrl.reference); a causal LM is not
one (its parameters are not a population's, its output is next-token logits, not Q-values), so
it has its own loader: `lm_reference(path, top_k, temperature)` gives the same
`Reference(kind, log_probs, load)` triple the engine's programs take, with

    ln π_ref(·|x) = truncate(logits of the LM at x's last written token, top_k, temperature)

(klrl.stargraph.guidance.truncate: the sampling rule of the paper, top-k 10, temperature 1).
Observations are the token MDP's PAD-tailed states (klrl.stargraph.env), any leading shape.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from klrl.reference import Reference
from klrl.stargraph.guidance import truncate
from klrl.stargraph.tokenizer import Vocabulary
from klrl.stargraph.transformer import next_token_logits


def lm_log_probs(model, pad: int, top_k: int | None = None, temperature: float = 1.0):
    """(params, tokens [..., L]) -> ln π_ref [..., V] of a `CausalLM`."""
    def log_probs(params, obs):
        return truncate(next_token_logits(model, params, obs.astype(jnp.int32), pad), top_k, temperature)
    return log_probs


def lm_reference(path: str, top_k: int | None = None, temperature: float = 1.0) -> Reference:
    """The saved LM at `path` as a Reference (kind "lm"; parameters loaded once, on first `load`)."""
    from klrl.stargraph.pretrain import load

    cfg, model, _ = load(path)
    pad = Vocabulary(cfg.task.num_nodes).pad
    return Reference("lm", lm_log_probs(model, pad, top_k, temperature),
                     functools.lru_cache(maxsize=1)(lambda: load(path)[2]))


__all__ = ["lm_log_probs", "lm_reference"]
