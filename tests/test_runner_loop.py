"""The chunk loop (klrl.loop) and the runner's hooks (klrl.hooks), without a trainer: a fake
chunk program on numpy arrays, recording hooks, a fake writer and checkpointer."""

from __future__ import annotations

import numpy as np
import pytest

from klrl.hooks import Checkpoints, DivergenceLog, KillAfterChunks, MetricsRows, ProgressLog, fmt_eta, nanmedian
from klrl.loop import Hook, LoopRun, append_chunk, run_chunks
from klrl.population import Member, Population
from klrl.results import format_chunk

M = 3


def _pop():
    members = tuple(Member(i, i, 0, "mdqn", {"alpha": 0.5}) for i in range(M))
    return Population("mdqn", members, {"alpha": np.full(M, 0.5)}, np.zeros((M, 2), np.uint32), ("alpha",))


def _step(state, hparams):
    """A fake chunk program: state counts chunks; member 1 diverges at chunk 2."""
    c = state + 1
    metrics = {"step": np.full(M, 10 * c), "eval_return": np.array([c, np.nan, 2.0 * c]),
               "train_return": np.full(M, float(c)), "loss": np.array([0.5, np.inf if c >= 2 else 1.0, 0.25]),
               "diverged": np.array([0.0, float(c >= 2), 0.0])}
    return c, metrics


class Recorder(Hook):
    def __init__(self, calls, name):
        self.calls, self.name = calls, name

    def on_start(self, run):
        self.calls.append((self.name, "start", run.done))

    def on_chunk(self, run, metrics):
        self.calls.append((self.name, "chunk", run.done, run.state, len(run.history["step"])))

    def on_end(self, run):
        self.calls.append((self.name, "end", run.done))


class FakeWriter:
    def __init__(self):
        self.text = ""

    def append(self, text):
        self.text += text


class FakeCheckpointer:
    def __init__(self):
        self.saved, self.closed = [], 0

    def save(self, done, state, history, meta):
        self.saved.append((done, state, {k: v.shape for k, v in history.items()}, meta))

    def close(self):
        self.closed += 1


def test_hooks_run_in_order_after_every_chunk():
    calls = []
    run = run_chunks(_step, None, LoopRun(_pop(), 4, 10, 0, 0), [Recorder(calls, "a"), Recorder(calls, "b")])
    assert calls[:2] == [("a", "start", 0), ("b", "start", 0)]
    assert calls[2:4] == [("a", "chunk", 1, 1, 1), ("b", "chunk", 1, 1, 1)]
    assert calls[-4:] == [("a", "chunk", 4, 4, 4), ("b", "chunk", 4, 4, 4), ("a", "end", 4), ("b", "end", 4)]
    assert (run.done, run.ran, run.steps_done, run.state) == (4, 4, 40, 4)
    np.testing.assert_array_equal(run.history["step"], [[10] * M, [20] * M, [30] * M, [40] * M])


def test_a_resumed_loop_continues_from_the_restored_chunk_and_history():
    _, first = _step(0, None)
    calls = []
    restored = LoopRun(_pop(), 3, 10, 1, 1, append_chunk({}, first))
    run = run_chunks(_step, None, restored, [Recorder(calls, "a")], to_host=lambda m: {**m, "host": np.ones(M)})
    assert calls[0] == ("a", "start", 1) and [c[2] for c in calls[1:-1]] == [2, 3]
    assert (run.done, run.ran, run.steps_done) == (3, 2, 20)
    assert run.history["step"].shape == (3, M) and run.history["host"].shape == (2, M)   # to_host's metrics
    finished = run_chunks(_step, None, LoopRun(_pop(), 3, 10, 3, 3), [Recorder(calls := [], "a")])
    assert calls == [("a", "start", 3), ("a", "end", 3)] and finished.ran == 0     # nothing left: no chunk


def test_metrics_rows_divergence_and_progress(capsys):
    pop, writer = _pop(), FakeWriter()
    run = run_chunks(_step, None, LoopRun(pop, 3, 10, 0, 0), [MetricsRows(writer), DivergenceLog(), ProgressLog(30)])
    want = "".join(format_chunk(pop.members, pop.columns, _step(c, None)[1]) for c in range(3))
    assert writer.text == want
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("[mdqn] chunk 1/3 step 10/30 | ")
    assert err[1] == ("[mdqn] DIVERGED: member 1 (agent=mdqn, seed=1, alpha=0.5): non-finite loss by step 20; "
                      "its parameters are frozen, the other members continue")      # once, when it turns on
    assert err[2].startswith("[mdqn] chunk 2/3 step 20/30 | ") and "eval 3.0 train 2.0 (medians over 3)" in err[2]
    assert err[3].startswith("[mdqn] chunk 3/3 ") and err[3].endswith("| ETA 0:00:00") and len(err) == 4
    assert run.done == 3


def test_divergence_restored_from_a_checkpoint_is_not_reported_again(capsys):
    history = append_chunk(append_chunk({}, _step(0, None)[1]), _step(1, None)[1])   # member 1 diverged
    run_chunks(_step, None, LoopRun(_pop(), 3, 10, 2, 2, history), [DivergenceLog()])
    assert "DIVERGED" not in capsys.readouterr().err


def test_checkpoints_every_k_chunks_and_at_the_end():
    ckpt = FakeCheckpointer()
    run_chunks(_step, None, LoopRun(_pop(), 5, 10, 0, 0),
               [Checkpoints(ckpt, 2, lambda s: ("saved", s), {"agent": "mdqn"})])
    assert [(d, s) for d, s, _, _ in ckpt.saved] == [(2, ("saved", 2)), (4, ("saved", 4)), (5, ("saved", 5))]
    assert ckpt.saved[0][2]["step"] == (2, M) and ckpt.saved[-1][3] == {"agent": "mdqn"}
    assert ckpt.closed == 1


def test_the_kill_counter_counts_restored_chunks_over_populations():
    counter, closed = [0], []
    hook = KillAfterChunks(counter, None, lambda: closed.append(1))
    run_chunks(_step, None, LoopRun(_pop(), 4, 10, 1, 1), [hook])        # 1 restored + 3 run
    run_chunks(_step, None, LoopRun(_pop(), 4, 10, 0, 0), [KillAfterChunks(counter, None, lambda: None)])
    assert counter == [8] and closed == []


@pytest.mark.parametrize("seconds, text", [(0, "0:00:00"), (3725.4, "1:02:05"), (float("inf"), "?")])
def test_fmt_eta(seconds, text):
    assert fmt_eta(seconds) == text


def test_nanmedian():
    assert nanmedian([1.0, np.nan, 3.0]) == 2.0 and np.isnan(nanmedian([np.nan]))


def test_a_hook_can_stop_the_loop_after_a_chunk():
    class StopAt(Hook):
        def on_chunk(self, run, metrics):
            run.stop = run.done == 2

    calls = []
    run = run_chunks(_step, None, LoopRun(_pop(), 5, 10, 0, 0), [StopAt(), Recorder(calls, "a")])
    assert (run.done, run.state) == (2, 2) and calls[-1] == ("a", "end", 2)
