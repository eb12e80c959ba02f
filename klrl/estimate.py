"""`klrl train CONFIG --dry-run --estimate`: a wall-time ESTIMATE from a short measured slice.

For each agent's population (all its members, the first env of a sweep over env.name) the
same program is compiled for a slice of 4 chunks of c env steps per member with
`learning_starts = 2c`: chunks 1 and 2 only act (the fast phase), chunks 3 and 4 also update
(the slow phase); chunks 2 and 4 are timed (the first chunk of each phase carries first-call
and first-update costs). c is the smallest multiple of `env.num_envs` and
`train.update_every` holding at least `UPDATES` updates; each timed chunk includes its
evaluation, so for a run with long chunks the evaluation's share is overstated. The full run's time is then, per population, the measured compile time
plus the run's steps of each phase at that phase's measured speed (klrl.eta), times the
number of envs of a sweep. What it leaves out, and says so: evaluation cost as episodes grow
longer with training (the slice evaluates an untrained agent), the final evaluation, and the
difference a longer chunk makes to compile time. Nothing is written.
"""

from __future__ import annotations

import math
import time

from klrl.config import Experiment
from klrl.eta import PhaseSpeeds, time_left

UPDATES = 50    # updates per member in a slow-phase chunk of the slice


def slice_steps(num_envs: int, update_every: int) -> int:
    """c: the smallest multiple of lcm(num_envs, update_every) holding UPDATES updates."""
    unit = math.lcm(num_envs, update_every)
    return unit * max(1, math.ceil(UPDATES * update_every / unit))


def slice_experiment(exp: Experiment) -> tuple[Experiment, int]:
    """(the slice's experiment: 4 chunks of c steps, learning from step 2c, no final evaluation, c)."""
    from klrl.config import build_experiment

    t = exp.static.train
    c = slice_steps(exp.static.env.num_envs, t.update_every)
    overrides = [f"train.total_steps={4 * c}", f"train.chunk_steps={c}", f"train.learning_starts={2 * c}",
                 "eval.final_episodes=0"]
    return build_experiment(_raw(exp), overrides, exp.schema), c


def _raw(exp: Experiment) -> dict:
    """`exp` as a TOML-like document (its resolved config), for `build_experiment`."""
    doc = exp.resolved()
    if exp.envs:   # the first env only: the others cost the same per step
        doc["env"]["name"] = exp.envs[0]
        doc["sweep"].pop("env.name", None)
    doc["agent"]["name"] = exp.agents[0]
    return doc


def measure_population(exp: Experiment, pop, trainer) -> tuple[float, float, float]:
    """(compile seconds, seconds per fast-phase chunk, seconds per slow-phase chunk) of one
    population of the slice."""
    from klrl.runner import initial_state
    from klrl.sharding import ShardedTrainer

    sharded = ShardedTrainer(trainer, pop.size)
    keys = sharded.put_members(pop.keys)
    hparams = {k: sharded.put_members(v) for k, v in pop.hparams.items()}
    t0 = time.perf_counter()
    state = initial_state(pop, trainer, sharded, keys, hparams)
    step = sharded.run_chunk().lower(state, hparams).compile()
    compile_s = time.perf_counter() - t0
    seconds = []
    for _ in range(4):
        t = time.perf_counter()
        state, metrics = step(state, hparams)
        sharded.to_host(metrics)
        seconds.append(time.perf_counter() - t)
    return compile_s, seconds[1], seconds[3]


def estimate_lines(exp: Experiment) -> list[str]:
    """Measure the slice of every agent's population; the lines that report the estimate."""
    from klrl.runner import prepare

    sliced, c = slice_experiment(exp)
    pops, trainers, *_ = prepare(sliced)
    t = exp.static.train
    envs = max(len(exp.envs), 1)
    lines = ["", f"ESTIMATE of the wall time (measured on this machine now: compile + 4 chunks of {c} steps "
                 f"per member, learning from step {2 * c}):"]
    total = 0.0
    for pop, trainer in zip(pops, trainers):
        compile_s, fast, slow = measure_population(sliced, pop, trainer)
        speeds = PhaseSpeeds(before=fast / c, learning=slow / c)
        run_s = time_left(speeds, 0, t.total_steps, t.learning_starts).seconds
        total += envs * (compile_s + run_s)
        lines.append(f"  {pop.agent}: {pop.size} members; compile {compile_s:.0f} s; per 1,000 steps per member "
                     f"{1000 * fast / c:.1f} s before learning_starts, {1000 * slow / c:.1f} s after -> "
                     f"~{_hms(compile_s + run_s)}" + (f" per env, x {envs} envs" if envs > 1 else ""))
    lines.append(f"  total ~{_hms(total)} (an estimate: evaluation of longer episodes later in training"
                 + (", the final evaluation" if exp.static.eval.final_episodes else "")
                 + " and other load on the machine are not in it)")
    return lines


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:d} h {seconds % 3600 // 60:02d} min" if seconds >= 3600 else \
        f"{seconds // 60:d} min {seconds % 60:02d} s"


__all__ = ["estimate_lines", "measure_population", "slice_experiment", "slice_steps"]
