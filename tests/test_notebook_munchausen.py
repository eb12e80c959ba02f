"""notebooks/munchausen_gymnax.py runs on a tiny results folder and draws its figures.

The tiny run is written with klrl's own writers (config.json record + metrics.csv rows from
`klrl.results`), so the notebook reads exactly the format `klrl train` produces, without
paying a training compile here (the CLI tests cover producing that format)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from klrl.population import Member
from klrl.results import MetricsWriter, format_chunk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "munchausen_gymnax.py")


def _tiny_run(run_dir: str) -> None:
    os.makedirs(run_dir)
    members = [Member(i, i % 3, 0, agent, {}) for i, agent in enumerate(["dqn"] * 3 + ["mdqn"] * 3)]
    record = {"config": {"env": {"name": "CartPole-v1"}, "agent": {"name": ["dqn", "mdqn"]},
                         "train": {"seeds": [0, 1, 2], "total_steps": 300}},
              "provenance": {"commit": "test", "device": {"platform": "cpu"}}}
    with open(os.path.join(run_dir, "config.json"), "w") as fh:
        json.dump(record, fh)
    w = MetricsWriter(os.path.join(run_dir, "metrics.csv"), [])
    rng = np.random.default_rng(0)
    for step in (100, 200, 300):
        m = {"step": np.full(6, step, np.float32), "eval_return": rng.uniform(0, step, 6).astype(np.float32),
             "train_return": rng.uniform(0, step, 6).astype(np.float32),
             "loss": rng.uniform(0, 1, 6).astype(np.float32), "diverged": np.zeros(6, np.float32)}
        w.append(format_chunk(members, [], m))


def test_notebook_runs_on_a_tiny_run(tmp_path):
    results = tmp_path / "results"
    _tiny_run(str(results / "quickstart"))
    _tiny_run(str(results / "other_notebook_run"))      # not one of this notebook's runs
    env = {**os.environ, "KLRL_RESULTS_DIR": str(results), "KLRL_FIGURES_DIR": str(tmp_path / "figures"),
           "KLRL_BOOTSTRAP_REPS": "50", "MPLBACKEND": "Agg"}
    res = subprocess.run([sys.executable, NOTEBOOK], cwd=str(tmp_path), env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "1 run(s)" in res.stdout
    assert "CartPole-v1" in res.stdout and "mdqn" in res.stdout
    for name in ("munchausen_gymnax_curves.png", "munchausen_gymnax_finals.png"):
        assert os.path.getsize(tmp_path / "figures" / name) > 5_000


def test_notebook_is_a_jupytext_percent_script():
    import jupytext

    nb = jupytext.read(NOTEBOOK)
    kinds = [c.cell_type for c in nb.cells]
    assert kinds.count("markdown") >= 3 and kinds.count("code") >= 3
