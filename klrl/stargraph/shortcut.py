"""An analytic stand-in for π_ref with the star graph's "Clever Hans" shortcut, for testing the
pipeline without pretraining: its logits at a state with last token u are

    bonus · (1[a is a child of u in the prompt's edges] + 1[u = EQ and a = s]) + noise[u, a]

(noise: a fixed Gaussian table scaled by `noise_scale`), truncated to its top-k. It follows
edges, so it picks among s's d children at random-ish (p0 ≈ 1/d for a large bonus) and then
walks the chosen arm — what a teacher-forced transformer learns (Bachmann & Nagarajan 2024).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from klrl.stargraph.graphs import StarGraphTask
from klrl.stargraph.guidance import truncate
from klrl.stargraph.tokenizer import Vocabulary


def shortcut_reference(task: StarGraphTask, bonus: float, key, noise_scale: float = 1.0, top_k: int | None = None):
    """tokens [..., L] (PAD-tailed states) -> ln π_ref [..., V] (see module docstring)."""
    voc, E = Vocabulary(task.num_nodes), task.num_edges
    noise = noise_scale * jax.random.normal(key, (voc.size, voc.size))

    def log_ref(tokens):
        last = jnp.take_along_axis(tokens, (jnp.sum(tokens != voc.pad, -1) - 1)[..., None], -1)[..., 0]
        edges = tokens[..., :2 * E].reshape(tokens.shape[:-1] + (E, 2))
        child = jnp.sum(jax.nn.one_hot(edges[..., 1], voc.size) * (edges[..., :1] == last[..., None, None]), -2)
        start = jax.nn.one_hot(tokens[..., 2 * E + 1], voc.size) * (last == voc.eq)[..., None]
        return truncate(bonus * (child + start) + noise[last], top_k=top_k)
    return log_ref


__all__ = ["shortcut_reference"]
