"""notebooks/munchausen_minatar.py on a tiny results folder: fabricated run directories
(tests/fabricate.py, make test) or real tiny `klrl train` runs (slow).

The folder has the layout of results/minatar_munchausen/<Game> and results/minatar_mvi_q/<Game>,
the experiment TOMLs shrunk by `--set` (2,000 steps in 2 chunks, 2 seeds, dqn + mdqn, q = 1, 2):

- munchausen/Asterix: finished;
- munchausen/Breakout: in progress, a real one: the run SIGKILLs itself (the runner's test
  hook) after DQN's last chunk, before M-DQN starts, so it has no summary.json;
- mvi_q/Breakout (no finished DQN run there: min-max over q) and mvi_q/Asterix (DQN-normalized).

The real runs' five compiles are their cost; they go in two processes at once and share the
test run's persistent JAX compilation cache (conftest).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import pytest

from fabricate import fabricate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "munchausen_minatar.py")
MUNCHAUSEN = os.path.join(ROOT, "experiments", "minatar_munchausen.toml")
MVI = os.path.join(ROOT, "experiments", "minatar_mvi_q.toml")
TINY = ["env.num_envs=2", "agent.hidden=[16]", "train.total_steps=2000", "train.chunk_steps=1000",
        "train.buffer_size=2000", "train.learning_starts=500", "train.batch_size=8", "train.seeds=2"]

DRIVER = """
import json, os, sys
from klrl.hooks import KILL_ENV
from klrl.runner import run_experiment
for toml, out, overrides, kill_after in json.loads(sys.argv[1]):
    if kill_after:
        os.environ[KILL_ENV] = str(kill_after)
    run_experiment(toml, out, overrides)
"""


AGENTS_SWEEP, Q_SWEEP = 'sweep.agent.name=["dqn", "mdqn"]', "sweep.agent.entropic_index=[1.0, 2.0]"


def _job(results, exp_dir, toml, sweep, game, kill_after=0):
    out = os.path.join(results, exp_dir, game)
    return [toml, out, [*TINY, f"env.name={game}-MinAtar", sweep], kill_after]


def _train_tiny_runs(results, env):
    """The four real tiny runs, in two processes at once; Breakout's Munchausen run SIGKILLs itself."""
    agents, qs = AGENTS_SWEEP, Q_SWEEP
    first = [_job(results, "minatar_munchausen", MUNCHAUSEN, agents, "Asterix"),
             _job(results, "minatar_mvi_q", MVI, qs, "Asterix")]
    second = [_job(results, "minatar_mvi_q", MVI, qs, "Breakout"),
              _job(results, "minatar_munchausen", MUNCHAUSEN, agents, "Breakout", kill_after=2)]
    procs = [subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(jobs)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for jobs in (first, second)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert procs[0].returncode == 0, outs[0][1][-3000:]
    assert procs[1].returncode == -signal.SIGKILL, outs[1][1][-3000:]


def _fabricate_tiny_runs(runs):
    """The same four run directories written without training (tests/fabricate.py), in a user's
    own folder names (the notebook sorts them by what they ran); Breakout's Munchausen run stops
    after DQN's population, as the killed real run does. Returns that unfinished run's path."""
    for i, (name, toml, sweep, game) in enumerate([
            ("ablation_asterix", MUNCHAUSEN, AGENTS_SWEEP, "Asterix"),
            ("q_asterix", MVI, Q_SWEEP, "Asterix"),
            ("q_breakout", MVI, Q_SWEEP, "Breakout")]):
        _, _, overrides, _ = _job(runs, "", toml, sweep, game)
        fabricate(toml, os.path.join(runs, name), overrides, seed=i, nan_every=4)
        assert os.path.isfile(os.path.join(runs, name, "summary.json"))
    _, _, overrides, _ = _job(runs, "", MUNCHAUSEN, AGENTS_SWEEP, "Breakout")
    out = os.path.join(runs, "ablation_breakout")
    fabricate(MUNCHAUSEN, out, overrides, seed=3, stop_after_agent="dqn", finished=False)
    return out


def _check_notebook_on(results, tmp_path, env, unfinished, runs_env="KLRL_RESULTS_DIR"):
    """The notebook on `results` (given as `runs_env`); `unfinished`: Breakout's Munchausen run."""
    assert os.path.isdir(unfinished) and not os.path.exists(os.path.join(unfinished, "summary.json"))
    before = sorted(os.walk(results))

    summary_path = tmp_path / "summary" / "minatar.json"
    figures = tmp_path / "figures"
    nb_env = {**env, runs_env: results, "KLRL_FIGURES_DIR": str(figures), "KLRL_BOOTSTRAP_REPS": "200",
              "KLRL_WRITE_SUMMARY": str(summary_path), "MPLBACKEND": "Agg"}
    res = subprocess.run([sys.executable, NOTEBOOK], cwd=str(tmp_path), env=nb_env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert "Breakout: in progress" in out and "Asterix: complete" in out
    assert "not found: SpaceInvaders" in out
    assert "SUMMARY {" in out
    for name in ("munchausen_minatar_curves.png", "mvi_q_minatar_curves.png",
                 "munchausen_minatar_aggregate.png", "mvi_q_minatar_aggregate.png"):
        assert os.path.getsize(figures / name) > 5_000, name
    assert sorted(os.walk(results)) == before          # the notebook only reads

    s = json.loads(summary_path.read_text())
    assert set(s["random_return"]) == {"Breakout", "Asterix"}
    assert all(math.isfinite(v) for v in s["random_return"].values())
    assert set(s["dqn_final"]) == {"Asterix"}           # Breakout's DQN run is unfinished
    m, q = s["experiments"]["munchausen"], s["experiments"]["mvi_q"]
    assert m["games"] == ["Asterix"] and m["in_progress"] == ["Breakout"]
    assert m["normalization"] == {"Asterix": "dqn"}
    assert list(m["aggregate"]) == ["dqn", "mdqn"] and set(m["raw_final"]) == {"dqn", "mdqn"}
    assert set(m["raw_final"]["dqn"]) == {"Asterix"} and m["raw_final"]["dqn"]["Asterix"]["n"] == 2
    dqn = m["aggregate"]["dqn"]
    assert dqn["mean"] == pytest.approx(1.0, abs=1e-9)  # DQN-normalized mean of DQN itself: 1 by construction
    assert dqn["runs"] == 2 and dqn["tasks"] == 1
    for stat in ("iqm", "mean", "median"):
        assert math.isfinite(dqn[stat]) and dqn[f"{stat}_ci_low"] <= dqn[stat] <= dqn[f"{stat}_ci_high"]
    assert q["games"] == ["Breakout", "Asterix"] and q["in_progress"] == []
    assert q["normalization"] == {"Breakout": "minmax_q", "Asterix": "dqn"}
    assert list(q["aggregate"]) == ["q=1", "q=2"]
    assert all(a["tasks"] == 2 and math.isfinite(a["iqm"]) for a in q["aggregate"].values())


def test_notebook_on_fabricated_minatar_runs(tmp_path):
    """A user's runs (KLRL_RUNS, own folder names): figures into KLRL_FIGURES_DIR."""
    runs = str(tmp_path / "my_runs")
    unfinished = _fabricate_tiny_runs(runs)
    _check_notebook_on(runs, tmp_path, dict(os.environ), unfinished, runs_env="KLRL_RUNS")


def test_notebook_refuses_a_run_of_another_experiment(tmp_path):
    """A MinAtar run that is neither the ablation nor MVI(q) (dqn, mdqn and mvi at one q):
    one line naming it, exit status 2, before any figure or JAX compile."""
    other = tmp_path / "my_runs" / "breakout_three_agents"
    fabricate(os.path.join(ROOT, "experiments", "minatar_breakout.toml"), other,
              ["train.seeds=1", "train.total_steps=2000", "train.chunk_steps=1000"])
    figures = tmp_path / "figures"
    res = subprocess.run([sys.executable, NOTEBOOK], cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
                         env={**os.environ, "KLRL_RUNS": str(tmp_path / "my_runs"), "KLRL_FIGURES_DIR": str(figures),
                              "MPLBACKEND": "Agg"})
    assert res.returncode == 2, res.stderr[-3000:]
    assert res.stderr.strip().splitlines() == [
        f"error: KLRL_RUNS: got {str(other)!r} (Breakout-MinAtar, agents dqn, mdqn, mvi); allowed MinAtar runs of "
        "dqn, soft_dqn, al, mdqn (experiments/minatar_munchausen.toml) or of mvi swept over agent.entropic_index "
        "(experiments/minatar_mvi_q.toml)"]
    assert not figures.exists()                        # nothing written


@pytest.mark.slow
def test_notebook_on_tiny_minatar_runs(tmp_path, jax_cache_env):
    results = str(tmp_path / "results")
    env = {**os.environ, **jax_cache_env}
    env.pop("KLRL_TEST_KILL_AFTER_CHUNKS", None)
    _train_tiny_runs(results, env)
    _check_notebook_on(results, tmp_path, env, os.path.join(results, "minatar_munchausen", "Breakout"))


def test_notebook_is_a_jupytext_percent_script():
    import jupytext

    nb = jupytext.read(NOTEBOOK)
    kinds = [c.cell_type for c in nb.cells]
    assert kinds.count("markdown") >= 5 and kinds.count("code") >= 5
