"""The hash of a resolved config, the schema's version, and the keys earlier versions named.

A run records its resolved config (every key, config.json's "config"), its hash and the
schema version (`SCHEMA_VERSION`); `--resume`, a checkpoint and `klrl merge` compare hashes.
The hash covers only the values that differ from the schema's defaults, plus the version:

    hash = sha256(json({"schema_version": V, "config": {key: value | value ≠ default(key)}}))

with [output], the score rule (`eval.score`, `eval.score_k`: how finished results are
summarized) and the device count (`train.devices`) left out: none changes what a member
computes (beyond float rounding for the device count). A key added with
a default therefore never changes the hash of a config that does not set it, and a run
recorded before the key existed still resumes. Change a default (or what a value means) and
you must bump `SCHEMA_VERSION` and teach `upgrade_resolved` the old meaning. The exception
is a default of `auto` (klrl.placement): it names a choice made per platform, whose result is
recorded in config.json's "placement" and kept when the run resumes on the same platform,
so a run recorded before `auto` (with the old default) still resumes with what it ran with.

Version 1 records (no "schema_version": runs made before it existed) hashed every resolved
key (`legacy_hash`). `record_hash` recognises them: it checks the stored hash against the
version 1 formula on the stored config (so the config is what the run and its checkpoints
were made from), renames the keys that moved (`RENAMED`) and hashes the result with today's
formula, which then equals the hash today's code gives the same experiment.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from klrl.errors import ConfigError

SCHEMA_VERSION = 2
# Old key -> new key. Config files, `--set` and version 1 records may use the old name.
RENAMED: dict[str, str] = {
    "train.eval_mode": "eval.mode",
    "train.eval_episodes": "eval.episodes",
    "train.eval_envs": "eval.envs",
    "train.eval_epsilon": "eval.epsilon",
    "train.final_eval_episodes": "eval.final_episodes",
}
UNHASHED = ("output",)   # sections that change where and how often a run writes, not its results
# Keys that choose how finished results are summarized, not the results: a run may be reported
# under another score rule without becoming another run. And the device count: a property of
# the machine (klrl.placement), so a run resumes on another count.
UNHASHED_KEYS = ("eval.score", "eval.score_k", "train.devices")


def flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables -> flat {"section.key": value} (sub-tables joined with dots)."""
    out: dict[str, Any] = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def rename(flat: Mapping[str, Any], renamed: Mapping[str, str] = RENAMED) -> dict[str, Any]:
    """Flat values with every old key of `renamed` under its new name (both names: ConfigError)."""
    out = dict(flat)
    for old, new in renamed.items():
        if old in out:
            if new in out:
                raise ConfigError(f"{old}: got it next to {new}; allowed one of them ({old} is the old name of {new})")
            out[new] = out.pop(old)
    return out


def _sha256(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def resolved_hash(resolved: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    """The hash of a resolved config (nested, as config.json stores it) given the schema's
    defaults (flat key -> default, JSON-able): only the values that differ count."""
    flat = flatten({s: t for s, t in resolved.items() if s not in UNHASHED})
    changed = {k: v for k, v in flat.items()
               if k not in UNHASHED_KEYS and (k not in defaults or v != defaults[k])}
    return _sha256({"schema_version": SCHEMA_VERSION, "config": changed})


def legacy_hash(resolved: Mapping[str, Any]) -> str:
    """Schema version 1's hash: every resolved key (needed only to verify version 1 records)."""
    return _sha256({s: t for s, t in resolved.items() if s not in UNHASHED})


def upgrade_resolved(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """A version 1 resolved config under today's key names (nested tables)."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in rename(flatten(resolved)).items():
        sec, _, name = key.partition(".")
        out.setdefault(sec, {})[name] = value
    return out


def record_hash(record: Mapping[str, Any], defaults: Mapping[str, Any]) -> str | None:
    """Today's hash of the config a run record (config.json, sweep.json) holds.

    A record of this schema version: its stored hash. A version 1 record whose stored hash
    is the version 1 hash of its config: the hash of its upgraded config. Anything else (a
    hand-edited version 1 record, a newer version's): the stored hash, which matches no
    hash this code computes."""
    stored = record.get("config_hash")
    version = record.get("schema_version", 1)
    config = record.get("config")
    if version == 1 and isinstance(config, dict) and legacy_hash(config) == stored:
        return resolved_hash(upgrade_resolved(config), defaults)
    return stored


__all__ = ["RENAMED", "SCHEMA_VERSION", "flatten", "legacy_hash", "record_hash", "rename", "resolved_hash",
           "upgrade_resolved"]
