"""The success classifier of Q♯ on the star graph (Zhou et al. 2025, §3.1): a separate causal
transformer that predicts p(x, a) = P(π_ref completes correctly | prefix x, next token a),
trained by binary cross-entropy at EVERY target position of labelled sequences (label r ∈ {0, 1}
of the whole sequence, the paper's one offline round).

Two heads (`HEADS`), and two starts (`INITS`): `scratch` (random), or `ref` — every
parameter but the output head copied from π_ref (same layers, width and heads), so the critic
starts from a trunk that already reads the edge list (π_ref follows edges perfectly) and only has
to learn the decision π_ref's shortcut skips.

Heads:
- `v` (the paper's): one scalar per position; the logit at the position holding y_t is
  p(y_{<t}, y_t). Scoring k candidate tokens costs k forward passes (`candidate_p`).
- `q`: V logits per position; the logit of token a at the position holding the state's last
  token is p(x, a). One pass scores every candidate.

    L(φ) = −(1/ℓ) Σ_t [r ln σ(f_φ(y_{<t}, y_t)) + (1 − r) ln(1 − σ(f_φ(y_{<t}, y_t)))]

`critic_p` returns p(x, ·) over the vocabulary at PAD-tailed states (0 outside the candidates),
the input of klrl.stargraph.guidance.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from klrl.stargraph.graphs import StarGraphTask
from klrl.stargraph.tokenizer import Vocabulary, sequence_length
from klrl.stargraph.transformer import CausalLM, LMConfig, last_position

HEADS = ("v", "q")
INITS = ("scratch", "ref")
HEAD = "Dense_0"   # CausalLM's output layer: the one part never copied from π_ref


class CriticConfig(NamedTuple):
    """The classifier's size, head and training (AdamW, warmup + cosine, paired batches)."""

    head: str = "v"
    layers: int = 4
    width: int = 128
    heads: int = 4
    steps: int = 1_000
    batch_size: int = 256     # sequences: batch_size/2 prompts, each with its two labelled sequences
    lr: float = 1e-3
    final_lr: float = 1e-4
    warmup: int = 100
    weight_decay: float = 0.1
    seed: int = 0
    init: str = "scratch"     # INITS


def critic_model(task: StarGraphTask, cfg: CriticConfig) -> CausalLM:
    """The classifier network: a CausalLM with a scalar (`v`) or vocabulary-wide (`q`) head."""
    if cfg.head not in HEADS:
        raise ValueError(f"critic.head: got {cfg.head!r}; allowed one of {', '.join(HEADS)}")
    lm = LMConfig(Vocabulary(task.num_nodes).size, sequence_length(task), cfg.layers, cfg.width, cfg.heads)
    return CausalLM(lm, outputs=1 if cfg.head == "v" else 0)


def init_critic(model: CausalLM, cfg: CriticConfig, key, sample: jax.Array, ref_params=None):
    """The critic's initial parameters: random (`scratch`), or π_ref's with a fresh head (`ref`)."""
    if cfg.init not in INITS:
        raise ValueError(f"critic.init: got {cfg.init!r}; allowed one of {', '.join(INITS)}")
    params = model.init(key, sample)
    if cfg.init == "scratch":
        return params
    if ref_params is None:
        raise ValueError("critic.init: got 'ref' without π_ref's parameters; allowed 'scratch'")
    ours, theirs = params["params"], ref_params["params"]
    trunk = {k: v for k, v in theirs.items() if k != HEAD}
    shapes = jax.tree.map(jnp.shape, {k: ours[k] for k in trunk if k in ours})
    if set(trunk) != set(ours) - {HEAD} or shapes != jax.tree.map(jnp.shape, trunk):
        raise ValueError("critic.init: got 'ref' with a critic whose layers/width/heads differ from π_ref's; "
                         "allowed 'scratch'")
    return {"params": {**trunk, HEAD: ours[HEAD]}}


def target_logits(model: CausalLM, params, tokens: jax.Array, prompt_len: int, ell: int, head: str) -> jax.Array:
    """The classifier's logit of p(y_{<t}, y_t) at every target position of full sequences: [n, ℓ]."""
    if head == "v":
        return model.apply(params, tokens)[:, prompt_len:prompt_len + ell, 0]
    out = model.apply(params, tokens[:, :-1])[:, prompt_len - 1:prompt_len - 1 + ell]
    return jnp.take_along_axis(out, tokens[:, prompt_len:prompt_len + ell, None].astype(jnp.int32), -1)[..., 0]


def weighted_bce(logits: jax.Array, labels: jax.Array, weight: jax.Array) -> jax.Array:
    """Weighted mean BCE of logits [n, ℓ] against sequence labels [n]: a weight per sequence [n]
    (the offline round: mean over positions, then over sequences) or per position [n, ℓ]
    (Algorithm 1: 0 before the switch to π_ref, where the label is not a sample of p)."""
    bce = optax.sigmoid_binary_cross_entropy(logits, jnp.broadcast_to(labels[:, None], logits.shape))
    if weight.ndim == 1:
        return jnp.sum(bce.mean(1) * weight) / jnp.maximum(jnp.sum(weight), 1.0)
    return jnp.sum(bce * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def bce_loss(model: CausalLM, params, tokens: jax.Array, labels: jax.Array, weight: jax.Array, prompt_len: int,
             ell: int, head: str) -> jax.Array:
    """Weighted mean BCE over sequences and their ℓ target positions (the equation above)."""
    return weighted_bce(target_logits(model, params, tokens, prompt_len, ell, head), labels, weight)


def candidate_p(model: CausalLM, params, tokens: jax.Array, candidates: jax.Array, pad: int) -> jax.Array:
    """V-type: p of each candidate next token [n, k] (k passes, batched as [n, k, L])."""
    pos = last_position(tokens, pad) + 1                                       # where the candidate goes
    cols = jnp.arange(tokens.shape[-1])
    with_a = jnp.where(cols[None, None] == pos[:, None, None], candidates[..., None].astype(tokens.dtype),
                       tokens[:, None, :])
    out = model.apply(params, with_a)[..., 0]                                  # [n, k, L]
    return jax.nn.sigmoid(jnp.take_along_axis(out, pos[:, None, None], axis=-1)[..., 0])


def critic_p(model: CausalLM, params, tokens: jax.Array, log_ref: jax.Array, head: str, pad: int,
             top_k: int) -> jax.Array:
    """p(x, ·) [n, V] at states `tokens` [n, L]: every token (`q`), or π_ref's top-k (`v`, 0 elsewhere)."""
    if head == "q":
        out = model.apply(params, tokens)
        idx = last_position(tokens, pad)[:, None, None]
        return jax.nn.sigmoid(jnp.take_along_axis(out, idx, axis=1)[:, 0])
    candidates = jax.lax.top_k(log_ref, top_k)[1]                              # [n, k]
    p = candidate_p(model, params, tokens, candidates, pad)
    return jnp.zeros(log_ref.shape, p.dtype).at[jnp.arange(p.shape[0])[:, None], candidates].set(p)


def make_critic_step(model: CausalLM, cfg: CriticConfig, tokens: jax.Array, labels: jax.Array, weight: jax.Array,
                     prompt_len: int, ell: int, paired: bool = True):
    """(init_opt_state, jitted step(params, opt_state, key)) over the labelled set [N, L]: `paired`
    (the offline round, N = 2n), each batch takes batch_size/2 prompts with BOTH their sequences
    (rows i and n + i); unpaired (Algorithm 1's rolled-in data), batch_size rows uniformly."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, max(cfg.warmup, 1), max(cfg.steps, cfg.warmup + 1),
                                                  cfg.final_lr)
    opt = optax.adamw(schedule, b1=0.9, b2=0.999, weight_decay=cfg.weight_decay)
    n = tokens.shape[0] // 2

    def batch_rows(key):
        if not paired:
            return jax.random.randint(key, (cfg.batch_size,), 0, tokens.shape[0])
        i = jax.random.randint(key, (cfg.batch_size // 2,), 0, n)
        return jnp.concatenate([i, i + n])

    @jax.jit
    def step(params, opt_state, key):
        rows = batch_rows(key)
        loss, grads = jax.value_and_grad(lambda p: bce_loss(model, p, tokens[rows], labels[rows], weight[rows],
                                                            prompt_len, ell, cfg.head))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return opt.init, step


__all__ = ["CriticConfig", "HEADS", "INITS", "init_critic", "bce_loss", "weighted_bce", "candidate_p", "critic_model", "critic_p", "make_critic_step",
           "target_logits"]
