"""Orbax save/restore of a population's full learner state, for exact resume.

A checkpoint (one orbax step per saved chunk count) holds three items:
  state    the engine's TrainState (params, target, optimizer, replay, env states, keys,
           counters): a pytree of arrays only, saved with `StandardSave`;
  history  the metrics of every chunk so far, name -> [chunks_done, M];
  meta     JSON: config hash and schema version (klrl.config_hash), agent, chunks done,
           population size.
Restoring uses abstract targets built from a freshly initialized state on the current
devices (so a checkpoint written on another device kind restores here), and refuses a
checkpoint whose config hash is neither the current resolved config's nor one of
`also_accept` (the hash a run recorded under an earlier schema version's formula, which its
checkpoints carry; the caller has matched that record to the current config).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from klrl.config_hash import SCHEMA_VERSION
from klrl.errors import ConfigError


def _ocp():
    import orbax.checkpoint as ocp

    return ocp


class PopulationCheckpointer:
    """CheckpointManager for one population (one agent) of a run."""

    def __init__(self, directory: str, config_hash: str, max_to_keep: int = 2, also_accept: tuple[str, ...] = ()):
        ocp = _ocp()
        self.directory = os.path.abspath(directory)
        self.config_hash = config_hash
        self.accepted = frozenset((config_hash, *also_accept))
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self._mngr = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def save(self, chunks_done: int, state: Any, history: dict[str, np.ndarray], meta: dict) -> None:
        """Save synchronously (waits for orbax's async write to finish)."""
        ocp = _ocp()
        meta = {**meta, "config_hash": self.config_hash, "schema_version": SCHEMA_VERSION,
                "chunks_done": int(chunks_done)}
        history = {k: np.asarray(v) for k, v in history.items()}
        self._mngr.save(
            chunks_done,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                history=ocp.args.StandardSave(history),
                meta=ocp.args.JsonSave(meta),
            ),
        )
        self._mngr.wait_until_finished()

    def _check_meta(self, step: int) -> dict:
        ocp = _ocp()
        meta = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if meta.get("config_hash") not in self.accepted:
            raise ConfigError(
                f"--resume: got a checkpoint in {self.directory} from a different config "
                f"(hash {str(meta.get('config_hash'))[:12]} != {self.config_hash[:12]}); "
                "allowed only the same resolved config (drop --set changes or use a new --out)"
            )
        return meta

    def meta(self, step: int | None = None) -> dict:
        """The meta item of a checkpoint (default: the latest), after the config-hash check."""
        return self._check_meta(self.latest_step() if step is None else step)

    def restore_metrics(self, step: int | None = None) -> tuple[dict, dict[str, np.ndarray]]:
        """(meta, metrics history) of a checkpoint, without touching the learner state."""
        ocp = _ocp()
        step = self.latest_step() if step is None else step
        meta = self._check_meta(step)
        metrics = self._mngr.restore(step, args=ocp.args.Composite(history=ocp.args.StandardRestore()))["history"]
        return meta, {k: np.asarray(v) for k, v in metrics.items()}

    def restore(self, fresh_state: Any, step: int | None = None, host: bool = False
                ) -> tuple[Any, dict[str, np.ndarray], dict]:
        """(state, metrics history, meta) of a checkpoint; `fresh_state` (a freshly
        initialized TrainState on the current devices) gives shapes, dtypes and shardings.
        With `host`, `fresh_state` holds numpy arrays of the saved shapes and the state comes
        back as numpy arrays (klrl.relayout: a checkpoint of another device layout)."""
        import jax

        ocp = _ocp()
        step = self.latest_step() if step is None else step
        meta = self._check_meta(step)
        abstract = fresh_state if host else jax.tree.map(ocp.utils.to_shape_dtype_struct, fresh_state)
        out = self._mngr.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), history=ocp.args.StandardRestore()),
        )
        return out["state"], {k: np.asarray(v) for k, v in out["history"].items()}, meta

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()
