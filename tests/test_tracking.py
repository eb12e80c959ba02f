"""Tracking sinks (klrl.tracking) and stopping on a signal (klrl.stopping), without a trainer:
the chunk loop on a fake chunk program (as in test_runner_loop.py), recording sinks, real
signals sent to this process. The end-to-end runs (a CartPole population in TensorBoard and
W&B, SIGTERM and --resume) are in test_cli_train.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from klrl.config import load_experiment
from klrl.errors import EXIT_STOPPED, ConfigError
from klrl.hooks import Checkpoints
from klrl.loop import LoopRun, run_chunks
from klrl.population import build_populations
from klrl.stopping import StopOnSignal, StopSignals, resume_command
from klrl.tracking import STATE, Tracking, check_sinks, read_state, tracked_runs, tracking_group

from engine_helpers import ROOT, cli_in_process
from test_runner_loop import M, FakeCheckpointer, _pop, _step

SWEPT = """
[env]
name = "CartPole-v1"

[agent]
name = "mdqn"

[train]
seeds = 2

[sweep]
"agent.alpha" = [0.5, 0.9]
"""


class RecordingSink:
    """A sink that records what it is given."""

    def __init__(self, log):
        self.calls = log

    def open(self, runs, fresh):
        self.calls.append(("open", len(runs), fresh))
        return "recording"

    def log(self, index, step, values):
        self.calls.append(("log", index, step, values["eval_return"]))

    def flush(self):
        self.calls.append(("flush",))

    def close(self):
        self.calls.append(("close",))


def _runs(n=M):
    return [None] * n


def test_a_missing_extra_is_named_in_one_line():
    check_sinks(["csv", "tensorboard", "wandb"], found=lambda module: True)
    check_sinks(["csv"], found=lambda module: False)                       # csv needs nothing
    with pytest.raises(ConfigError) as err:
        check_sinks(["csv", "wandb"], found=lambda module: module != "wandb")
    assert str(err.value) == ("output.sinks: got 'wandb' but wandb is not installed; allowed after "
                              "pip install 'klrl[wandb]'")


def test_the_cli_refuses_a_missing_extra_before_writing(tmp_path, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text(SWEPT)
    monkeypatch.setitem(sys.modules, "tensorboard", None)        # as if the extra were not installed
    res = cli_in_process("train", cfg, "--out", tmp_path / "run", "--set", 'output.sinks=["tensorboard"]')
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert res.stderr.startswith("klrl: error: output.sinks: got 'tensorboard'") and "klrl[tensorboard]" in res.stderr
    assert not (tmp_path / "run").exists()


def test_no_tracker_is_imported_unless_chosen():
    code = ("import sys, klrl.cli, klrl.runner, klrl.tracking; "
            "print(sorted(m for m in ('wandb', 'tensorboard', 'tensorboardX') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_tracked_runs_are_the_members_with_stable_ids(tmp_path):
    exp = load_experiment(str(_write(tmp_path, SWEPT)))
    (pop,) = build_populations(exp)
    record = {"config_hash": exp.config_hash(), "provenance": {"created_utc": "2026-12-07T10:00:00+00:00"}}
    runs = tracked_runs(exp, pop, record, tracking_group(str(tmp_path / "out")))
    assert [r.id for r in runs] == [f"{exp.config_hash()[:12]}-20261207100000-m{i}" for i in range(4)]
    assert [r.id for r in tracked_runs(exp, pop, record, "x")] == [r.id for r in runs]       # stable
    assert {r.group for r in runs} == {"out"} and tracking_group("/a/out/", "Breakout") == "out/Breakout"
    assert [(r.config["seed"], r.config["alpha"], r.config["agent.alpha"]) for r in runs] == [
        (0, 0.5, 0.5), (1, 0.5, 0.5), (0, 0.9, 0.9), (1, 0.9, 0.9)]
    assert runs[3].config["env"] == "CartPole-v1" and runs[3].config["agent"] == "mdqn"
    assert runs[3].subdir == os.path.join("tensorboard", "mdqn", "m3") and runs[3].name == "mdqn m3 seed=1 alpha=0.9"


def _write(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_tracking_sends_each_chunk_once_across_a_kill_and_resume(tmp_path):
    out = str(tmp_path)
    first = []
    run_chunks(_step, None, LoopRun(_pop(), 3, 10, 0, 0), [Tracking(out, [RecordingSink(first)], _runs())])
    assert first[0] == ("open", M, True) and first[-1] == ("close",)
    assert [c[2] for c in first if c[0] == "log"] == [10] * M + [20] * M + [30] * M
    assert read_state(out) == {"mdqn": 3}
    # killed after chunk 3 with a checkpoint at chunk 1: the resumed loop recomputes 2 and 3
    again = []
    run_chunks(_step, None, LoopRun(_pop(), 4, 10, 1, 1), [Tracking(out, [RecordingSink(again)], _runs())])
    assert again[0] == ("open", M, False)
    assert [(c[1], c[2]) for c in again if c[0] == "log"] == [(i, 40) for i in range(M)]
    assert json.load(open(tmp_path / STATE)) == {"chunks_sent": {"mdqn": 4}}
    # nothing left to send: the sinks are not even opened
    none = []
    run_chunks(_step, None, LoopRun(_pop(), 4, 10, 2, 2), [Tracking(out, [RecordingSink(none)], _runs())])
    assert none == []


def test_resume_command_adds_resume_once():
    assert resume_command(["train", "a b.toml", "--out", "o", "--set", 'output.sinks=["wandb"]']) == (
        "klrl train 'a b.toml' --out o --set 'output.sinks=[\"wandb\"]' --resume")
    assert resume_command(["train", "c.toml", "--out", "o", "--resume"]) == "klrl train c.toml --out o --resume"


def _wait(predicate, seconds=10.0):
    end = time.monotonic() + seconds
    while not predicate() and time.monotonic() < end:
        time.sleep(0.01)
    return predicate()


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signal handlers can only be set in the main thread")
def test_first_signal_asks_to_stop_second_exits_and_handlers_are_restored(capsys):
    exits = []
    before = signal.getsignal(signal.SIGUSR1)
    with StopSignals("klrl train c.toml --out o --resume", exit=exits.append) as stop:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert _wait(lambda: stop.requested == "SIGUSR1") and exits == []
        os.kill(os.getpid(), signal.SIGTERM)
        assert _wait(lambda: exits == [EXIT_STOPPED])
        assert str(stop.stopped("mdqn", 2, 4)) == ("stopped at chunk 2/4 of mdqn on SIGUSR1; continue with: "
                                                   "klrl train c.toml --out o --resume")
    assert signal.getsignal(signal.SIGUSR1) is before
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("klrl: got SIGUSR1: stopping after the chunk in flight")
    assert err[1] == ("klrl: got a second signal (SIGTERM): exiting at once; the rows and checkpoints written so far "
                      "are kept; continue with: klrl train c.toml --out o --resume")


def test_a_stop_ends_the_loop_after_the_chunk_with_a_checkpoint():
    stop = StopSignals("klrl ...")

    def step(state, hparams):                     # a signal arrives during chunk 2
        if state == 1:
            stop.requested = "SIGTERM"
        return _step(state, hparams)

    ckpt = FakeCheckpointer()
    run = run_chunks(step, None, LoopRun(_pop(), 5, 10, 0, 0),
                     [StopOnSignal(stop), Checkpoints(ckpt, 4, lambda s: s, {})])
    assert run.stop and run.done == 2 and [d for d, *_ in ckpt.saved] == [2] and ckpt.closed == 1
    early = run_chunks(_step, None, LoopRun(_pop(), 5, 10, 0, 0), [StopOnSignal(stop)])
    assert early.stop and early.ran == 0          # asked before the first chunk: none is run
    agreed = run_chunks(_step, None, LoopRun(_pop(), 5, 10, 0, 0),
                        [StopOnSignal(StopSignals("klrl ..."), agree=lambda mine: True)])
    assert agreed.stop and agreed.ran == 0        # another process's signal stops this one too
    assert np.all(run.history["step"][-1] == 20)


class FailingSink(RecordingSink):
    """Fails on its second chunk (as W&B does once its service process is killed)."""

    def log(self, index, step, values):
        if step == 20:
            raise ConnectionResetError("Connection lost")
        super().log(index, step, values)


def test_a_failing_sink_is_dropped_with_one_line_and_training_goes_on(tmp_path, capsys):
    failing, fine = [], []
    ckpt = FakeCheckpointer()
    run = run_chunks(_step, None, LoopRun(_pop(), 3, 10, 0, 0),
                     [Tracking(str(tmp_path), [FailingSink(failing), RecordingSink(fine)], _runs()),
                      Checkpoints(ckpt, 1, lambda s: s, {})])
    assert run.done == 3 and [d for d, *_ in ckpt.saved] == [1, 2, 3]
    assert [c[2] for c in failing if c[0] == "log"] == [10] * M and ("close",) not in failing
    assert [c[2] for c in fine if c[0] == "log"] == [10] * M + [20] * M + [30] * M and fine[-1] == ("close",)
    err = [line for line in capsys.readouterr().err.splitlines() if "failed" in line]
    assert err == ["[mdqn] FailingSink failed (ConnectionResetError: Connection lost); no more rows go to it, "
                   "training continues (metrics.csv has every row)"]
