"""Provenance recorded next to every result: git commit, library versions, device."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess

_PACKAGES = ("jax", "jaxlib", "flax", "optax", "chex", "gymnax", "orbax-checkpoint", "numpy", "klrl")


def git_commit(repo_dir: str | None = None) -> str:
    """The current commit hash, with '+dirty' if the tree has uncommitted changes."""
    repo_dir = repo_dir or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo_dir, capture_output=True, text=True, check=True,
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def device() -> dict[str, object]:
    import jax

    devs = jax.devices()
    return {
        "platform": devs[0].platform,
        "device_kind": devs[0].device_kind,
        "num_devices": len(devs),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }


def provenance() -> dict[str, object]:
    """Everything needed to say where and with what a result was produced."""
    return {
        "commit": git_commit(),
        "versions": versions(),
        "device": device(),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
