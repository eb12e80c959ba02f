"""A small decoder-only transformer (flax linen): token + learned position embeddings, pre-LN
blocks of causal multi-head self-attention and a GELU MLP (4× width), a final LayerNorm and a
linear head over the vocabulary (the GPT-2 layout, Radford et al. 2019, at toy size).

`CausalLM.apply(params, tokens [..., L]) -> logits [..., L, V]`: position i sees tokens ≤ i.
A state of a token MDP (klrl.stargraph.env) is a fixed-length sequence whose unwritten tail is
PAD; `next_token_logits` reads the logits at its last written position (causality makes the
PAD tail irrelevant there).
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp


class LMConfig(NamedTuple):
    """Sizes of a `CausalLM` (recorded with a saved model, klrl.stargraph.pretrain)."""

    vocab_size: int
    max_len: int
    layers: int = 4
    width: int = 128
    heads: int = 4


class Block(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x)) (pre-LN)."""

    width: int
    heads: int

    @nn.compact
    def __call__(self, x, mask):
        h = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=self.width)(h, h, mask=mask)
        h = nn.LayerNorm()(x)
        h = nn.Dense(self.width)(nn.gelu(nn.Dense(4 * self.width)(h)))
        return x + h


class CausalLM(nn.Module):
    """Decoder-only transformer: [..., L] tokens -> [..., L, outputs] (`outputs` 0: the vocabulary,
    next-token logits; 1: one scalar per position, a V-type critic head)."""

    config: LMConfig
    outputs: int = 0

    @nn.compact
    def __call__(self, tokens):
        c = self.config
        length = tokens.shape[-1]
        x = nn.Embed(c.vocab_size, c.width)(tokens)
        pos = self.param("position", nn.initializers.normal(0.02), (c.max_len, c.width))
        x = x + pos[:length]
        mask = nn.make_causal_mask(jnp.ones(tokens.shape, bool))
        for _ in range(c.layers):
            x = Block(c.width, c.heads)(x, mask)
        x = nn.LayerNorm()(x)
        return nn.Dense(self.outputs or c.vocab_size)(x)


def last_position(tokens: jax.Array, pad: int) -> jax.Array:
    """Index of the last non-PAD token of each sequence [..., L] (the state's newest token)."""
    return jnp.sum(tokens != pad, axis=-1) - 1


def next_token_logits(model: CausalLM, params, tokens: jax.Array, pad: int) -> jax.Array:
    """The outputs at the last written position of each PAD-tailed state [..., L] -> [..., outputs]."""
    out = model.apply(params, tokens)
    idx = last_position(tokens, pad)
    idx = idx[..., None, None]
    return jnp.take_along_axis(out, idx, axis=tokens.ndim - 1).squeeze(tokens.ndim - 1)


def count_params(params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))


__all__ = ["Block", "CausalLM", "LMConfig", "count_params", "last_position", "next_token_logits"]
