"""Stopping a run on a signal without losing it: preemption, SLURM's warning, Ctrl-C.

While `klrl train` runs, the first SIGTERM (preemption, `scancel`, a time limit), SIGUSR1
(SLURM's warning, `#SBATCH --signal=USR1@120`) or SIGINT (Ctrl-C) asks the run to stop:
the chunk in flight finishes, its rows are written, the `StopOnSignal` hook sets the loop's
`run.stop`, klrl.hooks.Checkpoints saves a checkpoint of that chunk, and the runner raises
`Stopped`. The CLI prints its one line ("stopped at chunk k/n ...; continue with: klrl train
... --resume") and exits with `EXIT_STOPPED` = 75 (sysexits' EX_TEMPFAIL: a temporary
failure, try again), which the SLURM templates turn into a requeue. A second signal exits at
once with the same status: metrics.csv rows are appended and fsynced one chunk at a time and
checkpoints are written atomically, so what is on disk stays readable and `--resume`
continues from the last checkpoint.

Why a watcher thread: Python runs a signal handler in the main thread between bytecodes, and
the main thread spends a chunk waiting inside XLA, so a Python handler would only run once
the chunk is done. The C-level handler also writes the signal's number to a wakeup socket
(`signal.set_wakeup_fd`), which a daemon thread reads at once: it records the first signal
and ends the process on the second. In a distributed run the processes agree on the chunk
to stop after (`klrl.distributed.any_process`), so they save the same checkpoint.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import sys
import threading
import time
from typing import Callable, Mapping, Sequence

import numpy as np

from klrl.errors import EXIT_STOPPED, Stopped
from klrl.hooks import log
from klrl.loop import Hook, LoopRun

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
# Test-only: seconds to wait after each chunk (its rows and checkpoint written), so that a test
# can send a signal to a tiny run while it is still running (klrl.hooks.KILL_ENV's kind).
PAUSE_ENV = "KLRL_TEST_PAUSE_AFTER_CHUNK"


def resume_command(argv: Sequence[str]) -> str:
    """The command that continues a run started with the arguments `argv` (`klrl` less)."""
    args = list(argv)
    return "klrl " + shlex.join(args if "--resume" in args else [*args, "--resume"])


class StopSignals:
    """While entered (in the main thread), the first of `signals` sets `requested` (the
    signal's name) and a second calls `exit(EXIT_STOPPED)` at once; on exit the previous
    handlers are restored. `command`: what continues the run (printed by both)."""

    def __init__(self, command: str, signals: Sequence[int] = SIGNALS, exit: Callable[[int], None] = os._exit):
        self.command, self.signals, self._exit = command, tuple(signals), exit
        self.requested: str | None = None
        self._old: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self           # signal handlers can only be set from the main thread: inactive
        self._read, write = socket.socketpair()
        write.setblocking(False)
        self._write = write
        self._old_fd = signal.set_wakeup_fd(write.fileno(), warn_on_full_buffer=False)
        self._old = {s: signal.signal(s, _ignore) for s in self.signals}
        threading.Thread(target=self._watch, name="klrl-stop-signals", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if not self._old:
            return
        for s, handler in self._old.items():
            signal.signal(s, handler)
        signal.set_wakeup_fd(self._old_fd)
        self._old = {}
        self._write.close()       # the watcher's recv returns b"" and it ends
        self._read.close()

    def _watch(self) -> None:
        """Read signal numbers from the wakeup socket until it is closed."""
        try:
            while data := self._read.recv(64):
                for signum in data:
                    if signum in self.signals:
                        self.received(signum)
        except OSError:           # closed under the reader by __exit__
            return

    def received(self, signum: int) -> None:
        """React to one signal: note the first, exit on the second."""
        name = signal.Signals(signum).name
        if self.requested is None:
            self.requested = name
            log(f"klrl: got {name}: stopping after the chunk in flight (its rows and a checkpoint are written); "
                "a second signal exits at once")
            return
        print(f"klrl: got a second signal ({name}): exiting at once; the rows and checkpoints written so far are "
              f"kept; continue with: {self.command}", file=sys.stderr, flush=True)
        self._exit(EXIT_STOPPED)

    def stopped(self, agent: str, done: int, num_chunks: int) -> Stopped:
        """The `Stopped` of a population whose loop ended after chunk `done` of `num_chunks`."""
        by = self.requested or "a signal to another process"
        return Stopped(f"stopped at chunk {done}/{num_chunks} of {agent} on {by}; continue with: {self.command}")


def _ignore(signum, frame) -> None:
    """The Python-level handler: the watcher thread reacts (it reads the wakeup socket)."""


class StopOnSignal(Hook):
    """Sets `run.stop` once `signals.requested` (before the first chunk, or after any chunk;
    `agree` makes every process of a distributed run take the same decision)."""

    def __init__(self, signals: StopSignals, agree: Callable[[bool], bool] = bool):
        self.signals, self.agree = signals, agree

    def _check(self, run: LoopRun) -> None:
        if self.agree(self.signals.requested is not None):
            run.stop = True

    def on_start(self, run: LoopRun) -> None:
        self._check(run)

    def on_chunk(self, run: LoopRun, metrics: Mapping[str, np.ndarray]) -> None:
        self._check(run)


class PauseAfterChunk(Hook):
    """Test-only (PAUSE_ENV): sleep `seconds` after every chunk."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_chunk(self, run: LoopRun, metrics: Mapping[str, np.ndarray]) -> None:
        time.sleep(self.seconds)


def pause_hooks() -> list[Hook]:
    """[PauseAfterChunk] when PAUSE_ENV is set, else []."""
    value = os.environ.get(PAUSE_ENV)
    return [PauseAfterChunk(float(value))] if value else []


__all__ = ["EXIT_STOPPED", "PAUSE_ENV", "PauseAfterChunk", "SIGNALS", "StopOnSignal", "StopSignals", "Stopped", "resume_command", "pause_hooks"]
