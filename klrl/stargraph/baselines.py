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

End to end (`run_baseline`, `run_baselines`): fine-tune for `steps`, then evaluate as the paper
does — sample the fine-tuned policy with ITS OWN top-k (10) at temperature 1, one sample per test
prompt, exact match — and report the exact per-episode KL Σ_t KL(π_θ(·|x_t) ‖ π_ref(·|x_t)) along
those samples, taken against π_ref at temperature 1 WITHOUT truncation. (Guided methods sample
inside π_ref's top-k and their KL is against that truncated π_ref; a fine-tuned policy's top-k may
hold a token outside π_ref's, where the truncated KL is +∞. At θ = π_ref the untruncated KL is
Σ_t −ln M_t, M_t the mass π_ref puts on its own top-k: ≈ 0 for a peaked π_ref.)
"""

from __future__ import annotations

import functools
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from klrl.errors import ConfigError
from klrl.stargraph import sampler
from klrl.stargraph.evaluate import mean_ci
from klrl.stargraph.guidance import truncate
from klrl.stargraph.offline import Labelled
from klrl.stargraph.pretrain import target_log_probs
from klrl.stargraph.reference import lm_log_probs
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
    top_k: int = 10         # top-k of the REINFORCE samples and of the evaluation's sampling
    seed: int = 0


def sequence_log_prob(model, params, tokens: jax.Array, prompt_len: int) -> jax.Array:
    """ln π_θ(y|x) of full sequences [n, L] (sum over the ℓ target tokens) [n]."""
    logp = target_log_probs(model, params, tokens, prompt_len)
    y = tokens[:, prompt_len:]
    return jnp.sum(jnp.take_along_axis(logp, y[..., None].astype(jnp.int32), -1)[..., 0], axis=1)


def dpo_loss(model, params, ref_params, chosen: jax.Array, rejected: jax.Array, weight: jax.Array,
             prompt_len: int, beta: float, rpo_alpha: float = 0.0) -> jax.Array:
    """DPO (rpo_alpha = 0) or RPO over pairs [n, L] (weight 0: a prompt without a failure)."""
    lp = lambda x: jax.lax.stop_gradient(sequence_log_prob(model, ref_params, x, prompt_len))  # noqa: E731
    return dpo_loss_given_ref(model, params, chosen, rejected, lp(chosen), lp(rejected), weight, prompt_len, beta,
                              rpo_alpha)


def dpo_loss_given_ref(model, params, chosen: jax.Array, rejected: jax.Array, ref_w: jax.Array, ref_l: jax.Array,
                       weight: jax.Array, prompt_len: int, beta: float, rpo_alpha: float = 0.0) -> jax.Array:
    """`dpo_loss` with π_ref's ln π_ref(y_w), ln π_ref(y_l) [n] given (constants: computed once)."""
    w, lo = sequence_log_prob(model, params, chosen, prompt_len), sequence_log_prob(model, params, rejected, prompt_len)
    loss = -jax.nn.log_sigmoid(beta * ((w - ref_w) - (lo - ref_l)))
    loss = loss + rpo_alpha * (-w / (chosen.shape[1] - prompt_len))
    return jnp.sum(loss * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def reference_log_probs(model, ref_params, tokens: jax.Array, prompt_len: int, chunk: int = 1024) -> jax.Array:
    """ln π_ref(y|x) of every sequence [n, L] -> [n], in jitted chunks (DPO's fixed reference terms)."""
    return jnp.concatenate([_sequence_log_prob_jit(model, ref_params, tokens[i:i + chunk], prompt_len)
                            for i in range(0, tokens.shape[0], chunk)])


_sequence_log_prob_jit = jax.jit(sequence_log_prob, static_argnums=(0, 3))   # one compile per model and shape


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


def check_method(method: str) -> None:
    """One-line ConfigError unless `method` is one of METHODS."""
    if method not in METHODS:
        raise ConfigError(f"baselines.method: got {method!r}; allowed one of {', '.join(METHODS)}")


def make_baseline_step(model, cfg: BaselineConfig, ref_params, prompt_len: int, ell: int, pad: int, data):
    """(optimizer init, step(params, opt_state, key) -> (params, opt_state, stats)), `stats`
    = {"loss"} (+ "reward", the rollouts' mean exact-match reward, for REINFORCE).
    `data`: (starts [n, L], path [n, ℓ]) for REINFORCE, (chosen, rejected, weight) for DPO/RPO.
    The jitted program takes the data as arguments, so seeds and datasets of one shape share one compile."""
    check_method(cfg.method)
    init, program = _step_program(model, cfg._replace(steps=0, seed=0), prompt_len, ell, pad)
    if cfg.method != "reinforce":   # π_ref's sequence log-probs are constants: one pass, not one per step
        data = tuple(data) + tuple(reference_log_probs(model, ref_params, x, prompt_len) for x in data[:2])
    return init, lambda params, opt_state, key: program(params, opt_state, key, data)


@functools.lru_cache(maxsize=None)
def _step_program(model, cfg: BaselineConfig, prompt_len: int, ell: int, pad: int):
    """(optimizer init, jitted step(params, opt_state, key, data)) of `make_baseline_step`."""
    opt = optax.adamw(cfg.lr, b1=0.9, b2=0.999, weight_decay=0.0)
    rollout_policy = policy_log_probs(model, pad, cfg.top_k, cfg.greedy)

    def loss_of(params, key, data):
        i = jax.random.randint(key, (cfg.batch_size,), 0, data[0].shape[0])
        if cfg.method == "reinforce":
            starts, path = data[0][i], data[1][i]
            log_pi = rollout_policy(jax.lax.stop_gradient(params))
            out = sampler.sample(jax.random.fold_in(key, 1), starts, log_pi, lambda x, t, lr: lr, prompt_len, ell)
            reward = sampler.exact_match(out.tokens, path, prompt_len)
            loss = reinforce_loss(model, params, jax.lax.stop_gradient(out.tokens), reward, prompt_len)
            return loss, {"reward": reward.mean()}
        chosen, rejected, weight, ref_w, ref_l = (x[i] for x in data)
        alpha = cfg.rpo_alpha if cfg.method == "rpo" else 0.0
        return dpo_loss_given_ref(model, params, chosen, rejected, ref_w, ref_l, weight, prompt_len, cfg.beta,
                                  alpha), {}

    @jax.jit
    def step(params, opt_state, key, data):
        (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(params, key, data)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss, **aux}

    return opt.init, step


def step_data(method: str, train_data) -> tuple:
    """What `make_baseline_step` takes: REINFORCE's (starts, path) as they are; DPO/RPO's
    (chosen, rejected, weight) from a `Labelled` (rows [0, n) correct, [n, 2n) failures)."""
    check_method(method)
    if method == "reinforce":
        if isinstance(train_data, Labelled) or len(train_data) != 2:
            raise ConfigError("baselines.train_data: reinforce takes (starts [n, L], path [n, ℓ]); "
                              f"got {type(train_data).__name__} of {len(train_data)}")
        return jnp.asarray(train_data[0], jnp.int32), jnp.asarray(train_data[1])
    if not isinstance(train_data, Labelled):
        raise ConfigError(f"baselines.train_data: {method} takes a Labelled (offline pairs); "
                          f"got {type(train_data).__name__}")
    n = train_data.tokens.shape[0] // 2
    tokens = jnp.asarray(train_data.tokens, jnp.int32)
    return tokens[:n], tokens[n:], jnp.asarray(train_data.weight[n:], jnp.float32)


def finetune(cfg: BaselineConfig, model, ref_params, data: tuple, prompt_len: int, ell: int, pad: int,
             log: Callable = print, rows: int = 10):
    """θ ← π_ref's parameters, then `cfg.steps` baseline steps on `data` (`step_data`); returns
    (params, history): about `rows` rows of (step, loss[, reward], seconds from the start of the
    first step, its compile included)."""
    init, step = make_baseline_step(model, cfg, ref_params, prompt_len, ell, pad, data)
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 0)
    params, history, every, start = ref_params, [], max(cfg.steps // rows, 1), time.time()
    opt_state = init(params)
    for i in range(1, cfg.steps + 1):
        params, opt_state, stats = step(params, opt_state, jax.random.fold_in(key, i))
        if i % every == 0 or i == cfg.steps:
            history.append({"step": i, **{k: float(v) for k, v in stats.items()},
                            "seconds": round(time.time() - start, 2)})
            log({"method": cfg.method, "seed": cfg.seed, **history[-1]})
    return params, history


def policy_samples(key, model, params, log_ref: Callable | None, starts: jax.Array, prompt_len: int, ell: int,
                   pad: int, top_k: int, ref_params=None) -> sampler.Samples:
    """One sample per prompt from π_θ's own top-k at temperature 1, with the exact per-episode KL
    against `log_ref` (klrl.stargraph.sampler.sample); `log_ref=None`: against the untruncated
    π_ref of `ref_params` (one compiled program per model and shape, shared by every call)."""
    if log_ref is None:
        return _untruncated_program(model, pad, prompt_len, ell, top_k)(params, ref_params, key, starts)
    return jax.jit(_sample_program(model, pad, prompt_len, ell, top_k), static_argnums=1)(params, log_ref, key, starts)


def _sample_program(model, pad: int, prompt_len: int, ell: int, top_k: int):
    log_pi = policy_log_probs(model, pad, top_k, greedy=False)

    def run(params, log_ref, key, starts):
        return sampler.sample(key, starts, log_ref, lambda tokens, t, lref: log_pi(params)(tokens), prompt_len, ell)
    return run


@functools.lru_cache(maxsize=None)
def _untruncated_program(model, pad: int, prompt_len: int, ell: int, top_k: int):
    run, lm = _sample_program(model, pad, prompt_len, ell, top_k), lm_log_probs(model, pad)
    return jax.jit(lambda params, ref_params, key, starts: run(params, functools.partial(lm, ref_params), key, starts))


def run_baseline(cfg: BaselineConfig, model, ref_params, log_ref: Callable | None, train_data, test_starts,
                 test_path, prompt_len: int, pad: int, log: Callable = print) -> dict:
    """Fine-tune π_ref by `cfg.method` on `train_data` ((starts, path) of post-training prompts
    for REINFORCE; a `klrl.stargraph.offline.Labelled` for DPO/RPO), then evaluate on the test
    prompts: exact-match accuracy and per-episode KL, 95% CIs over prompts (evaluate.mean_ci).

    `log_ref` (tokens -> ln π_ref(·|x)) is what the KL is taken against: pass π_ref at temperature
    1 WITHOUT top-k truncation, or None to build exactly that from (model, ref_params); a truncated
    one gives KL = +∞ wherever the policy's top-k leaves π_ref's (module docstring).
    Returns {"method", "seed", "train": history, "accuracy", "kl", "n", "seconds"}."""
    start = time.time()
    data = step_data(cfg.method, train_data)
    ell = int(test_path.shape[-1])
    params, history = finetune(cfg, model, ref_params, data, prompt_len, ell, pad, log)
    test_starts = jnp.asarray(test_starts, jnp.int32)
    out = policy_samples(jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 1), model, params, log_ref, test_starts,
                         prompt_len, ell, pad, cfg.top_k, ref_params)
    success = sampler.exact_match(out.tokens, jnp.asarray(test_path), prompt_len)
    result = {"method": cfg.method, "seed": cfg.seed, "train": history, "accuracy": mean_ci(success),
              "kl": mean_ci(out.kl), "n": int(success.shape[0]), "seconds": round(time.time() - start, 1)}
    log({k: result[k] for k in ("method", "seed", "accuracy", "kl", "seconds")})
    return result


__all__ = ["BaselineConfig", "METHODS", "check_method", "dpo_loss", "dpo_loss_given_ref", "finetune",
           "make_baseline_step", "policy_log_probs", "policy_samples", "reference_log_probs",
           "reinforce_loss", "run_baseline", "sequence_log_prob", "step_data"]
