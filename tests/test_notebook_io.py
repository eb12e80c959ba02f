"""klrl.notebook_io: the notebooks' parameters (KLRL_RUNS, KLRL_FIGURES_DIR) and run discovery."""

from __future__ import annotations

import os

import pytest

from klrl.notebook_io import NotebookInputError, figures_dir, find_train_runs, run_paths

from fabricate import fabricate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_run_paths_split_on_pathsep_and_commas():
    env = {"KLRL_RUNS": f"runs/a{os.pathsep}runs/b, runs/c,,"}
    assert run_paths(["results/x"], env) == (["runs/a", "runs/b", "runs/c"], True)
    assert run_paths(["results/x"], {"KLRL_RUNS": " "}) == (["results/x"], False)
    assert run_paths(["results/x"], {}) == (["results/x"], False)


def test_figures_dir_defaults_outside_results_and_is_not_created(tmp_path):
    assert figures_dir(str(tmp_path), "atari", {}) == str(tmp_path / "figures" / "atari")
    assert figures_dir(str(tmp_path), "atari", {"KLRL_FIGURES_DIR": "mine"}) == "mine"
    assert not (tmp_path / "figures").exists()


def test_find_train_runs_walks_folders_and_refuses_empty_ones(tmp_path):
    toml = os.path.join(ROOT, "experiments", "quickstart.toml")
    for name in ("b", "a/nested"):
        fabricate(toml, tmp_path / "runs" / name, ["train.seeds=1", "train.total_steps=25000"])
    (tmp_path / "runs" / "a" / "nested" / "checkpoints").mkdir()
    found = find_train_runs([str(tmp_path / "runs"), str(tmp_path / "runs" / "b")], "test runs")
    assert found == [str(tmp_path / "runs" / "a" / "nested"), str(tmp_path / "runs" / "b")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotebookInputError, match=r"^KLRL_RUNS: got '.*empty', which holds no run directory"):
        find_train_runs([str(tmp_path / "empty")], "test runs")
    with pytest.raises(NotebookInputError, match=r"^KLRL_RUNS: got '.*missing', which is not a directory"):
        find_train_runs([str(tmp_path / "missing")], "test runs")
