"""One run over two processes (klrl.distributed) on 127.0.0.1, two fake CPU devices each.

The contract: two processes with two devices each give the metrics one process with four
gives (to float rounding); only process 0 writes; a killed process makes the other exit
with one clear `klrl: error:` line, and the run resumes with --resume.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from klrl.results import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = """
[env]
name = "CartPole-v1"
num_envs = 4
{backend}

[agent]
name = "mdqn"
hidden = [16]

[train]
total_steps = 400
chunk_steps = 200
buffer_size = 256
batch_size = 16
learning_starts = 100
target_update_every = 100
seeds = 3
replay_mode = "per-member"
{eval}

[output]
checkpoint_every = 1
"""
GYMNAX = CONFIG.format(backend="", eval="eval_episodes = 2")
POOL = CONFIG.format(backend='backend = "pool"', eval='eval_mode = "concurrent"\neval_envs = 2')


def _env(devices: int, extra=None) -> dict:
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
            **(extra or {})}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(cfg, out, *flags, kill_second_after=None):
    """Both processes of one run; returns their CompletedProcess-like (returncode, stderr)."""
    port = _free_port()
    procs = []
    for i in (0, 1):
        extra = {"KLRL_TEST_KILL_AFTER_CHUNKS": str(kill_second_after)} if i == 1 and kill_second_after else {}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "klrl.cli", "train", str(cfg), "--out", str(out), "--distributed",
             "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i),
             "--heartbeat-timeout", "10", *flags],
            cwd=ROOT, env=_env(2, extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        _, err = p.communicate(timeout=900)
        results.append((p.returncode, err))
    return results


def _values(path):
    rows = read_metrics(str(path))
    return [(r["member"], r["step"], r["metric"]) for r in rows], np.array([r["value"] for r in rows])


def test_two_processes_equal_one_process_with_four_devices(tmp_path):
    cfg = tmp_path / "g.toml"
    cfg.write_text(GYMNAX)
    one = subprocess.run([sys.executable, "-m", "klrl.cli", "train", str(cfg), "--out", str(tmp_path / "one")],
                         cwd=ROOT, env=_env(4), capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stderr[-2000:]
    (rc0, err0), (rc1, err1) = _two_processes(cfg, tmp_path / "two")
    assert (rc0, rc1) == (0, 0), (err0[-2000:], err1[-2000:])
    index, a = _values(tmp_path / "one" / "metrics.csv")
    index2, b = _values(tmp_path / "two" / "metrics.csv")
    assert index == index2
    np.testing.assert_allclose(b, a, rtol=2e-3, atol=1e-5, equal_nan=True)
    assert "chunk 2/2" in err0 and "chunk" not in err1          # process 0 reports, process 1 is quiet
    assert sorted(os.listdir(tmp_path / "two")) == sorted(os.listdir(tmp_path / "one"))


def test_distributed_flags_are_checked(tmp_path, capsys):
    from klrl import cli

    cfg = tmp_path / "g.toml"
    cfg.write_text(GYMNAX)
    for args, needle in [(["--coordinator", "127.0.0.1:1"], "--coordinator: got a value without --distributed"),
                         (["--distributed", "--num-processes", "2"], "--coordinator: got no value"),
                         (["--distributed", "--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"],
                          "--process-id: got 2; allowed 0 .. 1")]:
        assert cli.main(["train", str(cfg), "--out", str(tmp_path / "x"), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_a_killed_process_stops_the_other_clearly_and_the_run_resumes(tmp_path):
    """Host pools (one per shard, two per process): process 1 dies after chunk 1; process 0
    exits 1 with one `klrl: error:` line; both restarted with --resume finish the run."""
    cfg = tmp_path / "p.toml"
    cfg.write_text(POOL)
    (rc0, err0), (rc1, _) = _two_processes(cfg, tmp_path / "run", kill_second_after=1)
    assert rc1 == -9 and rc0 == 1, err0[-2000:]
    lines = [line for line in err0.splitlines() if line.startswith("klrl: error:")]
    assert len(lines) == 1 and "process 0 of 2" in lines[0] and "--resume" in lines[0], err0[-2000:]
    assert (tmp_path / "run" / "config.json").exists()
    (rc0, err0), (rc1, err1) = _two_processes(cfg, tmp_path / "run", "--resume")
    assert (rc0, rc1) == (0, 0), (err0[-2000:], err1[-2000:])
    assert "resumed at chunk 1/2" in err0
    index, values = _values(tmp_path / "run" / "metrics.csv")
    assert sorted({m for m, _, _ in index}) == [0, 1, 2] and {s for _, s, _ in index} == {200, 400}
    assert np.all(np.isfinite(values[[i for i, (_, _, k) in enumerate(index) if k == "loss"]]))
