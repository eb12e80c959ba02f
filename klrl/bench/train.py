"""`klrl bench train`: whole-run throughput of M-DQN populations on CartPole-v1.

Reference configuration (issue 3 §4): 10 parallel envs per member, buffer 10,000, batch 128,
one gradient update per vector step (= per 10 env steps) after 10,000 warm-up steps, hard
target update every 500 env steps, lr 2.5e-4, ε 1 → 0.05 over half the run, MLP (120, 84).
Each population size M runs the same compiled program shape (one chunk = the whole run);
compilation is timed separately (`lower().compile()`), and the run time is the best of
`repeats` executions of the compiled program on the same keys.

Output (results/bench/train.json):
  {"machine", "versions", "provenance", "config", "rows": [{"members", "seconds",
   "compile_seconds", "agent_steps_per_second", "per_member_cost_ratio", ...}]}
with per_member_cost_ratio = seconds / (members × seconds of 1 member): below 1 means a
member of the population costs less than a run on its own.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp

from klrl.provenance import provenance
from klrl.train import StaticConfig, make_train

DEFAULT_OUT = os.path.join("results", "bench", "train.json")
QUICK_OUT = os.path.join("results", "bench", "train_quick.json")   # --quick never overwrites the real result

REFERENCE = StaticConfig(
    env={"name": "CartPole-v1", "num_envs": 10},
    agent={"name": "mdqn", "hidden": (120, 84), "loss": "l2", "acting": "epsilon_greedy"},
    train={"total_steps": 50_000, "chunk_steps": 50_000, "buffer_size": 10_000, "batch_size": 128,
           "learning_starts": 10_000, "update_every": 10, "target_update_every": 500, "target_update": "hard",
           "replay_mode": "per-member", "eval_episodes": 10})
QUICK = REFERENCE.replace(train={"total_steps": 2_000, "chunk_steps": 2_000, "buffer_size": 1_000,
                                 "learning_starts": 500, "eval_episodes": 2})


def update_flops(cfg: StaticConfig, members: int) -> float:
    """FLOPs of one population gradient update (XLA's cost analysis of the compiled vmapped update).

    The whole-run program's cost analysis counts a loop body once, not per iteration, so the
    achieved rate is computed from this per-update count times the number of updates.
    """
    from klrl.agents import AGENTS, Context
    from klrl.envs import env_spec, stacked_shape
    from klrl.networks import make_network
    from klrl.replay import Batch
    from klrl.train import HPARAMS, Learner, make_optimizer, make_update

    spec = env_spec(cfg.env.name, cfg.env.backend, cfg.env.preset)
    agent = AGENTS[cfg.agent.name]
    a = cfg.agent
    net = make_network(a.torso, a.hidden, spec.num_actions, agent.num_outputs(a), a.obs_scale)
    obs = jnp.zeros((members, cfg.train.batch_size) + stacked_shape(spec), spec.obs_dtype)
    params = jax.vmap(lambda k: net.init(k, obs[0, 0]))(jax.random.split(jax.random.PRNGKey(0), members))
    learner = Learner(params, params, params, jax.vmap(make_optimizer(HPARAMS, cfg.train.max_grad_norm).init)(params),
                      jnp.zeros((members,), bool))
    vec = jnp.zeros((members, cfg.train.batch_size), jnp.float32)
    batch = Batch(obs, vec.astype(jnp.int32), vec, vec, obs, vec + 1.0)
    hp = {k: jnp.full((members,), v, jnp.float32) for k, v in HPARAMS.items()}
    update = jax.vmap(make_update(cfg, net, agent), in_axes=(0, 0, 0, None))
    cost = jax.jit(lambda lr, b, h: update(lr, b, h, Context())).lower(learner, batch, hp).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def time_population(cfg: StaticConfig, members: int, repeats: int = 1, seed: int = 0) -> dict:
    """Compile and run one population of `members`; returns the timings of one row."""
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(jnp.arange(members))
    hparams = {"learning_rate": jnp.full((members,), 2.5e-4, jnp.float32)}
    trainer = make_train(cfg)
    t0 = time.perf_counter()
    compiled = jax.jit(trainer.train).lower(keys, hparams).compile()
    compile_seconds = time.perf_counter() - t0
    runs, cpu = [], []
    load_before = os.getloadavg()[0]
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        _, metrics = compiled(keys, hparams)
        jax.block_until_ready(metrics)
        runs.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    best = min(range(repeats), key=runs.__getitem__)
    seconds = runs[best]
    t = cfg.train
    updates = max(0, t.total_steps - t.learning_starts) // t.update_every
    flops = update_flops(cfg, members)
    return {
        "members": members,
        "seconds": seconds,
        # Gradient updates only (acting, env and replay excluded): a lower bound of the work done.
        "update_gflops": flops / 1e9,
        "achieved_update_gflop_per_second": flops * updates / seconds / 1e9,
        "compile_seconds": compile_seconds,
        "agent_steps_per_second": members * t.total_steps / seconds,
        "agent_steps_per_second_per_member": t.total_steps / seconds,
        "all_run_seconds": runs,
        # CPU time of this process during the best run (all threads): less sensitive than wall
        # time to other processes sharing the cores; the 1-min load average says how shared.
        "cpu_seconds": cpu[best],
        "all_cpu_seconds": cpu,
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "final_eval_return_mean": float(jnp.mean(metrics["eval_return"][-1])),
        "diverged": int(jnp.sum(metrics["diverged"][-1])),
    }


def bench_train(out_path: str | None = None, quick: bool = False,
                members: tuple[int, ...] | None = None, repeats: int | None = None) -> dict:
    """Run the benchmark and write its JSON (default results/bench/train.json; with `quick`,
    results/bench/train_quick.json so a smoke test never replaces the committed measurement)."""
    cfg = QUICK if quick else REFERENCE
    members = members or ((1, 2) if quick else (1, 8, 32, 64))
    rows = []
    for m in members:
        # The single-member time is the denominator of every ratio: take the best of 3.
        r = repeats if repeats is not None else (3 if m == 1 else 1)
        rows.append(time_population(cfg, m, repeats=r))
        print(f"members={m:3d}  run {rows[-1]['seconds']:.2f}s  compile {rows[-1]['compile_seconds']:.1f}s  "
              f"{rows[-1]['agent_steps_per_second']:.0f} agent-steps/s  "
              f"{rows[-1]['achieved_update_gflop_per_second']:.1f} GFLOP/s (updates)", flush=True)
    single = next((row for row in rows if row["members"] == 1), None)
    if single is not None and len(rows) > 1:
        # The machine may be shared: measure the single member again after the populations and
        # keep its fastest run, so a quiet moment for the baseline can only raise the ratios.
        again = time_population(cfg, 1, repeats=2)
        runs = single["all_run_seconds"] + again["all_run_seconds"]
        cpus = single["all_cpu_seconds"] + again["all_cpu_seconds"]
        best = min(range(len(runs)), key=runs.__getitem__)
        single.update(seconds=runs[best], cpu_seconds=cpus[best], all_run_seconds=runs, all_cpu_seconds=cpus,
                      agent_steps_per_second=cfg.train.total_steps / runs[best],
                      agent_steps_per_second_per_member=cfg.train.total_steps / runs[best])
    base = next((row["seconds"] for row in rows if row["members"] == 1), None)
    base_cpu = next((row["cpu_seconds"] for row in rows if row["members"] == 1), None)
    for row in rows:
        row["per_member_cost_ratio"] = row["seconds"] / (row["members"] * base) if base else None
        row["per_member_cpu_cost_ratio"] = row["cpu_seconds"] / (row["members"] * base_cpu) if base_cpu else None
    prov = provenance()
    result = {
        "benchmark": "whole M-DQN training runs on CartPole-v1, population vmapped in one jit",
        "machine": prov["device"],
        "versions": prov["versions"],
        "provenance": prov,
        "quick": quick,
        "config": cfg.to_dict(),
        "notes": ("seconds exclude compilation; per_member_cost_ratio = seconds / (members x seconds of 1 member); "
                  "per_member_cpu_cost_ratio is the same with process CPU time (robust to a shared machine)"),
        "rows": rows,
    }
    out_path = out_path or (QUICK_OUT if quick else DEFAULT_OUT)
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {out_path}")
    return result
