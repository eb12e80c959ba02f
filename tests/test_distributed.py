"""One run over two processes (klrl.distributed) on 127.0.0.1, two fake CPU devices each.

The contract: a killed process makes the other exit with one clear `klrl: error:` line, and
the run resumes with --resume; the flags are checked. (Two processes x two devices equal one
process with four: tests/test_sharding.py, which has that run already.)
"""

from __future__ import annotations

import numpy as np
import pytest

from engine_helpers import THREE_MEMBERS, two_processes
from klrl.results import read_metrics

def _values(path):
    rows = read_metrics(str(path))
    return [(r["member"], r["step"], r["metric"]) for r in rows], np.array([r["value"] for r in rows])


def test_distributed_flags_are_checked(tmp_path, capsys):
    from klrl import cli

    cfg = tmp_path / "g.toml"
    cfg.write_text(THREE_MEMBERS["gymnax"])
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
    cfg.write_text(THREE_MEMBERS["pool"])
    (rc0, err0), (rc1, _) = two_processes(cfg, tmp_path / "run", kill_second_after=1)
    assert rc1 == -9 and rc0 == 1, err0[-2000:]
    lines = [line for line in err0.splitlines() if line.startswith("klrl: error:")]
    assert len(lines) == 1 and "process 0 of 2" in lines[0] and "--resume" in lines[0], err0[-2000:]
    assert (tmp_path / "run" / "config.json").exists()
    (rc0, err0), (rc1, err1) = two_processes(cfg, tmp_path / "run", "--resume")
    assert (rc0, rc1) == (0, 0), (err0[-2000:], err1[-2000:])
    assert "resumed at chunk 1/2" in err0
    index, values = _values(tmp_path / "run" / "metrics.csv")
    assert sorted({m for m, _, _ in index}) == [0, 1, 2] and {s for _, s, _ in index} == {200, 400}
    assert np.all(np.isfinite(values[[i for i, (_, _, k) in enumerate(index) if k == "loss"]]))


@pytest.mark.slow
def test_a_signal_to_one_process_stops_both_after_the_same_chunk(tmp_path):
    """SIGTERM to process 1 only, once the first chunk's rows are written: the processes agree
    on the chunk to stop after (klrl.distributed.any_process), both exit 75 with the checkpoint
    of that chunk, and --resume finishes the run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from klrl.errors import EXIT_STOPPED
    from klrl.stopping import PAUSE_ENV

    from engine_helpers import ROOT, _free_port, fake_devices_env

    cfg = tmp_path / "g.toml"
    cfg.write_text(THREE_MEMBERS["gymnax"])
    out, port, procs = tmp_path / "run", _free_port(), []
    for i in (0, 1):
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "klrl.cli", "train", str(cfg), "--out", str(out), "--set", "train.total_steps=1000",
             "--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i),
             "--heartbeat-timeout", "10"],
            cwd=ROOT, env=fake_devices_env(2, {PAUSE_ENV: "1"}), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    metrics, deadline = out / "metrics.csv", time.monotonic() + 600
    while not (metrics.is_file() and metrics.read_text().count("\n") > 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert [rc for rc, _ in results] == [EXIT_STOPPED] * 2, results[0][1][-2000:] + results[1][1][-2000:]
    line = results[0][1].strip().splitlines()[-1]
    assert line.startswith("klrl: stopped at chunk ") and "on a signal to another process" in line, line
    done = int(line.split("chunk ")[1].split("/")[0])
    assert 1 <= done < 5 and (out / "checkpoints" / "mdqn" / str(done)).is_dir()
    assert os.path.isfile(out / "config.json")
