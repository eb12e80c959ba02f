"""The star-graph experiment end to end (Zhou et al. 2025, §3.1): `run(exp, out_dir)` runs the
parts of klrl.stargraph.experiment_config.PARTS in order, each writing `parts/<part>.json` (the
baselines one file per method and seed) and skipping what an earlier call already wrote, then
`summarize` gathers them into `summary.json` (one row per method: accuracy and KL with 95% CIs
over test prompts; the η frontier; the critics' calibration; seconds per part).

- `pretrain`: π_ref by next-token prediction, saved to `pi_ref/` (or an existing one: `ref_dir`);
- `oracle`: π_ref on the test prompts, Q♯ and CD guided by the exact p at every η of the frontier;
- `offline`: the paper's one offline round — labelled pairs (correct path 1, π_ref's first
  failure 0; cached in `cache/pairs.npz` for the later parts), a critic fit by BCE, its
  calibration, Q♯ and CD guided by it at every η;
- `rounds`: Algorithm 1 (klrl.stargraph.rounds) continuing the offline round — its pairs are the
  first data, its critic guides the first roll-in — then the same evaluation;
- `baselines`: REINFORCE, RPO, DPO fine-tuned from π_ref (klrl.stargraph.baselines) per seed.

Every evaluation samples one completion per test prompt with π_ref's top-k at temperature 1.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import flax.serialization
import numpy as np

from klrl.errors import ConfigError
from klrl.stargraph import baselines, rounds
from klrl.stargraph.critic import critic_model, critic_p
from klrl.stargraph.env import initial_states
from klrl.stargraph.evaluate import calibration, evaluator
from klrl.stargraph.experiment_config import Experiment
from klrl.stargraph.graphs import dataset
from klrl.stargraph.guidance import GUIDANCES
from klrl.stargraph.offline import Labelled, labelled_pairs, train_critic
from klrl.stargraph.pretrain import load, pretrain, save
from klrl.stargraph.protocol import oracle_run
from klrl.stargraph.reference import lm_log_probs
from klrl.stargraph.tokenizer import Vocabulary, prompt_length


class Context(NamedTuple):
    """π_ref and the prompts every part shares."""

    model: object
    params: object
    log_ref: Callable        # tokens -> ln π_ref(·|x), top-k truncated, temperature 1
    prompt_len: int
    pad: int
    vocab: int
    test: tuple              # (starts [n, L] int32, path [n, ℓ])
    post: tuple              # post-training prompts (starts, path)


def _write_json(path: str, obj) -> None:
    """Atomically: a part file is either whole or absent."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(path + ".tmp", path)


def _prompts(exp: Experiment, split: str, size: int, seed: int) -> tuple:
    g = dataset(exp.task, split, size, seed)
    return jnp.asarray(initial_states(exp.task, g), jnp.int32), jnp.asarray(g.path)


def context(exp: Experiment, ref_dir: str) -> Context:
    cfg, model, params = load(ref_dir)
    if cfg.task != exp.task:
        raise ConfigError(f"task: got {tuple(exp.task)}; allowed the reference's task {tuple(cfg.task)}")
    voc = Vocabulary(exp.task.num_nodes)
    lp = lm_log_probs(model, voc.pad, exp.eval.top_k)
    return Context(model, params, lambda tokens: lp(params, tokens), prompt_length(exp.task), voc.pad, voc.size,
                   _prompts(exp, "test", exp.eval.test_size, cfg.seed),
                   _prompts(exp, "posttrain", exp.offline.posttrain_size, cfg.seed))


def guided_rows(ctx: Context, exp: Experiment, p_fn: Callable) -> dict:
    """Q♯ and CD guided by `p_fn`, each at every η of the frontier (and at eval.eta)."""
    key = jax.random.PRNGKey(exp.eval.seed + 1)
    etas = sorted(set(exp.eval.etas) | {exp.eval.eta})
    out = {}
    for rule in GUIDANCES:
        run = evaluator(ctx.log_ref, *ctx.test, ctx.prompt_len, p_fn, rule)
        out[rule] = [{"eta": eta, **run(key, eta)} for eta in etas]
    return out


def learned_p_fn(ctx: Context, exp: Experiment, model, params) -> Callable:
    read = jax.jit(lambda tokens, lref: critic_p(model, params, tokens, lref, exp.critic.head, ctx.pad,
                                                 exp.eval.top_k))
    return lambda tokens, t, lref: read(tokens, lref)


def offline_pairs(ctx: Context, exp: Experiment, out_dir: str) -> Labelled:
    """The offline round's labelled pairs, computed once and cached in cache/pairs.npz."""
    path = os.path.join(out_dir, "cache", "pairs.npz")
    if os.path.isfile(path):
        with np.load(path) as z:
            return Labelled(jnp.asarray(z["tokens"]), jnp.asarray(z["labels"]), jnp.asarray(z["weight"]))
    data = labelled_pairs(jax.random.PRNGKey(exp.offline.seed), ctx.log_ref, *ctx.post, ctx.prompt_len,
                          exp.offline.tries)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path + ".tmp.npz", tokens=np.asarray(data.tokens, np.uint8), labels=np.asarray(data.labels),
             weight=np.asarray(data.weight))
    os.replace(path + ".tmp.npz", path)
    return data


def _critic_path(out_dir: str) -> str:
    return os.path.join(out_dir, "cache", "critic_offline.msgpack")


def _save_critic(out_dir: str, params) -> None:
    path = _critic_path(out_dir)
    with open(path + ".tmp", "wb") as fh:
        fh.write(flax.serialization.to_bytes(params))
    os.replace(path + ".tmp", path)


def _load_critic(ctx: Context, exp: Experiment, out_dir: str):
    """The offline round's critic (None if that part did not run here)."""
    if not os.path.isfile(_critic_path(out_dir)):
        return None
    model = critic_model(exp.task, exp.critic)
    template = model.init(jax.random.PRNGKey(0), ctx.test[0][:1])
    with open(_critic_path(out_dir), "rb") as fh:
        return flax.serialization.from_bytes(template, fh.read())


def _critic_part(ctx: Context, exp: Experiment, model, params, history) -> dict:
    p_fn = learned_p_fn(ctx, exp, model, params)
    return {"train": history, "calibration": calibration(p_fn, ctx.log_ref, *ctx.test, ctx.prompt_len, ctx.vocab),
            "guided": guided_rows(ctx, exp, p_fn)}


def part_offline(ctx: Context, exp: Experiment, out_dir: str, log: Callable) -> dict:
    start = time.time()
    data = offline_pairs(ctx, exp, out_dir)
    n = data.tokens.shape[0] // 2
    log({"offline": "pairs", "prompts": n, "with_failure": float(data.weight[n:].mean()),
         "seconds": round(time.time() - start, 1)})
    model, params, history = train_critic(exp.task, exp.critic, data, ctx.prompt_len, log=log, ref_params=ctx.params)
    _save_critic(out_dir, params)
    return {"with_failure": float(data.weight[n:].mean()), **_critic_part(ctx, exp, model, params, history)}


def part_rounds(ctx: Context, exp: Experiment, out_dir: str, log: Callable) -> dict:
    data = offline_pairs(ctx, exp, out_dir)
    model, params, history = rounds.run_rounds(
        jax.random.PRNGKey(exp.rounds.seed), exp.task, exp.critic, exp.rounds, ctx.log_ref, *ctx.post,
        ctx.prompt_len, ctx.pad, exp.eval.top_k, init_data=data, ref_params=ctx.params,
        init_params=_load_critic(ctx, exp, out_dir), log=log)
    return {"rounds": history, **_critic_part(ctx, exp, model, params, history)}


def part_baseline(ctx: Context, exp: Experiment, out_dir: str, method: str, seed: int, log: Callable) -> dict:
    lr = exp.baselines.reinforce_lr if method == "reinforce" else exp.baseline.lr
    cfg = exp.baseline._replace(method=method, seed=seed, top_k=exp.eval.top_k, lr=lr)
    data = ctx.post if method == "reinforce" else offline_pairs(ctx, exp, out_dir)
    # log_ref None: the KL against the UNtruncated π_ref (a fine-tuned top-k may leave π_ref's)
    return baselines.run_baseline(cfg, ctx.model, ctx.params, None, data, *ctx.test, ctx.prompt_len, ctx.pad,
                                  log=log)


def _ensure_reference(exp: Experiment, out_dir: str, ref_dir: str | None, log: Callable) -> str:
    """π_ref's directory: `ref_dir`, or out_dir/pi_ref (pretrained here unless already there)."""
    if ref_dir is not None:
        if not os.path.isfile(os.path.join(ref_dir, "lm.json")):
            raise ConfigError(f"--ref: got {ref_dir!r}; allowed a directory written by `pretrain`")
        return ref_dir
    ref_dir = os.path.join(out_dir, "pi_ref")
    if not os.path.isfile(os.path.join(ref_dir, "lm.json")):
        if "pretrain" not in exp.run.parts:
            raise ConfigError("run.parts: got no 'pretrain' and no --ref; allowed either one")
        _, params, report = pretrain(exp.pretrain, log=lambda line: log(json.loads(line)))
        save(ref_dir, exp.pretrain, params, report)
    return ref_dir


def _check_config(exp: Experiment, out_dir: str) -> None:
    """An OUT_DIR holds one experiment: its config.json must equal this one's (parts aside)."""
    path, record = os.path.join(out_dir, "config.json"), exp.record()
    if os.path.isfile(path):
        with open(path) as fh:
            old = json.load(fh)
        if {k: v for k, v in old.items() if k != "run"} != {k: v for k, v in record.items() if k != "run"}:
            diff = sorted(f"{s}.{k}" for s in record for k in record[s] if old.get(s, {}).get(k) != record[s][k])
            raise ConfigError(f"OUT_DIR: got {out_dir!r}, written with other settings ({', '.join(diff[:4])}); "
                              "allowed a new directory or the same settings")
    _write_json(path, record)


def run(exp: Experiment, out_dir: str, ref_dir: str | None = None, log: Callable = print) -> dict:
    """Run the missing parts (see the module docstring) and write summary.json; returns it."""
    from klrl.stargraph.summary import summarize

    _check_config(exp, out_dir)
    seconds_path = os.path.join(out_dir, "parts")
    start = time.time()
    ref_dir = _ensure_reference(exp, out_dir, ref_dir, log)
    ctx = context(exp, ref_dir)
    jobs = []
    for part in exp.run.parts:
        if part == "oracle":
            jobs.append(("oracle", lambda: oracle_run(ref_dir, exp.eval.test_size, tuple(exp.eval.etas),
                                                     exp.eval.top_k, exp.eval.seed, log=log)))
        elif part == "offline":
            jobs.append(("offline", lambda: part_offline(ctx, exp, out_dir, log)))
        elif part == "rounds":
            jobs.append(("rounds", lambda: part_rounds(ctx, exp, out_dir, log)))
        elif part == "baselines":
            jobs += [(f"baselines/{m}-{s}", lambda m=m, s=s: part_baseline(ctx, exp, out_dir, m, s, log))
                     for m in exp.baselines.methods for s in exp.baselines.seeds]
    for name, job in jobs:
        path = os.path.join(seconds_path, name + ".json")
        if os.path.isfile(path):
            continue
        t0 = time.time()
        result = job()
        _write_json(path, {**result, "seconds": round(time.time() - t0, 1)})
        log({"part": name, "seconds": round(time.time() - t0, 1)})
    summary = summarize(out_dir, ref_dir)
    log({"summary": os.path.join(out_dir, "summary.json"), "seconds": round(time.time() - start, 1)})
    return summary


__all__ = ["Context", "context", "guided_rows", "learned_p_fn", "offline_pairs", "run"]
