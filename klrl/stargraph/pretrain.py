"""π_ref pretraining: next-token prediction (teacher forcing) on a FIXED set of star graphs, the
loss on the ℓ target tokens only (Bachmann & Nagarajan 2024; the reference policy of Q♯,
Zhou et al. 2025, App. C).

    L(θ) = −(1/ℓ) Σ_{t<ℓ} ln π_θ(y_t | prompt, y_{<t}),   batches drawn uniformly from the set,

AdamW (β = 0.9, 0.999, weight decay) with a linear warmup to `lr` then a cosine decay to
`final_lr` (optax). `per_position_accuracy` is the teacher-forced argmax accuracy of each target
position: the star-graph "Clever Hans" shortcut shows as ≈ 1/d at position 1 (the first child of
s) and ≈ 1 everywhere else.

A trained model is saved as a directory (`save` / `load`): `lm.json` (task, sizes, training
config, the accuracy report, provenance) and `params/` (orbax). klrl.stargraph.reference turns
it into a `klrl.reference.Reference`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from klrl.stargraph.graphs import StarGraphTask, dataset
from klrl.stargraph.tokenizer import Vocabulary, encode, prompt_length, sequence_length
from klrl.stargraph.transformer import CausalLM, LMConfig, count_params


class PretrainConfig(NamedTuple):
    """What `pretrain` does (all of it recorded in lm.json)."""

    task: StarGraphTask = StarGraphTask(2, 5, 50)
    layers: int = 4
    width: int = 128
    heads: int = 4
    train_size: int = 200_000
    test_size: int = 2_000
    steps: int = 2_000
    batch_size: int = 256
    lr: float = 1e-3
    final_lr: float = 1e-4
    warmup: int = 100
    weight_decay: float = 0.1
    seed: int = 0
    eval_every: int = 250

    def lm(self) -> LMConfig:
        return LMConfig(Vocabulary(self.task.num_nodes).size, sequence_length(self.task), self.layers, self.width,
                        self.heads)


def optimizer(cfg: PretrainConfig) -> optax.GradientTransformation:
    """AdamW with linear warmup to `lr` and cosine decay to `final_lr` over `steps`."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, max(cfg.warmup, 1), max(cfg.steps, cfg.warmup + 1),
                                                  cfg.final_lr)
    return optax.adamw(schedule, b1=0.9, b2=0.999, weight_decay=cfg.weight_decay)


def target_log_probs(model: CausalLM, params, tokens: jax.Array, prompt_len: int) -> jax.Array:
    """Teacher-forced ln π(·|prompt, y_{<t}) at the ℓ target positions: [n, ℓ, V]."""
    logits = model.apply(params, tokens[:, :-1])
    return jax.nn.log_softmax(logits[:, prompt_len - 1:], axis=-1)


def target_loss(model: CausalLM, params, tokens: jax.Array, prompt_len: int) -> jax.Array:
    """Mean next-token cross-entropy over the target tokens of a batch [n, L]."""
    logp = target_log_probs(model, params, tokens, prompt_len)
    y = tokens[:, prompt_len:]
    return -jnp.mean(jnp.take_along_axis(logp, y[..., None], axis=-1))


def make_step(model: CausalLM, opt: optax.GradientTransformation, data: jax.Array, prompt_len: int,
              batch_size: int) -> Callable:
    """One jitted AdamW step on a uniform minibatch of the fixed set `data` [n, L]."""
    @jax.jit
    def step(params, opt_state, key):
        idx = jax.random.randint(key, (batch_size,), 0, data.shape[0])
        loss, grads = jax.value_and_grad(lambda p: target_loss(model, p, data[idx], prompt_len))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss
    return step


_target_log_probs_jit = jax.jit(target_log_probs, static_argnums=(0, 3))


def per_position_accuracy(model: CausalLM, params, tokens: np.ndarray, prompt_len: int,
                          chunk: int = 500) -> dict:
    """Teacher-forced argmax accuracy of each target position [ℓ], the mean target NLL, and the
    fraction of sequences whose every target token is the argmax (teacher-forced exact match)."""
    hits, nll = [], []
    for i in range(0, tokens.shape[0], chunk):
        x = jnp.asarray(tokens[i:i + chunk])
        logp = np.asarray(_target_log_probs_jit(model, params, x, prompt_len))
        y = np.asarray(x[:, prompt_len:])
        hits.append(logp.argmax(-1) == y)
        nll.append(-np.take_along_axis(logp, y[..., None], axis=-1)[..., 0])
    hits, nll = np.concatenate(hits), np.concatenate(nll)
    return {"accuracy": hits.mean(0).round(4).tolist(), "nll": float(nll.mean()),
            "exact_match_teacher_forced": float(hits.all(1).mean())}


def pretrain(cfg: PretrainConfig, log: Callable[[str], None] = print):
    """Train π_ref; returns (model, params, report). Deterministic in `cfg` (same seed, same params)."""
    task, P = cfg.task, prompt_length(cfg.task)
    train = jnp.asarray(encode(task, dataset(task, "pretrain", cfg.train_size, cfg.seed)))
    test = encode(task, dataset(task, "test", cfg.test_size, cfg.seed))
    model = CausalLM(cfg.lm())
    key_init, key_data = jax.random.split(jax.random.PRNGKey(cfg.seed))
    params = model.init(key_init, train[:1])
    opt = optimizer(cfg)
    opt_state, step = opt.init(params), make_step(model, opt, train, P, cfg.batch_size)
    history, start, loss = [], time.time(), jnp.nan
    for i in range(1, cfg.steps + 1):
        params, opt_state, loss = step(params, opt_state, jax.random.fold_in(key_data, i))
        if i % cfg.eval_every == 0 or i == cfg.steps:
            row = {"step": i, "loss": float(loss), "seconds": round(time.time() - start, 1),
                   **per_position_accuracy(model, params, test, P)}
            history.append(row)
            log(json.dumps(row))
    report = {"parameters": count_params(params), "seconds": round(time.time() - start, 1),
              "test": history[-1] if history else {}, "history": history}
    return model, params, report


def save(path: str, cfg: PretrainConfig, params, report: dict) -> None:
    """Write `path`/lm.json and `path`/params (orbax); `path` must not hold a model yet."""
    import orbax.checkpoint as ocp

    from klrl.provenance import provenance

    os.makedirs(path, exist_ok=True)
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(os.path.abspath(os.path.join(path, "params")), params)
    ckpt.wait_until_finished()
    record = {"kind": "stargraph_lm", "config": {**cfg._asdict(), "task": cfg.task._asdict()},
              "lm": cfg.lm()._asdict(), "report": report, "provenance": provenance()}
    with open(os.path.join(path, "lm.json"), "w") as fh:
        json.dump(record, fh, indent=1)


def load(path: str):
    """(config, model, params) of a model written by `save`."""
    import orbax.checkpoint as ocp

    with open(os.path.join(path, "lm.json")) as fh:
        record = json.load(fh)
    raw = dict(record["config"])
    cfg = PretrainConfig(**{**raw, "task": StarGraphTask(**raw["task"])})
    model = CausalLM(cfg.lm())
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, cfg.lm().max_len), jnp.int32)))
    params = ocp.StandardCheckpointer().restore(os.path.abspath(os.path.join(path, "params")), abstract)
    return cfg, model, params


__all__ = ["PretrainConfig", "load", "make_step", "optimizer", "per_position_accuracy", "pretrain", "save",
           "target_log_probs", "target_loss"]
