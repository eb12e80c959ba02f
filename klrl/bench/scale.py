"""`klrl bench scale`: what sharding a population costs, on fake CPU devices.

Fixed work: one population (CartPole-v1 M-DQN, `MEMBERS` members, the reference settings of
`klrl bench train` at a shorter run) trained for `CHUNKS` timed chunks after one warm-up
chunk, through klrl.sharding's ShardedTrainer exactly as `klrl train` runs it. Each layout
runs in its own process(es), since a process's device count is fixed when JAX starts:
- 1, 2 and 4 devices in one process (`--xla_force_host_platform_device_count`);
- 2 processes x 2 devices on 127.0.0.1 (jax.distributed, gloo), against 1 x 4.
Fake CPU devices share this machine's cores: each device runs its shard's program on its own
thread, so on a 2-core VM a second device can use the core that one device's small kernels
leave idle, and beyond the core count it can only cost (padding, per-shard programs,
gathering metrics, coordinating processes). What the GPU gains needs real devices
(experiments/device/train_gpu.sh).

Output (results/bench/scale.json): rows {devices, processes, members, padded_members,
seconds_per_chunk, per_member_seconds, ratio_to_one_device, compile_seconds}.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

DEFAULT_OUT = os.path.join("results", "bench", "scale.json")
QUICK_OUT = os.path.join("results", "bench", "scale_quick.json")
MEMBERS = 6          # divides 1 and 2 devices, padded to 8 on 4
CHUNKS = 3


def _config(quick: bool):
    """(static config, hparams): `klrl bench train`'s CartPole preset, cut into chunks."""
    from klrl.bench.train import preset_config

    base, hparams = preset_config("cartpole", quick)
    steps = 2_000 if quick else 10_000
    cfg = base.replace(train={"total_steps": steps * (CHUNKS + 1), "chunk_steps": steps,
                              "learning_starts": min(1_000, steps // 2)})
    return cfg, hparams


def _child(quick: bool, out_path: str) -> None:
    """Time the sharded program in this process (and its peers, under jax.distributed)."""
    import jax
    import numpy as np

    from klrl.population import member_keys
    from klrl.sharding import ShardedTrainer
    from klrl.train import make_train

    cfg, base_hparams = _config(quick)
    trainer = make_train(cfg)
    host_keys = member_keys(list(range(MEMBERS)), [0] * MEMBERS)
    sharded = ShardedTrainer(trainer, MEMBERS)
    keys = sharded.put_members(host_keys)
    hparams = {k: sharded.put_members(np.full(MEMBERS, v, np.float32)) for k, v in base_hparams.items()}
    t0 = time.perf_counter()
    state = sharded.init(keys, hparams, (), sharded.env_start(host_keys, keys, 0))
    step = sharded.run_chunk().lower(state, hparams).compile()
    state, m = step(state, hparams)                   # warm-up chunk
    sharded.to_host(m)
    compile_s = time.perf_counter() - t0
    t = time.perf_counter()
    for _ in range(CHUNKS):
        state, m = step(state, hparams)
        sharded.to_host(m)                            # the runner gathers every chunk's metrics
    seconds = (time.perf_counter() - t) / CHUNKS
    if jax.process_index() == 0:
        with open(out_path, "w") as fh:
            json.dump({"devices": jax.device_count(), "processes": jax.process_count(), "members": MEMBERS,
                       "padded_members": sharded.padded, "seconds_per_chunk": round(seconds, 4),
                       "per_member_seconds": round(seconds / MEMBERS, 5), "compile_seconds": round(compile_s, 2),
                       "chunk_env_steps_per_member": cfg.train.chunk_steps}, fh)


def _spawn(devices: int, processes: int, quick: bool, scratch: str) -> dict:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices // processes}",
           "JAX_PLATFORMS": "cpu"}
    out = os.path.join(scratch, f"scale-{devices}-{processes}.json")
    cmd = [sys.executable, "-m", "klrl.bench.scale", "--child", out] + (["--quick"] if quick else [])
    if processes == 1:
        subprocess.run(cmd, env=env, check=True, timeout=1800)
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        procs = [subprocess.Popen(cmd + ["--coordinator", f"127.0.0.1:{port}", "--processes", str(processes),
                                         "--process-id", str(i)], env=env) for i in range(processes)]
        for p in procs:
            if p.wait(timeout=1800) != 0:
                raise RuntimeError(f"bench scale: a process of the {processes}-process run failed")
    with open(out) as fh:
        return json.load(fh)


def bench_scale(out_path: str | None = None, quick: bool = False) -> dict:
    """Run every layout (see the module docstring) and write the JSON; returns it."""
    import tempfile

    from klrl.provenance import provenance

    out_path = out_path or (QUICK_OUT if quick else DEFAULT_OUT)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for devices, processes in ((1, 1), (2, 1), (4, 1), (4, 2)):
            row = _spawn(devices, processes, quick, scratch)
            rows.append(row)
            print(f"bench scale: {devices} device(s) in {processes} process(es): {row['seconds_per_chunk']:.3f} s "
                  f"per chunk of {MEMBERS} members", file=sys.stderr, flush=True)
    cfg, hparams = _config(quick)
    one = rows[0]["seconds_per_chunk"]
    for r in rows:
        r["ratio_to_one_device"] = round(r["seconds_per_chunk"] / one, 3)
    four = next(r for r in rows if r["devices"] == 4 and r["processes"] == 1)["seconds_per_chunk"]
    result = {
        "what": "seconds per chunk of one sharded CartPole M-DQN population at fixed work, on fake CPU "
                "devices sharing this machine's cores (one thread per device)",
        "config": cfg.to_dict(), "hparams": hparams,
        "rows": rows,
        "two_processes_over_one_process_at_4_devices": round(rows[-1]["seconds_per_chunk"] / four, 3),
        "provenance": provenance(), "quick": quick,
    }
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    with open(out_path, "w") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")
    return result


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--child", required=True)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--coordinator")
    p.add_argument("--processes", type=int)
    p.add_argument("--process-id", type=int)
    a = p.parse_args(argv)
    if a.coordinator:
        from klrl.distributed import initialize

        initialize(a.coordinator, a.processes, a.process_id)
    _child(a.quick, a.child)


if __name__ == "__main__":
    main()
