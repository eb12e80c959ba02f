"""The trackers klrl.tracking feeds: TensorBoard event files and W&B runs, one run per member.

Each sink imports its package when it opens (never when it is not chosen):

- `TensorBoardSink`: TensorBoard's own event-file writer (no TensorFlow needed), one
  directory per member, `<run dir>/tensorboard/<agent>/m<member>/`; scalars tagged by
  metric name at the member's env step, and the member's config in the HParams dashboard
  (its session-start summary, written once, when the member's run starts). A resumed run
  adds an event file next to the earlier ones; TensorBoard reads them as one run.
- `WandbSink`: one W&B run per member (`wandb.init(reinit="create_new")`, so a population's
  runs are open together), resumed by its stable id (`resume="allow"`), grouped, with the
  member's config, under `<run dir>/wandb/`. WANDB_MODE=offline (cluster nodes without
  internet) writes each run to a local folder that `wandb sync` uploads later. W&B's own
  console capture, code saving and system-metrics sampling are off (one sampler per member
  would be one per vmapped population member).
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping, Sequence

from klrl.tracking import TrackedRun


def _hparam(value: Any):
    """A config value as the HParams dashboard takes it: bool, number or string."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)


class TensorBoardSink:
    """TensorBoard event files, one directory (one TensorBoard run) per member."""

    def __init__(self, out: str):
        self.out = out

    def open(self, runs: Sequence[TrackedRun], fresh: bool) -> str:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.hparams import summary_v2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        self.writers = [EventFileWriter(os.path.join(self.out, r.subdir)) for r in runs]
        if fresh:
            for run, writer in zip(runs, self.writers):
                hp = summary_v2.hparams_pb({k: _hparam(v) for k, v in run.config.items() if v is not None},
                                           trial_id=run.id)
                writer.add_event(self._event(wall_time=time.time(), step=0, summary=hp))
        return (f"tensorboard: {len(runs)} runs in {os.path.join(self.out, 'tensorboard', runs[0].agent)} "
                f"(tensorboard --logdir {self.out})")

    def log(self, index: int, step: int, values: Mapping[str, float]) -> None:
        summary = self._summary(value=[self._summary.Value(tag=k, simple_value=v) for k, v in values.items()])
        self.writers[index].add_event(self._event(wall_time=time.time(), step=step, summary=summary))

    def flush(self) -> None:
        for writer in self.writers:
            writer.flush()

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


class WandbSink:
    """W&B runs, one per member, open together."""

    def __init__(self, out: str, project: str, entity: str = ""):
        self.out, self.project, self.entity = out, project, entity or None

    def open(self, runs: Sequence[TrackedRun], fresh: bool) -> str:
        import wandb

        settings = wandb.Settings(console="off", save_code=False, silent=True, x_disable_stats=True,
                                  x_save_requirements=False)
        self.runs = [wandb.init(project=self.project, entity=self.entity, dir=self.out, id=r.id, name=r.name,
                                group=r.group, job_type=r.agent, tags=[r.agent, str(r.config["env"])],
                                config=r.config, resume="allow", reinit="create_new", settings=settings)
                     for r in runs]
        mode = "offline, upload with wandb sync" if self.runs[0].offline else "online"
        return (f"wandb: {len(runs)} runs in project {self.project}, group {runs[0].group} ({mode}; local files in "
                f"{os.path.join(self.out, 'wandb')})")

    def log(self, index: int, step: int, values: Mapping[str, float]) -> None:
        self.runs[index].log(dict(values), step=step)

    def flush(self) -> None:
        """W&B streams each logged row to its service process; nothing to do here."""

    def close(self) -> None:
        for run in self.runs:
            run.finish()


def make_sinks(kinds: Sequence[str], out: str, project: str, entity: str) -> list:
    """The sinks named in `kinds` (klrl.tracking.trackers) for the run directory `out`."""
    made = {"tensorboard": lambda: TensorBoardSink(out), "wandb": lambda: WandbSink(out, project, entity)}
    return [made[k]() for k in kinds]


__all__ = ["TensorBoardSink", "WandbSink", "make_sinks"]
