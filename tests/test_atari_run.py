"""`klrl train` on the Atari backend `ale` end to end: SIGKILL and `--resume` through the CLI
(what resume means for an emulator pool, and the final evaluation on the whole pool: slow), and
a pool that fails to start in a sweep over games leaving the finished games intact (make test:
the `ale` backend trained through the runner).

experiments/atari100k.toml shrunk by `--set`: a 16-unit MiniAtar-style torso instead of the
Nature CNN (compile time), its convolutions as patches (XLA:CPU's convolution is slow in a loop), 2 members x (2 train + 1 test) envs, 400 steps in 2 chunks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import klrl.envs.atari as atari
from klrl.results import read_metrics
from klrl.runner import KILL_ENV

pytestmark = pytest.mark.skipif(bool(atari.missing_packages("ale")),
                                reason="ale-py is not installed (pip install -e '.[atari]')")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "atari100k.toml")
TINY = ["agent.name=mdqn", "agent.torso=minatar_cnn", "agent.conv=patches", "agent.hidden=[16]", "env.num_envs=2",
        "eval.envs=1",
        "train.total_steps=400", "train.chunk_steps=200", "train.buffer_size=400", "train.learning_starts=100",
        "train.batch_size=8", "train.seeds=2", "eval.final_episodes=3"]


def _klrl(*args, env=None):
    cmd = [sys.executable, "-m", "klrl.cli", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=900)


def _sets(*extra):
    return [a for s in (*TINY, *extra) for a in ("--set", s)]


@pytest.mark.slow   # pool resume is in make test once (test_cli_train, the numpy pool); ale runs below
def test_sigkill_then_resume_on_an_emulator_pool(tmp_path):
    """Killed after chunk 1 (after its checkpoint), then resumed: the learner, optimizer,
    replay and keys come back from the checkpoint, the pool is re-reset (episodes in flight
    are lost, said on stderr), the rows of chunk 1 are those of the killed run, and the run
    ends at the same step count with its final evaluation (ceil(3 / 3) = 1 episode on each of
    a member's 3 envs, raw Pong scores)."""
    out = tmp_path / "pong"
    args = ["train", CONFIG, "--out", str(out), *_sets("env.name=Pong")]
    killed = _klrl(*args, env={KILL_ENV: "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    before = (out / "metrics.csv").read_text()
    assert {r["step"] for r in read_metrics(str(out / "metrics.csv"))} == {200}

    resumed = _klrl(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed at chunk 1/2" in resumed.stderr and "the env pool was re-reset" in resumed.stderr
    assert (out / "metrics.csv").read_text().startswith(before)     # chunk 1's rows, rebuilt from the checkpoint
    assert {r["step"] for r in read_metrics(str(out / "metrics.csv"))} == {200, 400}
    final = read_metrics(str(out / "final_eval.csv"))
    episodes = [r["value"] for r in final if r["metric"] == "final_eval_episodes"]
    scores = [r["value"] for r in final if r["metric"] == "final_eval_return"]
    assert episodes == [3.0, 3.0] and all(-21 <= s <= 21 for s in scores)
    summary = json.load(open(out / "summary.json"))["summary"][0]
    assert summary["final_evaluation"]["n"] == 2 and summary["final_evaluation_min_episodes"] == 3
    assert json.load(open(out / "timing_resume.json"))["populations"][0]["resumed_at_chunk"] == 1


class _PoolThatFailsToStart(atari.AtariEnv):
    def reset(self, keys):
        raise RuntimeError("emulator pool failed to start (test)")


def _flaky_ale(game, members, envs, options):
    """The `ale` factory, except that Breakout's pool fails to start."""
    cls = _PoolThatFailsToStart if game == "Breakout" else atari.AtariEnv
    return cls(game, members, envs, backend="ale", options=options)


@pytest.fixture
def flaky_ale():
    """`ale` under the name `ale_flaky` with `_flaky_ale` as its factory (registered, not patched)."""
    from klrl.envs import register_backend, unregister_backend

    register_backend(dataclasses.replace(atari.ALE, name="ale_flaky", build=_flaky_ale))
    yield "ale_flaky"
    unregister_backend("ale_flaky")


def test_pool_that_fails_to_start_leaves_finished_games_intact(tmp_path, flaky_ale):
    """A sweep over two games whose second pool fails to start: the first game's run directory
    is complete and untouched, the sweep has no summary, and the error propagates."""
    from klrl.runner import run_experiment

    out = tmp_path / "sweep"
    overrides = [*TINY, "train.total_steps=200", "eval.final_episodes=0", f"env.backend={flaky_ale}",
                 'sweep.env.name=["Pong", "Breakout"]']
    with pytest.raises(RuntimeError, match="failed to start"):
        run_experiment(CONFIG, str(out), overrides)
    pong = out / "Pong"
    assert (pong / "summary.json").is_file() and (out / "sweep.json").is_file()
    rows = read_metrics(str(pong / "metrics.csv"))
    assert {r["step"] for r in rows} == {200} and not any(math.isnan(r["value"]) for r in rows
                                                          if r["metric"] == "loss")
    assert not (out / "summary.json").exists()
    assert not (out / "Breakout" / "metrics.csv").exists() or \
        read_metrics(str(out / "Breakout" / "metrics.csv")) == []
    np.testing.assert_equal(json.load(open(pong / "config.json"))["config"]["env"]["name"], "Pong")
