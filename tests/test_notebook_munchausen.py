"""notebooks/munchausen_gymnax.py runs on a tiny results folder and draws its figures.

The tiny run is written with klrl's own writers (config.json record + metrics.csv rows from
`klrl.results`), so the notebook reads exactly the format `klrl train` produces, without
paying a training compile here (the CLI tests cover producing that format)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np

from klrl.population import Member
from klrl.results import MetricsWriter, format_chunk

from fabricate import fabricate

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
    env.pop("KLRL_RUNS", None)
    res = subprocess.run([sys.executable, NOTEBOOK], cwd=str(tmp_path), env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "1 run(s)" in res.stdout
    assert "CartPole-v1" in res.stdout and "mdqn" in res.stdout
    for name in ("munchausen_gymnax_curves.png", "munchausen_gymnax_finals.png"):
        assert os.path.getsize(tmp_path / "figures" / name) > 5_000


def _run(notebook, cwd, **env):
    env = {k: v for k, v in {**os.environ, "KLRL_BOOTSTRAP_REPS": "50", "MPLBACKEND": "Agg", **env}.items()
           if v is not None}
    return subprocess.run([sys.executable, str(notebook)], cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=300)


def test_notebook_draws_a_users_runs_into_figures_outside_results(tmp_path):
    """KLRL_RUNS names a user's own run (a fabricated tau sweep, not one of the committed runs);
    without KLRL_FIGURES_DIR the figures go to <checkout>/figures/munchausen_gymnax/ (the
    notebook copied into a scratch checkout, so the default is checked, not the repo's)."""
    runs = tmp_path / "my_runs"
    fabricate(os.path.join(ROOT, "experiments", "quickstart.toml"), runs / "tau_sweep",
              ['sweep.agent.name=["dqn", "mvi"]', "sweep.agent.tau=[0.01, 0.1]", "train.seeds=2",
               "train.total_steps=50000"])
    checkout = tmp_path / "checkout"
    (checkout / "notebooks").mkdir(parents=True)
    shutil.copy(NOTEBOOK, checkout / "notebooks")
    before = sorted(os.walk(runs))
    res = _run(checkout / "notebooks" / "munchausen_gymnax.py", tmp_path, KLRL_RUNS=str(runs),
               KLRL_FIGURES_DIR=None, KLRL_RESULTS_DIR=None)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "1 run(s)" in res.stdout and "mvi (tau=0.1)" in res.stdout
    for name in ("munchausen_gymnax_curves.png", "munchausen_gymnax_finals.png"):
        assert os.path.getsize(checkout / "figures" / "munchausen_gymnax" / name) > 5_000
    assert sorted(os.walk(runs)) == before             # the notebook only reads the runs


def test_notebook_refuses_paths_without_runs(tmp_path):
    """A KLRL_RUNS path holding no run directory, or missing: one line naming it, exit status 2."""
    empty = tmp_path / "empty"
    (empty / "notes").mkdir(parents=True)
    res = _run(NOTEBOOK, tmp_path, KLRL_RUNS=f"{empty},{tmp_path / 'missing'}", KLRL_FIGURES_DIR=str(tmp_path / "f"))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: KLRL_RUNS: got {str(empty)!r}, which holds no run directory (config.json and metrics.csv "
        "from `klrl train`); allowed run directories of gymnax or MinAtar agents"]
    assert not (tmp_path / "f").exists()               # nothing written


def test_notebook_is_a_jupytext_percent_script():
    import jupytext

    nb = jupytext.read(NOTEBOOK)
    kinds = [c.cell_type for c in nb.cells]
    assert kinds.count("markdown") >= 3 and kinds.count("code") >= 3
