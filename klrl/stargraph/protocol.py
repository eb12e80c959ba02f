"""The oracle run on a saved π_ref (klrl.stargraph.pretrain.save), returning a JSON-ready dict.

- `oracle_run`: π_ref's test accuracy, and Q♯ and CD guided by the EXACT p (the oracle critic,
  klrl.stargraph.exact) at each η: the upper bound of any learned critic, with the exact
  per-episode KL; plus the closed forms P*, KL* averaged over the same prompts.
(The learned critics' runs are parts of the whole experiment: klrl.stargraph.experiment.)
Sampling as in the paper: π_ref's top-k (default 10) at temperature 1, one sample per test prompt.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from klrl.stargraph import exact
from klrl.stargraph.env import initial_states
from klrl.stargraph.evaluate import evaluate, evaluator, oracle_p_fn
from klrl.stargraph.graphs import dataset
from klrl.stargraph.guidance import GUIDANCES
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


__all__ = ["children_in_top_k", "oracle_run"]
