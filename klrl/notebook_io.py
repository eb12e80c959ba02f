"""What every notebook under notebooks/ takes and where it writes.

- the run directories to draw: `KLRL_RUNS`, a list of paths separated by the OS path separator
  (`:` on Linux, as in PATH) or commas, each a run directory (config.json + metrics.csv, as
  `klrl train` writes it) or a folder holding run directories (searched below); unset, a
  notebook reads its committed runs under results/;
- the folder for figures (and tables): `KLRL_FIGURES_DIR`; unset, `figures/<notebook>/` next to
  notebooks/ (outside results/, so that drawing never touches the committed files).

Runs that do not fit a notebook end it with one line on stderr naming the variable and what it
wants, and exit status 2 (`NotebookInputError`, `fail`), never a silent "0 run(s)".
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Sequence

from klrl.errors import ConfigError

RUNS_ENV = "KLRL_RUNS"
FIGURES_ENV = "KLRL_FIGURES_DIR"
# Sub-folders that hold no run of their own: checkpoints, figures, re-runs of a run directory.
SKIP_DIRS = ("checkpoints", "figures", "runs")


class NotebookInputError(ConfigError):
    """The runs given to a notebook do not fit it (one line: the variable, what it wants)."""


def repo_root(here: str) -> str:
    """The checkout's root: the parent of the notebooks/ folder `here`."""
    return os.path.dirname(os.path.abspath(here))


def run_paths(default: Sequence[str], environ=None) -> tuple[list[str], bool]:
    """(paths, given): the paths of `KLRL_RUNS` (split on os.pathsep and commas, empty parts
    dropped) and True, or `default` and False when it is unset or empty."""
    value = (os.environ if environ is None else environ).get(RUNS_ENV, "")
    parts = [p.strip() for p in re.split(f"[{re.escape(os.pathsep)},]", value) if p.strip()]
    return (parts, True) if parts else (list(default), False)


def figures_dir(root: str, notebook: str, environ=None) -> str:
    """`KLRL_FIGURES_DIR`, else `<root>/figures/<notebook>` (created by the first figure saved, so
    a refused input leaves nothing behind)."""
    return (os.environ if environ is None else environ).get(FIGURES_ENV) or os.path.join(root, "figures", notebook)


def is_run_dir(path: str) -> bool:
    """A directory holding config.json and metrics.csv (what `klrl train` writes)."""
    return os.path.isfile(os.path.join(path, "config.json")) and os.path.isfile(os.path.join(path, "metrics.csv"))


def read_record(path: str) -> dict:
    """A run directory's config.json (its resolved config under "config", its provenance)."""
    with open(os.path.join(path, "config.json")) as fh:
        return json.load(fh)


def train_run_dirs(top: str) -> list[str]:
    """`top` if it is a `klrl train` run directory, else every one below it (sorted; the
    folders of SKIP_DIRS are not searched)."""
    found = []
    for dirpath, dirnames, _ in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        if is_run_dir(dirpath) and "env" in read_record(dirpath).get("config", {}):
            found.append(dirpath)
            dirnames[:] = []                     # a run's sub-folders are its own files
    return found


def find_train_runs(paths: Sequence[str], wanted: str) -> list[str]:
    """The `klrl train` run directories in `paths` (each a run directory or a folder holding
    some); NotebookInputError naming KLRL_RUNS when a path is missing or holds none. `wanted`
    says what the notebook draws, for that message."""
    runs = []
    for path in paths:
        if not os.path.isdir(path):
            raise NotebookInputError(f"{RUNS_ENV}: got {path!r}, which is not a directory; allowed run "
                                     f"directories of {wanted} or folders holding them")
        found = train_run_dirs(path)
        if not found:
            raise NotebookInputError(f"{RUNS_ENV}: got {path!r}, which holds no run directory (config.json and "
                                     f"metrics.csv from `klrl train`); allowed run directories of {wanted}")
        runs += [r for r in found if r not in runs]
    return runs


def fail(err: Exception) -> None:
    """End the notebook on bad input: `error: <message>` on stderr, exit status 2."""
    print(f"error: {err}", file=sys.stderr, flush=True)
    raise SystemExit(2)


__all__ = ["FIGURES_ENV", "NotebookInputError", "RUNS_ENV", "fail", "figures_dir", "find_train_runs",
           "is_run_dir", "read_record", "repo_root", "run_paths", "train_run_dirs"]
