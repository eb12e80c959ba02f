"""Where a run runs and what that decides: its device count and its platform-aware defaults.

Devices (`train.devices = "auto" | N`). `klrl train` gives JAX one host device per CPU core
(`host_device_flags`, before JAX starts) unless the environment already chooses a count, and
shards a population over `shard_count` devices (klrl.sharding):

- N: exactly N devices (more than JAX sees: a one-line error);
- auto: the fewest devices that give the shortest shards, i.e. with D devices and M members,
  L = ⌈M / D⌉ members per shard on ⌈M / L⌉ devices (M = 3 on 2 devices: 2; M = 7 on 8: 7, no
  padding; M = 9 on 8: 5, one padding member, the same wall time as 8 with seven). One member,
  or `shared` replay (its store is shared within a shard, so the device count would change
  what it computes), runs on one device. Several processes (klrl.distributed) use every device.

The count is a property of the machine, not of the experiment: it is recorded (config.json's
"placement") but left out of the config hash, so a run resumes on another count
(klrl.relayout).

Platform-aware defaults. `agent.conv = "auto"` and `train.member_map = "auto"` resolve per
platform (`platform_choice`): convolutions as patches (im2col + one matmul) on CPU, where XLA's
convolution inside the trainer's loop falls off its fast path, and XLA's convolution elsewhere;
members `map`ped on CPU for the Nature CNN (klrl bench atari: a vmapped convolution costs more
per member there) and vmapped otherwise. The resolved values are recorded, not hashed: a
resumed run keeps what its record resolved on the same platform (`resolve_for_run`), and a run
recorded before `auto` existed keeps that era's defaults (lax, vmap).
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

from klrl.errors import ConfigError

DEVICES = "train.devices"
AUTO = "auto"
HOST_DEVICES_FLAG = "--xla_force_host_platform_device_count"
# The keys whose default `auto` is resolved per platform, and what a record written before
# `auto` existed (no "placement" entry) ran with.
AUTO_KEYS = ("agent.conv", "train.member_map")
BEFORE_AUTO = {"agent.conv": "lax", "train.member_map": "vmap"}


def check_devices(value: Any) -> str | int:
    """`train.devices` as given: "auto" or a positive count (one-line ConfigError otherwise)."""
    if value == AUTO or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ConfigError(f"{DEVICES}: got {value!r}; allowed auto or a device count >= 1")


def host_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:          # no affinity API on this OS
        return os.cpu_count() or 1


def host_device_flags(environ: Mapping[str, str], cores: int) -> str | None:
    """XLA_FLAGS with one host device per core added, or None when the environment already
    chooses the count (the flag in XLA_FLAGS, or JAX_NUM_CPU_DEVICES): a user's setting wins."""
    flags = environ.get("XLA_FLAGS", "")
    if re.search(rf"(^|\s){HOST_DEVICES_FLAG}=", flags) or environ.get("JAX_NUM_CPU_DEVICES"):
        return None
    return f"{flags} {HOST_DEVICES_FLAG}={int(cores)}".strip()


def shard_count(setting: str | int, available: int, members: int, replay_mode: str, processes: int = 1) -> int:
    """The devices a population of `members` runs on (module docstring), of `available`."""
    if processes > 1:
        if setting not in (AUTO, available):
            raise ConfigError(f"{DEVICES}: got {setting!r} in a run of {processes} processes; allowed auto or "
                              f"{available} (every device of every process)")
        return available
    if setting != AUTO:
        if setting > available:
            raise ConfigError(f"{DEVICES}: got {setting}; allowed auto or at most {available} (the devices JAX "
                              f"sees here; on CPU, {HOST_DEVICES_FLAG} in XLA_FLAGS sets their number)")
        return int(setting)
    if members < 2 or replay_mode == "shared":
        return 1
    per_shard = -(-members // available)
    return -(-members // per_shard)


def platform_choice(platform: str, torso: str) -> dict[str, str]:
    """What `auto` resolves to on `platform` (jax.default_backend()) for a network `torso`."""
    cpu = platform == "cpu"
    return {"agent.conv": "patches" if cpu else "lax",
            "train.member_map": "map" if cpu and torso == "nature_cnn" else "vmap"}


def resolve_conv(platform: str | None = None) -> str:
    """What `agent.conv = "auto"` is on `platform` (default: the running JAX platform)."""
    if platform is None:
        import jax

        platform = jax.default_backend()
    return platform_choice(platform, "")["agent.conv"]


def _get(cfg, key: str) -> str:
    sec, _, name = key.partition(".")
    return getattr(cfg.section(sec), name)


def resolve(cfg, values: Mapping[str, str] | None = None, platform: str | None = None):
    """`cfg` (a klrl.static.StaticConfig) with every AUTO_KEYS field that is "auto" set from
    `values` (default: `platform_choice` of `platform`, default the running JAX platform)."""
    if values is None:
        if platform is None:
            import jax

            platform = jax.default_backend()
        values = platform_choice(platform, cfg.agent.torso)
    tables: dict[str, dict[str, str]] = {}
    for key in AUTO_KEYS:
        if _get(cfg, key) == AUTO:
            sec, _, name = key.partition(".")
            tables.setdefault(sec, {})[name] = values[key]
    return cfg.replace(**tables) if tables else cfg


def resolve_for_run(cfg, platform: str, record: Mapping[str, Any] | None):
    """(`cfg` resolved for a run on `platform`, a line to report or ""). A fresh run (`record`
    None): the platform's choice. A resumed run (`record`: its config.json): what its record
    resolved, on the platform it recorded; BEFORE_AUTO for a record from before `auto`; on
    another platform the platform's choice, said in the line."""
    choice = platform_choice(platform, cfg.agent.torso)
    placed = None if record is None else record.get("placement")
    if record is None or (placed is not None and placed.get("platform") != platform):
        values = choice
    else:
        values = {k: (placed or BEFORE_AUTO).get(k, BEFORE_AUTO[k]) for k in AUTO_KEYS}
    out = resolve(cfg, values)
    changed = [f"{k} = {_get(out, k)} (was {placed.get(k)})" for k in AUTO_KEYS
               if placed is not None and _get(cfg, k) == AUTO and placed.get(k) != _get(out, k)]
    note = (f"klrl: recorded on {placed.get('platform')}, resumed on {platform}: auto resolves to "
            + ", ".join(changed)) if changed else ""
    return out, note


def effective(cfg) -> dict[str, str]:
    """The AUTO_KEYS values a resolved `cfg` runs with (what config.json records)."""
    return {k: _get(cfg, k) for k in AUTO_KEYS}


def record(platform: str, values: Mapping[str, str], devices: Mapping[str, int], available: int) -> dict:
    """config.json's "placement": the platform, the devices JAX saw and each population's
    count (by agent), and what AUTO_KEYS resolved to."""
    return {"platform": platform, "devices_available": int(available), "devices": dict(devices), **values}


__all__ = ["AUTO", "AUTO_KEYS", "BEFORE_AUTO", "DEVICES", "HOST_DEVICES_FLAG", "check_devices", "effective",
           "host_cores", "host_device_flags", "platform_choice", "record", "resolve", "resolve_conv", "resolve_for_run",
           "shard_count"]
