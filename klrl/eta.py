"""Time left in a run, per phase: the steps before `learning_starts` and the steps after.

Before `train.learning_starts` a member only acts and stores transitions; after it, every
`update_every` steps also run a gradient update, which on a CPU costs many times an env step
(a Nature-CNN Atari chunk: ~1 s before learning, ~115 s after). An ETA from the average
speed so far is therefore far too short while only the first phase has been timed. Here the
seconds per env step of each phase are estimated from the timed chunks (a chunk that
straddles `learning_starts` is split with the first phase's measured speed), and the time
left is the remaining steps of each phase at its own speed. Until a step of the second
phase has been timed the estimate is a lower bound (`PhaseEta.lower_bound`).

Pure functions on numbers: the progress line (klrl.hooks) and `klrl train --dry-run
--estimate` (klrl.dryrun) use them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


def phase_steps(start: int, stop: int, learning_starts: int) -> tuple[int, int]:
    """(steps before learning, steps with learning) among env steps [start, stop) per member."""
    before = max(0, min(stop, learning_starts) - start)
    return before, (stop - start) - before


@dataclass(frozen=True)
class PhaseSpeeds:
    """Seconds per env step (per member) before and after `learning_starts` (NaN: not timed)."""

    before: float
    learning: float


def phase_speeds(chunks: Sequence[tuple[int, int, float]]) -> PhaseSpeeds:
    """Per-phase seconds per step from timed chunks (steps before, steps with learning, seconds).

    Chunks wholly before learning give the first phase's speed; the learning phase's speed is
    the remaining seconds of the other chunks (less their first-phase steps at that speed,
    or at none if it was never timed alone) over their learning steps.
    """
    pure = [(b, s) for b, l, s in chunks if l == 0 and b > 0]
    before = sum(s for _, s in pure) / sum(b for b, _ in pure) if pure else math.nan
    mixed = [(b, l, s) for b, l, s in chunks if l > 0]
    if not mixed:
        return PhaseSpeeds(before, math.nan)
    steps_b = sum(b for b, _, _ in mixed)
    steps_l = sum(l for _, l, _ in mixed)
    seconds = sum(s for _, _, s in mixed)
    known = 0.0 if math.isnan(before) else before * steps_b
    # At least the chunks' own average (learning is the slow phase): noise in the first
    # phase's speed must not make the second one's negative.
    learning = max((seconds - known) / steps_l, seconds / (steps_b + steps_l))
    return PhaseSpeeds(before, learning)


@dataclass(frozen=True)
class PhaseEta:
    """Seconds left, and whether that is only a lower bound (the learning phase not timed yet)."""

    seconds: float
    lower_bound: bool


def time_left(speeds: PhaseSpeeds, done_steps: int, total_steps: int, learning_starts: int) -> PhaseEta:
    """Seconds for env steps [done_steps, total_steps) per member at the per-phase speeds."""
    before, learning = phase_steps(done_steps, total_steps, learning_starts)
    if learning == 0:
        return PhaseEta(before * speeds.before if before else 0.0, False)
    if math.isnan(speeds.learning):
        # Only the fast phase was timed: its speed for every step left is a lower bound.
        return PhaseEta((before + learning) * speeds.before, True)
    return PhaseEta(before * (0.0 if math.isnan(speeds.before) else speeds.before) + learning * speeds.learning,
                    False)


__all__ = ["PhaseEta", "PhaseSpeeds", "phase_speeds", "phase_steps", "time_left"]
