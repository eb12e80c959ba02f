"""End-to-end runs on a saved π_ref (klrl.stargraph.pretrain.save), each returning a JSON-ready dict.

- `oracle_run`: π_ref's test accuracy, and Q♯ and CD guided by the EXACT p (the oracle critic,
  klrl.stargraph.exact) at each η: the upper bound of any learned critic, with the exact
  per-episode KL; plus the closed forms P*, KL* averaged over the same prompts.
- `offline_run`: the paper's one offline round (klrl.stargraph.offline): labelled pairs on the
  post-training prompts, a classifier fit by BCE, its calibration against the exact p on test
  prompts, and Q♯ / CD accuracy and KL guided by it.
Sampling as in the paper: π_ref's top-k (default 10) at temperature 1, one sample per test prompt.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from klrl.stargraph import exact
from klrl.stargraph.critic import CriticConfig, critic_p
from klrl.stargraph.env import initial_states
from klrl.stargraph.evaluate import calibration, evaluate, evaluator, oracle_p_fn
from klrl.stargraph.graphs import dataset
from klrl.stargraph.guidance import GUIDANCES
from klrl.stargraph.offline import labelled_pairs, train_critic
from klrl.stargraph.pretrain import load
from klrl.stargraph.reference import lm_log_probs
from klrl.stargraph.tokenizer import Vocabulary, prompt_length


def _setup(ref_dir: str, split: str, size: int, top_k: int):
    cfg, model, params = load(ref_dir)
    task = cfg.task
    g = dataset(task, split, size, cfg.seed)
    starts, path = jnp.asarray(initial_states(task, g), jnp.int32), jnp.asarray(g.path)
    lp = lm_log_probs(model, Vocabulary(task.num_nodes).pad, top_k)
    return task, (lambda tokens: lp(params, tokens)), starts, path


def children_in_top_k(task, starts: jax.Array, path: jax.Array, log_ref_path: jax.Array) -> float:
    """Fraction of prompts where ALL d children of s are in π_ref's (truncated) support right
    after s (the decision the shortcut gets wrong: guidance can fix it only if both are there)."""
    E = task.num_edges
    edges = starts[:, :2 * E].reshape(-1, E, 2)
    is_child = edges[..., 0] == path[:, :1]
    finite = jnp.isfinite(jnp.take_along_axis(log_ref_path[:, 1], edges[..., 1], axis=-1))
    return float(jnp.mean(jnp.all(finite | ~is_child, axis=-1)))


def oracle_run(ref_dir: str, test_size: int = 2000, etas=(0.03, 0.1, 0.3, 1.0), top_k: int = 10, seed: int = 0,
               log=print) -> dict:
    """See the module docstring."""
    start = time.time()
    task, log_ref, starts, path = _setup(ref_dir, "test", test_size, top_k)
    P, V = prompt_length(task), Vocabulary(task.num_nodes).size
    key = jax.random.PRNGKey(seed)
    lrp = exact.path_log_probs(log_ref, starts, path, P)
    p0 = exact.success_probability(lrp, path)
    out = {"test_size": test_size, "top_k": top_k, "p0_mean": float(p0.mean()),
           "children_in_top_k": children_in_top_k(task, starts, path, lrp),
           "pi_ref": evaluate(key, log_ref, starts, path, P)}
    log({k: out[k] for k in ("pi_ref", "p0_mean", "children_in_top_k")})
    p_fn = oracle_p_fn(log_ref, starts, path, P, V)
    runs = {rule: evaluator(log_ref, starts, path, P, p_fn, rule) for rule in GUIDANCES}
    for eta in etas:
        row = {"closed_form": {"success": float(exact.optimal_success(p0, eta).mean()),
                               "kl": float(exact.optimal_kl(p0, eta).mean())}}
        for rule in GUIDANCES:
            row[rule] = runs[rule](key, eta)
        out[f"eta={eta}"] = row
        log({f"eta={eta}": row})
    out["seconds"] = round(time.time() - start, 1)
    return out


def offline_run(ref_dir: str, critic: CriticConfig, posttrain_size: int = 20_000, test_size: int = 2000,
                eta: float = 0.1, top_k: int = 10, tries: int = 8, seed: int = 0, log=print) -> dict:
    """See the module docstring."""
    start = time.time()
    task, log_ref, starts, path = _setup(ref_dir, "posttrain", posttrain_size, top_k)
    P, voc = prompt_length(task), Vocabulary(task.num_nodes)
    data = labelled_pairs(jax.random.PRNGKey(seed), log_ref, starts, path, P, tries)
    log({"pairs": posttrain_size, "with_failure": float(data.weight[posttrain_size:].mean()),
         "seconds": round(time.time() - start, 1)})
    ref_params = load(ref_dir)[2] if critic.init == "ref" else None
    model, params, history = train_critic(task, critic, data, P, log=log, ref_params=ref_params)
    _, _, test_starts, test_path = _setup(ref_dir, "test", test_size, top_k)
    read = jax.jit(lambda tokens, lref: critic_p(model, params, tokens, lref, critic.head, voc.pad, top_k))
    p_fn = lambda tokens, t, lref: read(tokens, lref)  # noqa: E731
    out = {"critic": critic._asdict(), "train": history, "with_failure": float(data.weight[posttrain_size:].mean()),
           "calibration": calibration(p_fn, log_ref, test_starts, test_path, P, voc.size)}
    log({"calibration": out["calibration"]})
    for rule in GUIDANCES:
        out[rule] = evaluate(jax.random.PRNGKey(seed + 1), log_ref, test_starts, test_path, P, p_fn, eta, rule)
        log({rule: out[rule]})
    out["seconds"] = round(time.time() - start, 1)
    return out


__all__ = ["children_in_top_k", "offline_run", "oracle_run"]
