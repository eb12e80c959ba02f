"""The policy-based baselines of the star-graph experiment (Zhou et al. 2025, §3.1, App. C), on
the same π_ref and data as Q♯: comparisons, not engine agents. Each fine-tunes a copy of π_ref's
parameters θ (initialised at π_ref) with full-softmax sequence log-probabilities
ln π_θ(y|x) = Σ_t ln π_θ(y_t | x, y_{<t}) (klrl.stargraph.pretrain.target_log_probs):

- REINFORCE (Williams 1992), no KL: L = −E[(r − b)·ln π_θ(y|x)] over the policy's own samples
  (`greedy` rollouts as in the paper, or top-k samples), r the exact-match reward, b the batch
  mean reward (the paper's "r − mean r" variant);
- DPO (Rafailov et al. 2023) on the offline pairs (y_w = correct path, y_l = first π_ref failure):
  L = −ln σ(β[(ln π_θ(y_w) − ln π_ref(y_w)) − (ln π_θ(y_l) − ln π_ref(y_l))]), β = 0.1;
- RPO (Pang et al. 2024): DPO + α·(−ln π_θ(y_w)/ℓ), the chosen sequence's per-token NLL.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from klrl.stargraph import sampler
from klrl.stargraph.guidance import truncate
from klrl.stargraph.pretrain import target_log_probs
from klrl.stargraph.transformer import next_token_logits

METHODS = ("reinforce", "dpo", "rpo")


class BaselineConfig(NamedTuple):
    method: str = "dpo"
    steps: int = 500
    batch_size: int = 256
    lr: float = 1e-4
    beta: float = 0.1
    rpo_alpha: float = 1.0
    greedy: bool = True     # REINFORCE rollouts: argmax (the paper) or top-k samples
    top_k: int = 10
    seed: int = 0


def sequence_log_prob(model, params, tokens: jax.Array, prompt_len: int) -> jax.Array:
    """ln π_θ(y|x) of full sequences [n, L] (sum over the ℓ target tokens) [n]."""
    logp = target_log_probs(model, params, tokens, prompt_len)
    y = tokens[:, prompt_len:]
    return jnp.sum(jnp.take_along_axis(logp, y[..., None].astype(jnp.int32), -1)[..., 0], axis=1)


def dpo_loss(model, params, ref_params, chosen: jax.Array, rejected: jax.Array, weight: jax.Array,
             prompt_len: int, beta: float, rpo_alpha: float = 0.0) -> jax.Array:
    """DPO (rpo_alpha = 0) or RPO over pairs [n, L] (weight 0: a prompt without a failure)."""
    lp = lambda p, x: sequence_log_prob(model, p, x, prompt_len)  # noqa: E731
    ref_w, ref_l = jax.lax.stop_gradient(lp(ref_params, chosen)), jax.lax.stop_gradient(lp(ref_params, rejected))
    w, lo = lp(params, chosen), lp(params, rejected)
    loss = -jax.nn.log_sigmoid(beta * ((w - ref_w) - (lo - ref_l)))
    loss = loss + rpo_alpha * (-w / (chosen.shape[1] - prompt_len))
    return jnp.sum(loss * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def reinforce_loss(model, params, tokens: jax.Array, reward: jax.Array, prompt_len: int) -> jax.Array:
    """−mean((r − mean r)·ln π_θ(y|x)) over the policy's own completions [n, L]."""
    adv = jax.lax.stop_gradient(reward - reward.mean())
    return -jnp.mean(adv * sequence_log_prob(model, params, tokens, prompt_len))


def policy_log_probs(model, pad: int, top_k: int, greedy: bool):
    """(params) -> (tokens -> ln π_θ(·|x)) as the rollouts use it (greedy: a one-hot argmax)."""
    def for_params(params):
        def log_pi(tokens):
            lp = truncate(next_token_logits(model, params, tokens, pad), top_k)
            if greedy:
                return jnp.where(jax.nn.one_hot(jnp.argmax(lp, -1), lp.shape[-1]) > 0, 0.0, -jnp.inf)
            return lp
        return log_pi
    return for_params


def make_baseline_step(model, cfg: BaselineConfig, ref_params, prompt_len: int, ell: int, pad: int, data):
    """(optimizer init, jitted step(params, opt_state, key) -> (params, opt_state, loss)).
    `data`: (starts [n, L], path [n, ℓ]) for REINFORCE, (chosen, rejected, weight) for DPO/RPO."""
    if cfg.method not in METHODS:
        raise ValueError(f"baseline.method: got {cfg.method!r}; allowed one of {', '.join(METHODS)}")
    opt = optax.adamw(cfg.lr, b1=0.9, b2=0.999, weight_decay=0.0)
    rollout_policy = policy_log_probs(model, pad, cfg.top_k, cfg.greedy)

    def loss_of(params, key):
        i = jax.random.randint(key, (cfg.batch_size,), 0, data[0].shape[0])
        if cfg.method == "reinforce":
            starts, path = data[0][i], data[1][i]
            log_pi = rollout_policy(jax.lax.stop_gradient(params))
            out = sampler.sample(jax.random.fold_in(key, 1), starts, log_pi, lambda x, t, lr: lr, prompt_len, ell)
            reward = sampler.exact_match(out.tokens, path, prompt_len)
            return reinforce_loss(model, params, jax.lax.stop_gradient(out.tokens), reward, prompt_len)
        alpha = cfg.rpo_alpha if cfg.method == "rpo" else 0.0
        return dpo_loss(model, params, ref_params, data[0][i], data[1][i], data[2][i], prompt_len, cfg.beta, alpha)

    @jax.jit
    def step(params, opt_state, key):
        loss, grads = jax.value_and_grad(loss_of)(params, key)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return opt.init, step


__all__ = ["BaselineConfig", "METHODS", "dpo_loss", "make_baseline_step", "policy_log_probs", "reinforce_loss",
           "sequence_log_prob"]
