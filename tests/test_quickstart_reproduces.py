"""`make run` reproduces the committed quickstart (results/quickstart), the run README's first
results row quotes.

The slow test runs the Makefile's `run` recipe fresh into a temporary folder and compares its
metrics.csv with the committed one byte for byte: same config and seed give the same numbers
on the same machine and device count (the engine's determinism contract). The device count is
the one the committed run recorded (config.json `provenance.device.num_devices`), forced with
XLA's host-platform device count, because a population sharded over another number of devices
differs at float rounding, and 300k steps of RL turn rounding into different episodes.
A failure names the first differing row and the commit that produced the committed run: an
engine change that alters numbers must re-run `make run` and update results/quickstart and
README's quickstart row together (the fast test in test_readme.py checks that row against
results/quickstart/summary.json).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "results" / "quickstart"


def make_run_args() -> list[str]:
    """The arguments `make run` gives `klrl` (the Makefile's `run:` recipe), without `--out`."""
    text = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^run:.*\n\t(.+)$", text, re.M)
    assert recipe, "Makefile has no `run:` target with a one-line recipe"
    words = shlex.split(recipe.group(1))
    assert words[0].endswith("/klrl"), words
    args = words[1:]
    if "--out" in args:
        i = args.index("--out")
        del args[i:i + 2]
    return args


def first_difference(a: list[str], b: list[str]) -> str:
    """The first differing line of two files' lines (1-based line number and both lines)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"line {i + 1}: committed {x!r}, fresh {y!r}"
    return f"lengths differ: committed {len(a)} lines, fresh {len(b)}"


def test_make_run_args_are_the_quickstart():
    args = make_run_args()
    assert args[:2] == ["train", "experiments/quickstart.toml"], args


@pytest.mark.slow
def test_make_run_reproduces_the_committed_quickstart(tmp_path):
    record = json.loads((COMMITTED / "config.json").read_text())
    devices = int(record["provenance"]["device"]["num_devices"])
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    out = tmp_path / "quickstart"
    proc = subprocess.run([sys.executable, "-m", "klrl.cli", *make_run_args(), "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=3600,
                          env={**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]

    from klrl.config import engine_schema

    fresh = json.loads((out / "config.json").read_text())
    made_by = record["provenance"]["commit"]
    # record_hash: today's hash of the committed record (a record of an earlier schema version
    # is upgraded first), so a record that predates the hash formula still compares.
    assert fresh["config_hash"] == engine_schema().record_hash(record), (
        f"experiments/quickstart.toml no longer resolves to the committed run's config (made at {made_by}): "
        "re-run `make run` and commit results/quickstart")
    assert fresh["provenance"]["device"]["num_devices"] == devices
    committed_rows = (COMMITTED / "metrics.csv").read_text().splitlines()
    fresh_rows = (out / "metrics.csv").read_text().splitlines()
    assert fresh_rows == committed_rows, (
        f"`make run` no longer reproduces results/quickstart (made at {made_by}, {devices} device(s)): "
        f"{first_difference(committed_rows, fresh_rows)}; re-run `make run`, commit results/quickstart "
        "and update README's quickstart row")
    committed_summary = json.loads((COMMITTED / "summary.json").read_text())["summary"]
    fresh_summary = json.loads((out / "summary.json").read_text())["summary"]
    assert fresh_summary == committed_summary, (
        "same metrics.csv, different summary.json: the score rule changed since the committed run; "
        "re-run `make run` and update README's quickstart row")
