"""`klrl bench train` on 1..N host devices (klrl.bench.devices) and the purejaxrl preset: the
child's XLA_FLAGS, the alternating rounds, the combined rows and the JSON on fake timings
(nothing compiled), the option errors."""

import json
import os
import subprocess
import sys

import pytest

from klrl.bench import devices as bd
from klrl.bench.train import preset_config


def test_child_env_sets_the_device_count_and_keeps_other_flags():
    env = bd.child_env(2, {"XLA_FLAGS": "--xla_cpu_foo=1 --xla_force_host_platform_device_count=8", "A": "b"})
    assert env["XLA_FLAGS"].split() == ["--xla_cpu_foo=1", "--xla_force_host_platform_device_count=2"]
    assert env["A"] == "b"
    assert bd.child_env(1, {})["XLA_FLAGS"] == "--xla_force_host_platform_device_count=1"


def test_rounds_alternate_the_order():
    assert bd.round_orders((1, 2, 4), 3) == [(1, 2, 4), (4, 2, 1), (1, 2, 4)]


def _fake_run(calls):
    def run(devices, env, members, quick, total_steps, repeats, cores=None):
        calls.append(devices if cores is None else (devices, cores, members))
        k = len(calls)
        return [{"devices": devices, "members": m, "seconds": m / devices + 0.1 * k, "compile_seconds": 1.0,
                 "total_steps": 1000} for m in members]
    return run


def test_bench_devices_writes_medians_and_speedups(tmp_path):
    calls, out = [], tmp_path / "d.json"
    r = bd.bench_devices("purejaxrl", (1, 2), (1, 8), quick=True, rounds=2, out_path=str(out), run=_fake_run(calls))
    assert calls == [1, 2, 2, 1]
    saved = json.loads(out.read_text())
    assert saved["rows"] == r["rows"] and saved["env"] == "purejaxrl" and saved["devices"] == [1, 2]
    row = {(x["devices"], x["members"]): x for x in r["rows"]}
    assert row[(1, 8)]["all_round_seconds"] == pytest.approx([8.1, 8.4])
    assert row[(1, 8)]["seconds"] == pytest.approx(8.25)
    assert row[(2, 8)]["seconds"] == pytest.approx(4.25)            # rounds 2 and 3: 4.2, 4.3
    assert row[(2, 8)]["speedup_vs_1_device"] == pytest.approx(8.25 / 4.25)
    assert row[(1, 1)]["speedup_vs_1_device"] == 1.0
    assert row[(2, 8)]["agent_steps_per_second"] == pytest.approx(8 * 1000 / 4.25)


def test_shard_alone_rows_give_the_sharding_efficiency(tmp_path):
    calls = []
    r = bd.bench_devices("purejaxrl", (1, 2, 4), (8,), quick=True, rounds=1, out_path=str(tmp_path / "d.json"),
                         run=_fake_run(calls), shard_alone=True, cpus=4)
    # each count N > 1 is followed by one device on 4 // N cores running ceil(8 / N) members
    assert calls == [1, 2, (1, 2, (4,)), 4, (1, 1, (2,))]
    row = {x["devices"]: x for x in r["rows"]}
    assert "sharding_efficiency" not in row[1]
    assert (row[2]["shard_alone_members"], row[2]["shard_alone_cores"]) == (4, 2)
    assert row[2]["shard_alone_seconds"] == pytest.approx(4 + 0.3)      # third call: 4 members / 1 device + 0.3
    assert row[2]["sharding_efficiency"] == pytest.approx(4.3 / row[2]["seconds"])
    assert row[4]["shard_alone_seconds"] == pytest.approx(2 + 0.5)
    assert row[4]["sharding_efficiency"] == pytest.approx(2.5 / row[4]["seconds"])


def test_shard_alone_plan_pads_like_the_sharded_population():
    assert bd.shard_alone_plan(2, (1, 8, 9), cpus=2) == (1, (1, 4, 5))
    assert bd.shard_alone_plan(4, (2,), cpus=2) == (1, (1,))            # never fewer than one core


def test_pinned_cpus_takes_the_first_allowed_and_refuses_too_many():
    from klrl.errors import ConfigError

    assert bd.pinned_cpus(2, {3, 1, 2}) == [1, 2]
    for bad in (0, 4):
        with pytest.raises(ConfigError, match=rf"--cores: got {bad}; allowed 1\.\.3"):
            bd.pinned_cpus(bad, {3, 1, 2})


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="pinning needs Linux's sched_setaffinity")
def test_pin_cores_leaves_a_child_process_one_cpu():
    code = "import os; from klrl.bench.devices import pin_cores; pin_cores(1); print(len(os.sched_getaffinity(0)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "1"


def test_purejaxrl_preset_is_the_cartpole_reference_as_dqn():
    cfg, hp = preset_config("purejaxrl")
    t = cfg.train
    assert (cfg.agent.name, cfg.agent.loss, cfg.agent.hidden, cfg.env.num_envs) == ("dqn", "l2", (120, 84), 10)
    assert (t.total_steps, t.chunk_steps, t.buffer_size, t.batch_size, t.learning_starts, t.update_every,
            t.target_update_every, t.target_update, t.max_grad_norm) == (
        100_000, 100_000, 10_000, 128, 10_000, 10, 500, "hard", 0.0)
    assert cfg.eval.episodes == 1 and hp == {"learning_rate": 2.5e-4}


def test_same_process_rows_are_combined_per_count_and_written(tmp_path):
    seen = []

    def run_same(devices, env, members, quick, total_steps, repeats, rounds):
        seen.append((devices, members, rounds))
        secs = {(0, 1): 8.0, (0, 2): 4.0, (1, 2): 5.0, (1, 1): 9.0}      # (round, count) -> seconds
        return [[{"devices": n, "members": m, "seconds": secs[r, n], "compile_seconds": 1.0, "total_steps": 1000,
                  "round": r} for m in members] for r, order in enumerate(bd.round_orders(devices, rounds))
                for n in order]

    out = tmp_path / "s.json"
    r = bd.bench_devices("purejaxrl", (1, 2), (8,), quick=True, rounds=2, out_path=str(out), same_process=True,
                         run=lambda *a, **k: pytest.fail("no subprocess per count"), run_same=run_same)
    assert seen == [((1, 2), (8,), 2)]
    row = {x["devices"]: x for x in r["rows"]}
    assert row[1]["all_round_seconds"] == [8.0, 9.0] and row[2]["all_round_seconds"] == [4.0, 5.0]
    assert row[2]["speedup_vs_1_device"] == pytest.approx(8.5 / 4.5)
    saved = json.loads(out.read_text())
    assert saved["protocol"] == "same-process" and saved["rows"] == r["rows"]


def test_same_process_refuses_shard_alone_before_any_work(tmp_path, capsys):
    out = tmp_path / "x.json"
    assert bd.main(["--same-process", "--shard-alone", "--quick", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--same-process" in err and not out.exists()


@pytest.mark.parametrize("argv", [["--devices", "2,4"], ["--devices", "0"], ["--env", "pong"]])
def test_bad_options_fail_before_any_work(tmp_path, argv, capsys):
    out = tmp_path / "x.json"
    assert bd.main(argv + ["--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("klrl: error: ") and not out.exists()


# two subprocesses, each compiling on its own device count: ~1 min quiet, several under load
@pytest.mark.slow
def test_quick_run_on_one_and_two_host_devices(tmp_path):
    out = tmp_path / "d.json"
    r = bd.bench_devices("purejaxrl", (1, 2), (2,), quick=True, rounds=1, out_path=str(out))
    assert [(x["devices"], x["members"]) for x in r["rows"]] == [(1, 2), (2, 2)]
    assert all(x["seconds"] > 0 and x["compile_seconds"] > 0 for x in r["rows"])
    assert r["rows"][0]["speedup_vs_1_device"] == 1.0
    assert json.loads(out.read_text())["rows"] == r["rows"]


# one subprocess on two host devices compiling both counts: ~20 s quiet
@pytest.mark.slow
def test_quick_same_process_run_times_both_counts(tmp_path):
    out = tmp_path / "s.json"
    r = bd.bench_devices("purejaxrl", (1, 2), (2,), quick=True, rounds=2, out_path=str(out), same_process=True)
    assert [(x["devices"], x["members"], len(x["all_round_seconds"])) for x in r["rows"]] == [(1, 2, 2), (2, 2, 2)]
    assert all(x["seconds"] > 0 and x["compile_seconds"] > 0 for x in r["rows"])
    assert json.loads(out.read_text())["protocol"] == "same-process"


@pytest.mark.parametrize("argv,needle", [(["bench", "atari", "--devices", "1,2"], "allowed only with bench train"),
                                         (["bench", "train", "--devices", "x"], "--devices: got 'x'")])
def test_cli_devices_option_is_checked_before_any_work(argv, needle, capsys):
    from klrl.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err


def test_cli_devices_must_start_at_one(capsys):
    from klrl.cli import main

    assert main(["bench", "train", "--env", "purejaxrl", "--devices", "2,4"]) == 2
    assert "starting with 1" in capsys.readouterr().err
