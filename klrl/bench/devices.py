"""`klrl bench train --devices 1,2`: one preset's populations on 1..N host devices.

JAX fixes its device count when it starts, so each device count runs in a subprocess of its
own (`python -m klrl.bench.devices --child N ...`) whose XLA_FLAGS carry
`--xla_force_host_platform_device_count=N` (the user's other flags are kept; on GPU/TPU the
flag has no effect and N must not exceed the real devices). A child shards each population
over its N devices as `klrl train` does (klrl.sharding.ShardedTrainer: S shards of
ceil(M / S) members, the trainer's own program per shard) and prints one JSON row per size.

Rounds alternate the order of the device counts (1, 2, 2, 1, ...), so a machine whose speed
drifts biases no count; a row's `seconds` is the median over the rounds of each round's best
run (each child compiles once and runs `repeats` times). `speedup_vs_1_device` = the
1-device row's seconds over this row's, same members.

With `shard_alone` (`--shard-alone`), each round also times, for every count N > 1, ONE shard
alone: a child on one host device whose process is pinned (sched_setaffinity) to its share of
the cores, C // N of C, running ceil(M / N) members. That is what each of the N shards would
take if the shards shared nothing; `sharding_efficiency` = its median seconds over the N-device
row's, and the speed-up = efficiency × t(M members, 1 device, C cores) / t(shard alone). Near
1, sharding costs nothing and the speed-up is bounded by how well the one-device program already
uses all the cores; well below 1, the shards get in each other's way.

With `same_process` (`--same-process`), ONE subprocess on max(N) host devices compiles every
(count, size) first and then times them in the alternating rounds, N devices being its first N
(a one-device program times the same in a process of two host devices as in a process of one;
checked in docs/performance.md). The counts then share the process's state and the machine's drift within a round, which
separate processes do not. Not with `shard_alone` (a shard alone needs its own pinned process).
Output: results/bench/train_<preset>_devices_same_process.json, the same rows.

Output (results/bench/train_<preset>_devices.json): header, "env", "config", "hparams",
"devices", "protocol", "rounds", "rows": [{"devices", "members", "seconds", "all_round_seconds",
"compile_seconds", "agent_steps_per_second", "speedup_vs_1_device"}, plus "shard_alone_seconds",
"shard_alone_all_round_seconds", "shard_alone_cores", "shard_alone_members",
"sharding_efficiency" on N > 1 rows when measured].
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

DEVICE_FLAG = "--xla_force_host_platform_device_count"


def child_env(devices: int, environ: dict | None = None) -> dict:
    """The environment of a child on `devices` host devices: XLA_FLAGS with the device-count
    flag replaced (any other flag the user set is kept)."""
    env = dict(os.environ if environ is None else environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_FLAG)]
    env["XLA_FLAGS"] = " ".join(flags + [f"{DEVICE_FLAG}={int(devices)}"])
    return env


def pinned_cpus(cores: int, allowed: set[int] | list[int]) -> list[int]:
    """The first `cores` of the `allowed` CPUs (sorted); a count outside 1..len(allowed) is a
    ConfigError."""
    from klrl.errors import ConfigError

    allowed = sorted(allowed)
    if not 1 <= cores <= len(allowed):
        raise ConfigError(f"--cores: got {cores}; allowed 1..{len(allowed)} (the CPUs this process may use)")
    return allowed[:cores]


def pin_cores(cores: int) -> None:
    """Restrict this process (and the threads it starts later: call before JAX starts) to its
    first `cores` allowed CPUs."""
    from klrl.errors import ConfigError

    if not hasattr(os, "sched_setaffinity"):
        raise ConfigError("--cores: got a pinning request; allowed only where os.sched_setaffinity exists (Linux)")
    os.sched_setaffinity(0, pinned_cpus(cores, os.sched_getaffinity(0)))


def shard_alone_plan(devices: int, members: tuple[int, ...], cpus: int) -> tuple[int, tuple[int, ...]]:
    """(cores, members) of one of `devices` shards alone: its share of `cpus` (at least 1) and
    the padded shard size ceil(M / devices) of each population (klrl.sharding's layout)."""
    return max(1, cpus // devices), tuple(sorted({-(-m // devices) for m in members}))


def round_orders(devices: tuple[int, ...], rounds: int) -> list[tuple[int, ...]]:
    """The order of the device counts in each round: as given, then reversed, alternating."""
    return [tuple(devices) if r % 2 == 0 else tuple(reversed(devices)) for r in range(rounds)]


def _population_run(cfg, hparams: dict, members: int, mesh=None):
    """(run, compile seconds) of one population sharded over `mesh` (default: every device) as
    `klrl train` shards it, one chunk = the whole run; `run()` times one run from a fresh init
    (the init is not timed)."""
    import jax

    from klrl.bench.harness import fold_in_keys, population_hparams, timed
    from klrl.sharding import ShardedTrainer
    from klrl.train import make_train

    sharded = ShardedTrainer(make_train(cfg), members, mesh=mesh)
    host_keys = jax.device_get(fold_in_keys(members))
    keys = sharded.put_members(host_keys)
    hp = {k: sharded.put_members(v) for k, v in population_hparams(hparams, members).items()}
    start = lambda: sharded.init(keys, hp, sharded.put_replicated(()), sharded.env_start(host_keys, keys, 0))  # noqa: E731
    state = start()
    t0 = time.perf_counter()
    compiled = sharded.run_chunk().lower(state, hp).compile()
    compile_s = time.perf_counter() - t0

    def run() -> float:
        fresh = jax.block_until_ready(start())
        return timed(lambda: jax.block_until_ready(compiled(fresh, hp)))[1]
    return run, compile_s


def _row(devices: int, members: int, runs: list[float], compile_s: float, total_steps: int) -> dict:
    return {"devices": devices, "members": members, "seconds": min(runs), "all_run_seconds": runs,
            "compile_seconds": compile_s, "total_steps": total_steps}


def sharded_rows(env: str, members: tuple[int, ...], quick: bool, total_steps: int | None,
                 repeats: int) -> list[dict]:
    """In this process, on every device it has: each population as `klrl train` shards it;
    compile once, then `repeats` timed runs."""
    import jax

    from klrl.bench.train import preset_config

    cfg, hparams = preset_config(env, quick, total_steps)
    rows = []
    for m in members:
        run, compile_s = _population_run(cfg, hparams, m)
        rows.append(_row(jax.device_count(), m, [run() for _ in range(repeats)], compile_s, cfg.train.total_steps))
    return rows


def same_process_rows(env: str, devices: tuple[int, ...], members: tuple[int, ...], quick: bool,
                      total_steps: int | None, repeats: int, rounds: int) -> list[list[dict]]:
    """In this process (at least max(devices) devices): every population on the first N devices
    for each count N, all compiled first, then timed in `rounds` alternating rounds. Returns one
    list of rows per (round, count), in the order run, each row with its "round"."""
    import jax

    from klrl.bench.train import preset_config
    from klrl.sharding import population_mesh

    if jax.device_count() < max(devices):
        raise RuntimeError(f"bench devices --same-process: {max(devices)} devices asked, {jax.device_count()} here")
    cfg, hparams = preset_config(env, quick, total_steps)
    programs = {(n, m): _population_run(cfg, hparams, m, population_mesh(jax.devices()[:n]))
                for n in devices for m in members}
    done = []
    for r, order in enumerate(round_orders(tuple(devices), rounds)):
        for n in order:
            done.append([{**_row(n, m, [programs[n, m][0]() for _ in range(repeats)], programs[n, m][1],
                                 cfg.train.total_steps), "round": r} for m in members])
    return done


def _child_rows(devices: int, env: str, members: tuple[int, ...], quick: bool, total_steps: int | None,
                repeats: int, extra: list[str]) -> list[dict]:
    """The rows a `--child` subprocess on `devices` host devices prints (raises with its stderr
    on failure); `extra`: its further options."""
    argv = [sys.executable, "-m", "klrl.bench.devices", "--child", "--env", env, "--repeats", str(repeats),
            "--members", ",".join(map(str, members))] + (["--quick"] if quick else []) + \
        (["--total-steps", str(total_steps)] if total_steps else []) + extra
    done = subprocess.run(argv, env=child_env(devices), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench devices child ({devices} devices) failed: {done.stderr.strip()[-2000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def run_child(devices: int, env: str, members: tuple[int, ...], quick: bool, total_steps: int | None,
              repeats: int, cores: int | None = None) -> list[dict]:
    """One subprocess on `devices` host devices (pinned to its first `cores` CPUs when given);
    its rows."""
    rows = _child_rows(devices, env, members, quick, total_steps, repeats, ["--cores", str(cores)] if cores else [])
    if any(r["devices"] != devices for r in rows):
        raise RuntimeError(f"bench devices: asked for {devices} devices, the child had {rows[0]['devices']}")
    return rows


def run_same_process(devices: tuple[int, ...], env: str, members: tuple[int, ...], quick: bool,
                     total_steps: int | None, repeats: int, rounds: int) -> list[list[dict]]:
    """One subprocess on max(devices) host devices timing every count (`same_process_rows`);
    its rows grouped per (round, count) in the order run."""
    extra = ["--same-process", "--devices", ",".join(map(str, devices)), "--rounds", str(rounds)]
    groups: dict[tuple[int, int], list[dict]] = {}
    for row in _child_rows(max(devices), env, members, quick, total_steps, repeats, extra):
        groups.setdefault((row["round"], row["devices"]), []).append(row)
    return list(groups.values())


def combine(rounds: list[list[dict]], alone: list[tuple[int, int, list[dict]]] = ()) -> list[dict]:
    """Rows of every round -> one row per (devices, members): the median of the rounds' best
    seconds, and the speed-up over the 1-device row of the same members. `alone` holds
    (devices, cores, rows) of shard-alone children (see the module docstring)."""
    by_key: dict[tuple[int, int], list[dict]] = {}
    for rows in rounds:
        for r in rows:
            by_key.setdefault((r["devices"], r["members"]), []).append(r)
    out = []
    for (d, m), rs in sorted(by_key.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        secs = [r["seconds"] for r in rs]
        med = statistics.median(secs)
        out.append({"devices": d, "members": m, "seconds": med, "all_round_seconds": secs,
                    "compile_seconds": statistics.median(r["compile_seconds"] for r in rs),
                    "agent_steps_per_second": m * rs[0]["total_steps"] / med, "total_steps": rs[0]["total_steps"]})
    one = {r["members"]: r["seconds"] for r in out if r["devices"] == 1}
    for r in out:
        r["speedup_vs_1_device"] = one[r["members"]] / r["seconds"] if r["members"] in one else None
        shard = -(-r["members"] // r["devices"])
        secs = [x["seconds"] for d, _, rows in alone if d == r["devices"] for x in rows if x["members"] == shard]
        if r["devices"] > 1 and secs:
            r.update(shard_alone_seconds=statistics.median(secs), shard_alone_all_round_seconds=secs,
                     shard_alone_members=shard, shard_alone_cores=next(c for d, c, _ in alone if d == r["devices"]),
                     sharding_efficiency=statistics.median(secs) / r["seconds"])
    return out


def bench_devices(env: str = "purejaxrl", devices: tuple[int, ...] = (1, 2), members: tuple[int, ...] | None = None,
                  quick: bool = False, total_steps: int | None = None, rounds: int = 2, repeats: int = 1,
                  out_path: str | None = None, run=run_child, shard_alone: bool = False,
                  cpus: int | None = None, same_process: bool = False, run_same=run_same_process) -> dict:
    """Every device count in `rounds` alternating rounds (each a subprocess per count, see
    `run_child`, injectable), combined and written to `out_path` (default
    results/bench/train_<env>_devices[_quick].json), rewritten after every round. With
    `shard_alone`, each count N > 1 is followed by one shard alone (module docstring) on its
    share of `cpus` (default: the CPUs this process may use). With `same_process`, one
    subprocess times every count (`run_same`, injectable; default out
    train_<env>_devices_same_process[_quick].json)."""
    from klrl.bench.harness import header, write_json
    from klrl.bench.train import PRESETS, preset_config
    from klrl.errors import ConfigError

    if not devices or devices[0] != 1:      # the speed-ups are relative to one device
        raise ConfigError(f"--devices: got {','.join(map(str, devices or ()))!r}; allowed comma-separated counts "
                          ">= 1 starting with 1, e.g. 1,2")
    if same_process and shard_alone:
        raise ConfigError("--same-process: got it with --shard-alone; allowed one of the two (a shard alone needs a "
                          "process of its own, pinned to its cores)")
    cfg, hparams = preset_config(env, quick, total_steps)   # a bad preset or length fails first
    members = tuple(sorted(set(members or ((1, 2) if quick else PRESETS[env].members))))
    name = f"train_{env}_devices{'_same_process' if same_process else ''}{'_quick' if quick else ''}.json"
    out_path = out_path or os.path.join("results", "bench", name)
    how = "all in one process, the counts alternating" if same_process else "one subprocess per count"
    result = {**header(f"{PRESETS[env].benchmark}; on 1..N host devices, {how}", quick),
              "env": env, "config": cfg.to_dict(), "hparams": hparams, "devices": list(devices),
              "protocol": "same-process" if same_process else "subprocess-per-count",
              "rounds": rounds, "repeats": repeats, "rows": []}
    if same_process:
        done = run_same(tuple(devices), env, members, quick, total_steps, repeats, rounds)
        for rows in done:
            print(f"{env} round {rows[0]['round']} devices={rows[0]['devices']} " +
                  "  ".join(f"M={r['members']}: {r['seconds']:.2f}s" for r in rows), flush=True)
        result["rows"] = combine(done)
        write_json(out_path, result)
        print(f"wrote {out_path}")
        return result
    if cpus is None:
        from klrl.placement import host_cores
        cpus = host_cores()
    done: list[list[dict]] = []
    alone: list[tuple[int, int, list[dict]]] = []
    for order in round_orders(tuple(devices), rounds):
        for d in order:
            done.append(run(d, env, members, quick, total_steps, repeats))
            print(f"{env} devices={d} " + "  ".join(f"M={r['members']}: {r['seconds']:.2f}s" for r in done[-1]),
                  flush=True)
            if shard_alone and d > 1:
                cores, shard = shard_alone_plan(d, members, cpus)
                alone.append((d, cores, run(1, env, shard, quick, total_steps, repeats, cores=cores)))
                print(f"{env} one of {d} shards alone ({cores} core(s)) " +
                      "  ".join(f"M={r['members']}: {r['seconds']:.2f}s" for r in alone[-1][2]), flush=True)
        result["rows"] = combine(done, alone)
        write_json(out_path, result)
    print(f"wrote {out_path}")
    return result


def main(argv: list[str] | None = None) -> int:
    """`python -m klrl.bench.devices`: the parent (every count) or, with --child, one count."""
    from klrl.bench import parse_members
    from klrl.errors import ConfigError

    p = argparse.ArgumentParser(prog="python -m klrl.bench.devices", description=__doc__.splitlines()[0])
    p.add_argument("--env", default="purejaxrl", help="the bench train preset (default purejaxrl)")
    p.add_argument("--devices", default="1,2", metavar="N,N,...", help="host device counts (default 1,2)")
    p.add_argument("--members", default=None, metavar="M,M,...", help="population sizes (default: the preset's)")
    p.add_argument("--total-steps", type=int, default=None, help="env steps per member (default: the preset's)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per child, best kept (default 1)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    p.add_argument("--shard-alone", action="store_true",
                   help="also time one shard alone per count N > 1 (one device, cores/N cores, ceil(M/N) members)")
    p.add_argument("--same-process", action="store_true",
                   help="time every count in ONE process on max(N) host devices, alternating (N devices: the first N)")
    p.add_argument("--out", default=None, help="output JSON path")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cores", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    try:
        members = parse_members(a.members)
        if a.cores is not None:
            pin_cores(a.cores)
        devices = parse_members(a.devices, "--devices")
        if a.child:
            rows = (sum(same_process_rows(a.env, devices, members, a.quick, a.total_steps, a.repeats, a.rounds), [])
                    if a.same_process else sharded_rows(a.env, members, a.quick, a.total_steps, a.repeats))
            for row in rows:
                print(json.dumps(row), flush=True)
            return 0
        bench_devices(a.env, devices, members, a.quick, a.total_steps, a.rounds, a.repeats, a.out,
                      shard_alone=a.shard_alone, same_process=a.same_process)
    except ConfigError as err:
        print(f"klrl: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
