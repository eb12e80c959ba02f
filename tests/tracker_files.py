"""Reading back what the trackers wrote into a run directory (tests only).

TensorBoard: TensorBoard's own reader (EventAccumulator) on every run directory under
`<run>/tensorboard/`. W&B: the offline run folders `<run>/wandb/offline-run-*/run-<id>.wandb`,
each a record log in LevelDB's log format (32 KiB blocks; a record is a 7-byte header,
crc32c (4) + length (2, little endian) + type (1: full, 2: first, 3: middle, 4: last), then
its bytes) after W&B's 7-byte file header (":W&B", a 2-byte magic, a version byte); every
record is a `wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import glob
import json
import os
import struct

BLOCK = 32 * 1024
HEADER = 7


def read_tensorboard(run_dir: str) -> dict[str, dict]:
    """`tensorboard/<agent>/m<member>` -> {"scalars": {tag: [(step, value)]}, "hparams": {name: value}}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    out = {}
    for events in sorted(glob.glob(os.path.join(run_dir, "tensorboard", "*", "*", "events.out.tfevents.*"))):
        d = os.path.dirname(events)
        if os.path.relpath(d, run_dir) in out:
            continue
        acc = EventAccumulator(d, size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
        hparams = {}
        content = acc.PluginTagToContent("hparams").get(metadata.SESSION_START_INFO_TAG)
        if content is not None:
            info = metadata.parse_session_start_info_plugin_data(content)
            for name, value in info.hparams.items():
                kind = value.WhichOneof("kind")
                hparams[name] = getattr(value, kind)
        out[os.path.relpath(d, run_dir)] = {"scalars": scalars, "hparams": hparams}
    return out


def _records(path: str) -> list:
    """Every Record of one .wandb file."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B", path
    pos, buf, out = HEADER, b"", []
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:                # a block's tail too short for a header: padding
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + HEADER])
        if kind == 0:                                   # zeroed space: the end of what was written
            break
        buf += data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def _items(items) -> dict:
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}


def read_wandb(run_dir: str) -> dict[str, dict]:
    """run id -> {"folders", "group", "job_type", "name", "project", "config", "history": [row, ...]}
    over all of that id's offline folders (in the order they were written)."""
    out: dict[str, dict] = {}
    for folder in sorted(glob.glob(os.path.join(run_dir, "wandb", "offline-run-*"))):
        (path,) = glob.glob(os.path.join(folder, "run-*.wandb"))
        for rec in _records(path):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                r = rec.run
                run = out.setdefault(r.run_id, {"folders": 0, "config": {}, "history": []})
                run.update(group=r.run_group, job_type=r.job_type, name=r.display_name, project=r.project)
                run["folders"] += 1
                run["config"].update(_items(r.config.update))
            elif kind == "config":
                run["config"].update(_items(rec.config.update))
            elif kind == "history":
                run["history"].append(_items(rec.history.item))
    return out
