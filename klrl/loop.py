"""The chunk loop of one population, with hooks.

`run_chunks` runs the compiled chunk program chunk after chunk and keeps the population's
metric history; everything a chunk leaves behind (rows in metrics.csv, progress lines,
divergence reports, checkpoints, a tracker's points, a reaction to a signal) is a `Hook`,
so such things plug in without editing the loop. Per chunk, after the program returns and
its metrics are on the host, every hook's `on_chunk` runs in the order given.

A hook sees the loop's `LoopRun`: the population, where the run stands (chunks restored
from a checkpoint, chunks done, seconds and env steps run by this process) and the state and
history after the chunk. Hooks must not replace the state; one may set `run.stop` to end the
loop after the current chunk (the hooks' `on_end` still run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from klrl.population import Population


@dataclass
class LoopRun:
    """Where the chunk loop of one population stands (what hooks read)."""

    pop: Population
    num_chunks: int                 # chunks of the whole run
    chunk_steps: int                # env steps per member and chunk
    start: int                      # chunks restored from a checkpoint (done before this process)
    state: Any                      # the trainer's state after `done` chunks
    history: dict[str, np.ndarray] = field(default_factory=dict)   # metric -> [done, M]
    ran: int = 0                    # chunks run by this process
    run_seconds: float = 0.0        # seconds in the chunk program, this process
    stop: bool = False              # set by a hook (on a signal, say): no further chunk is run

    @property
    def done(self) -> int:
        """Chunks done: restored ones and those run by this process."""
        return self.start + self.ran

    @property
    def steps_done(self) -> int:
        """Env steps per member run by this process."""
        return self.ran * self.chunk_steps


class Hook:
    """What the loop calls; subclass and override any of the three (each a no-op here)."""

    def on_start(self, run: LoopRun) -> None:
        """Before the first chunk of this process (also when no chunk is left to run)."""

    def on_chunk(self, run: LoopRun, metrics: Mapping[str, np.ndarray]) -> None:
        """After chunk `run.done`: `metrics` maps name -> host array [M] (with `step`)."""

    def on_end(self, run: LoopRun) -> None:
        """After the last chunk."""


def append_chunk(history: Mapping[str, np.ndarray], metrics: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """history [C, M] per metric, extended by one chunk's metrics [M] -> [C + 1, M]."""
    return {k: np.concatenate([history[k], v[None]]) if k in history else v[None] for k, v in metrics.items()}


def run_chunks(step_fn: Callable, hparams, run: LoopRun, hooks: Sequence[Hook],
               to_host: Callable = lambda x: x) -> LoopRun:
    """Run chunks `run.done + 1 .. run.num_chunks` of `step_fn(state, hparams) -> (state,
    metrics)` (`to_host` brings the metrics to numpy), calling the hooks around them, until
    the last chunk or a hook's `run.stop`; returns `run` at the end."""
    for hook in hooks:
        hook.on_start(run)
    while run.done < run.num_chunks and not run.stop:
        t = time.perf_counter()
        state, metrics = step_fn(run.state, hparams)
        metrics = to_host(metrics)
        run.run_seconds += time.perf_counter() - t
        run.state, run.ran = state, run.ran + 1
        run.history = append_chunk(run.history, metrics)
        for hook in hooks:
            hook.on_chunk(run, metrics)
    for hook in hooks:
        hook.on_end(run)
    return run


__all__ = ["Hook", "LoopRun", "append_chunk", "run_chunks"]
