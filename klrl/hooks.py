"""The runner's chunk-loop hooks (klrl.loop): what each chunk of `klrl train` leaves behind.

In the runner's order, after every chunk: `MetricsRows` appends its rows to metrics.csv,
`DivergenceLog` reports newly diverged members, `ProgressLog` prints the progress line,
`Checkpoints` saves every `output.checkpoint_every` chunks (and at the end, and when a signal
stops the run: klrl.stopping), and
`KillAfterChunks` (test-only) kills the process once the rows and checkpoint are written.
Lines go to stderr from the primary process only (klrl.distributed).
"""

from __future__ import annotations

import math
import os
import signal
import sys
from typing import Callable, Mapping

import numpy as np

from klrl.distributed import is_primary
from klrl.eta import phase_speeds, phase_steps, time_left
from klrl.loop import Hook, LoopRun
from klrl.results import format_chunk

# Test-only: after this many chunks (counted over the whole run, restored ones included)
# the process SIGKILLs itself, after that chunk's rows and checkpoint are written.
KILL_ENV = "KLRL_TEST_KILL_AFTER_CHUNKS"


def log(msg: str) -> None:
    """A progress line on stderr, from the primary process only (klrl.distributed)."""
    if is_primary():
        print(msg, file=sys.stderr, flush=True)


def fmt_eta(seconds: float) -> str:
    """H:MM:SS (`?` when unknown)."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def nanmedian(x) -> float:
    """Median of the non-NaN entries; NaN if there is none."""
    x = np.asarray(x, dtype=float)
    x = x[~np.isnan(x)]
    return float(np.median(x)) if x.size else math.nan


def describe_member(m) -> str:
    """`member 3 (agent=mdqn, seed=1, alpha=0.9)`."""
    hp = ", ".join(f"{k}={v:g}" for k, v in m.swept.items() if v is not None)
    return f"member {m.member} (agent={m.agent}, seed={m.seed}{', ' + hp if hp else ''})"


class MetricsRows(Hook):
    """Append each chunk's rows to metrics.csv (`writer`: a klrl.results.TidyWriter, fsynced)."""

    def __init__(self, writer):
        self.writer = writer

    def on_chunk(self, run: LoopRun, metrics: Mapping[str, np.ndarray]) -> None:
        self.writer.append(format_chunk(run.pop.members, run.pop.columns, metrics))


class DivergenceLog(Hook):
    """One line per member whose `diverged` flag turned on (restored flags are not repeated)."""

    def on_start(self, run: LoopRun) -> None:
        hist = run.history
        self.diverged = np.asarray(hist["diverged"][-1]) > 0 if "diverged" in hist else np.zeros(run.pop.size, bool)

    def on_chunk(self, run: LoopRun, metrics: Mapping[str, np.ndarray]) -> None:
        new = (metrics.get("diverged", np.zeros(run.pop.size)) > 0) & ~self.diverged
        for i in np.flatnonzero(new):
            log(f"[{run.pop.agent}] DIVERGED: {describe_member(run.pop.members[i])}: non-finite loss by step "
                f"{int(metrics['step'][i])}; its parameters are frozen, the other members continue")
        self.diverged |= new


def fmt_metric(x: float, spec: str = ".1f") -> str:
    """`x` formatted by `spec`, or "—" when nothing was measured yet (NaN)."""
    return "—" if math.isnan(x) else format(x, spec)


class ProgressLog(Hook):
    """The progress line: chunk, step, throughput, medians over members ("—" for nothing
    measured yet), and the time left at each phase's measured speed (klrl.eta; "ETA ~" while
    only the steps before `learning_starts` have been timed: a lower bound)."""

    def __init__(self, total_steps: int, learning_starts: int = 0):
        self.total_steps, self.learning_starts = total_steps, learning_starts

    def on_start(self, run: LoopRun) -> None:
        self.timed: list[tuple[int, int, float]] = []   # (steps before learning, with learning, seconds)
        self.seconds = run.run_seconds

    def eta(self, run: LoopRun) -> str:
        """`ETA H:MM:SS` for the steps left, or `ETA ~H:MM:SS` (a lower bound)."""
        stop = run.done * run.chunk_steps
        left = time_left(phase_speeds(self.timed), stop, run.num_chunks * run.chunk_steps, self.learning_starts)
        if left.lower_bound:
            return f"ETA ~{fmt_eta(left.seconds)} (updates not timed yet: longer)"
        return f"ETA {fmt_eta(left.seconds)}"

    def on_chunk(self, run: LoopRun, metrics: Mapping[str, np.ndarray]) -> None:
        stop = run.done * run.chunk_steps
        self.timed.append((*phase_steps(stop - run.chunk_steps, stop, self.learning_starts),
                           run.run_seconds - self.seconds))
        self.seconds = run.run_seconds
        m = run.pop.size
        rate = m * run.steps_done / max(run.run_seconds, 1e-9)
        log(f"[{run.pop.agent}] chunk {run.done}/{run.num_chunks} step {int(metrics['step'].max())}/"
            f"{self.total_steps} | {rate:,.0f} agent-steps/s | eval {fmt_metric(nanmedian(metrics['eval_return']))} "
            f"train {fmt_metric(nanmedian(metrics['train_return']))} (medians over {m}) | "
            f"loss {fmt_metric(nanmedian(metrics['loss']), '.4g')} | {self.eta(run)}")


class Checkpoints(Hook):
    """Save the state (`saved(state)`: what a checkpoint holds) and the history every `every`
    chunks, after the last one and after a chunk that stops the loop (`run.stop`, set by an
    earlier hook: klrl.stopping); close the checkpointer at the end."""

    def __init__(self, ckpt, every: int, saved: Callable, meta: dict):
        self.ckpt, self.every, self.saved, self.meta = ckpt, every, saved, meta

    def on_chunk(self, run: LoopRun, metrics: Mapping[str, np.ndarray]) -> None:
        if run.done % self.every == 0 or run.done == run.num_chunks or run.stop:
            self.ckpt.save(run.done, self.saved(run.state), run.history, self.meta)

    def on_end(self, run: LoopRun) -> None:
        self.ckpt.close()


class KillAfterChunks(Hook):
    """Test-only (KILL_ENV): SIGKILL this process after `after` chunks counted over the whole
    run, restored ones included (`counter`: a one-element list shared by its populations),
    closing `close` (the checkpointer) first."""

    def __init__(self, counter: list[int], after: int | None, close: Callable[[], None]):
        self.counter, self.after, self.close = counter, after, close

    def on_start(self, run: LoopRun) -> None:
        self.counter[0] += run.start

    def on_chunk(self, run: LoopRun, metrics: Mapping[str, np.ndarray]) -> None:
        self.counter[0] += 1
        if self.after and self.counter[0] == self.after:
            self.close()
            log(f"[{run.pop.agent}] {KILL_ENV}: killing myself after chunk {self.counter[0]}")
            os.kill(os.getpid(), signal.SIGKILL)


def kill_after() -> int | None:
    """The chunk count of KILL_ENV, if set."""
    value = os.environ.get(KILL_ENV)
    return int(value) if value else None


__all__ = ["KILL_ENV", "Checkpoints", "DivergenceLog", "KillAfterChunks", "MetricsRows", "ProgressLog",
           "describe_member", "fmt_eta", "fmt_metric", "kill_after", "log", "nanmedian"]
