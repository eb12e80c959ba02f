"""Experiment tracking: each population member as one run in TensorBoard and/or W&B.

`output.sinks` lists where each chunk's rows go: `csv` (metrics.csv, always written),
`tensorboard`, `wandb` (klrl.sinks; each needs its extra, `pip install 'klrl[wandb]'`, and
nothing of it is imported unless chosen). The `Tracking` hook feeds the chosen sinks at
chunk boundaries, on the host, with the values metrics.csv gets (float32, every metric but
`step`); the step axis is env steps per member.

Every member is one tracked run (`TrackedRun`):

- its config is the member's row: member, seed, agent, env, its swept hyperparameters, the
  run's whole resolved config with the member's values (`member_config`);
- its group is the name of the `--out` directory (an array job's tasks share it), followed by
  `/<env>` in a sweep over env.name, so each game is a group; its job type is the agent;
- its id is stable across `--resume`: `<config hash>-<run start>-m<member>`, from the run's
  config.json (two runs of one config in two directories are two runs, not one);
- TensorBoard writes it to `<run dir>/tensorboard/<agent>/m<member>/`, W&B under
  `<run dir>/wandb/` (offline with WANDB_MODE=offline: `wandb sync` uploads it later).

Only the process that writes metrics.csv tracks (process 0 of a distributed run; an array
task tracks the members it trains), and `klrl merge` tracks nothing. A resumed run continues
the same tracked runs and never sends a chunk twice: `tracking.json` in the run directory
records how many chunks of each population were sent, and a resumed run skips the chunks it
recomputes up to there (with a pool env the tracked values of those chunks are the killed
process's; metrics.csv holds the recomputed ones).
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from klrl.config import SEEDS, SWEEP, Experiment
from klrl.errors import ConfigError
from klrl.hooks import log
from klrl.loop import Hook, LoopRun
from klrl.population import Population
from klrl.results import metric_names
from klrl.rundir import RUN_RECORD, write_json

# sink -> (the module it imports, the extra that installs it)
EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}
STATE = "tracking.json"      # chunks sent per population, in the run directory


def installed(module: str) -> bool:
    """Whether `module` can be imported (found without importing it)."""
    return importlib.util.find_spec(module) is not None


def check_sinks(sinks: Sequence[str], found: Callable[[str], bool] = installed) -> None:
    """One-line ConfigError naming the extra of the first chosen sink whose package is missing."""
    for sink in sinks:
        if sink in EXTRAS and not found(EXTRAS[sink][0]):
            module, extra = EXTRAS[sink]
            raise ConfigError(f"output.sinks: got {sink!r} but {module} is not installed; allowed after "
                              f"pip install 'klrl[{extra}]'")


def trackers(sinks: Sequence[str]) -> tuple[str, ...]:
    """The chosen sinks other than csv, each once, in EXTRAS order."""
    return tuple(s for s in EXTRAS if s in sinks)


@dataclass(frozen=True)
class TrackedRun:
    """One member as a tracked run."""

    id: str                      # stable across --resume
    name: str                    # display name
    group: str                   # the run directory's name (/<env> in a sweep over env.name)
    agent: str
    member: int
    config: dict[str, Any]       # flat: the member's config row
    subdir: str                  # its TensorBoard directory, relative to the run directory


class Sink(Protocol):
    """What the Tracking hook feeds (klrl.sinks): open a population's runs, log one member's
    values at a step, flush after each chunk, close at the end."""

    def open(self, runs: Sequence[TrackedRun], fresh: bool) -> str: ...
    def log(self, index: int, step: int, values: Mapping[str, float]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def run_prefix(record: Mapping) -> str:
    """`<config hash, 12>-<UTC start, digits>` from a run's config.json record."""
    start = str(record.get("provenance", {}).get("created_utc", ""))
    digits = "".join(c for c in start.split("+")[0] if c.isdigit())
    return f"{record['config_hash'][:12]}{'-' + digits if digits else ''}"


def tracking_group(out_dir: str, env: str | None = None) -> str:
    """The group of a run's members: the name of `--out` (and `/<env>` in a sweep over env.name)."""
    name = os.path.basename(os.path.normpath(os.path.abspath(out_dir)))
    return f"{name}/{env}" if env else name


def flat_config(exp: Experiment) -> dict[str, Any]:
    """The run's resolved config as `section.key` -> value (less the sweep and the seed list)."""
    return {f"{sec}.{key}": value for sec, table in exp.resolved().items() if sec != SWEEP
            for key, value in table.items() if f"{sec}.{key}" != SEEDS}


def member_config(exp: Experiment, pop: Population, index: int, flat: Mapping[str, Any]) -> dict[str, Any]:
    """The config of member `index` of `pop`: who it is (member, seed, agent, env, its swept
    values, the config hash), then every `section.key` of `flat` (klrl's resolved config) with
    the member's own values (a swept key its agent does not use is left out)."""
    m = pop.members[index]
    swept = {k: v for k, v in m.swept.items() if v is not None}
    unused = {exp.schema.key_of(k) for k, v in m.swept.items() if v is None}
    return {"member": m.member, "seed": m.seed, "agent": m.agent, "env": exp.static.env.name, **swept,
            "config_hash": exp.config_hash(), **{k: v for k, v in flat.items() if k not in unused},
            "agent.name": m.agent, "train.seed": m.seed, **{exp.schema.key_of(k): v for k, v in swept.items()}}


def tracked_runs(exp: Experiment, pop: Population, record: Mapping, group: str) -> list[TrackedRun]:
    """The tracked run of every member of `pop` (`record`: the run's config.json)."""
    prefix, flat, runs = run_prefix(record), flat_config(exp), []
    for i, m in enumerate(pop.members):
        hp = " ".join(f"{k}={v:g}" for k, v in m.swept.items() if v is not None)
        runs.append(TrackedRun(id=f"{prefix}-m{m.member}", name=f"{m.agent} m{m.member} seed={m.seed} {hp}".strip(),
                               group=group, agent=m.agent, member=m.member, config=member_config(exp, pop, i, flat),
                               subdir=os.path.join("tensorboard", m.agent, f"m{m.member}")))
    return runs


def read_state(out: str) -> dict[str, int]:
    """tracking.json's chunks sent per population ({} when there is none)."""
    path = os.path.join(out, STATE)
    if not os.path.isfile(path):
        return {}
    with open(path) as fh:
        return dict(json.load(fh)["chunks_sent"])


class Tracking(Hook):
    """Feed one population's chunks to `sinks` (their runs `runs`), after metrics.csv got them;
    chunks up to the count in tracking.json were sent by an earlier process and are skipped.
    The sinks open at the first chunk to send and close at the end. A sink that fails (W&B's
    service process killed by a cluster's SIGTERM to every process of the job, say) is dropped
    with one line: a tracker never stops the training, its rows or its checkpoints."""

    def __init__(self, out: str, sinks: Sequence[Sink], runs: Sequence[TrackedRun]):
        self.out, self.sinks, self.runs = out, list(sinks), list(runs)
        self.opened = False

    def _each(self, agent: str, call: Callable[[Sink], Any]) -> None:
        """`call(sink)` for every sink; one that raises is reported and dropped."""
        for sink in list(self.sinks):
            try:
                call(sink)
            except Exception as err:  # noqa: BLE001 (any failure of a third-party tracker)
                self.sinks.remove(sink)
                first = (str(err).strip().splitlines() or [""])[0][:200]
                log(f"[{agent}] {type(sink).__name__} failed ({type(err).__name__}: {first}); no more rows go to "
                    "it, training continues (metrics.csv has every row)")

    def on_start(self, run: LoopRun) -> None:
        self.state = read_state(self.out)
        self.sent = self.state.get(run.pop.agent, 0)

    def on_chunk(self, run: LoopRun, metrics: Mapping[str, np.ndarray]) -> None:
        if run.done <= self.sent:
            return
        agent = run.pop.agent
        if not self.opened:
            self.opened = True
            self._each(agent, lambda sink: log(f"[{agent}] {sink.open(self.runs, fresh=self.sent == 0)}"))
        names = metric_names(metrics)
        rows = [(int(metrics["step"][i]), {k: float(np.float32(metrics[k][i])) for k in names})
                for i in range(run.pop.size)]
        self._each(agent, lambda sink: [sink.log(i, step, values) for i, (step, values) in enumerate(rows)])
        self._each(agent, lambda sink: sink.flush())
        self.sent = run.done
        self.state[agent] = run.done
        write_json(os.path.join(self.out, STATE), {"chunks_sent": self.state})

    def on_end(self, run: LoopRun) -> None:
        if self.opened:
            self._each(run.pop.agent, lambda sink: sink.close())


def tracking_hooks(exp: Experiment, out: str, group: str, primary: bool) -> Callable[[Population], Tracking] | None:
    """What makes each population's Tracking hook in the run directory `out` (its config.json
    written), or None: no sink beyond csv, or a process that does not write (`primary`)."""
    kinds = trackers(exp.values["output.sinks"])
    if not kinds or not primary:
        return None
    from klrl.sinks import make_sinks

    with open(os.path.join(out, RUN_RECORD)) as fh:
        record = json.load(fh)
    project, entity = exp.values["output.wandb_project"], exp.values["output.wandb_entity"]
    return lambda pop: Tracking(out, make_sinks(kinds, out, project, entity), tracked_runs(exp, pop, record, group))


__all__ = ["EXTRAS", "STATE", "Sink", "TrackedRun", "Tracking", "check_sinks", "installed", "member_config",
           "flat_config", "read_state", "run_prefix", "tracked_runs", "tracking_group", "tracking_hooks", "trackers"]
