"""notebooks/qsharp_frontier.py runs on a tiny results folder and draws the frontier.

The tiny runs are written with klrl's own writers (config.json record + metrics.csv rows from
`klrl.results`), the format `klrl train` produces (tests/test_reference.py covers producing it
with a real Q♯ run), so no training compile is paid here.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np

from klrl.population import Member
from klrl.results import MetricsWriter, format_chunk, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "qsharp_frontier.py")


def _tiny_run(run_dir: str, agents, mode: str, etas, kl: bool = True, score=None) -> None:
    os.makedirs(run_dir)
    members = [Member(i, s, g, a, {"agent.eta": e} if etas else {})
               for i, (a, g, e, s) in enumerate((a, g, e, s) for a in agents for g, e in enumerate(etas or [None])
                                                for s in range(3))]
    record = {"config": {"env": {"name": "CartPole-v1"}, "agent": {"name": list(agents), "qsharp_mode": mode}},
              "provenance": {"commit": "test"}}
    if score is not None:                        # the run's score rule (config.json's "config" -> "eval")
        record["config"]["eval"] = score
    with open(os.path.join(run_dir, "config.json"), "w") as fh:
        json.dump(record, fh)
    columns = ["agent.eta"] if etas else []
    w = MetricsWriter(os.path.join(run_dir, "metrics.csv"), columns)
    rng = np.random.default_rng(len(agents))
    n = len(members)
    for step in (100, 200, 300):
        m = {"step": np.full(n, step, np.float32), "eval_return": rng.uniform(20, 200, n).astype(np.float32),
             "loss": rng.uniform(0, 1, n).astype(np.float32), "diverged": np.zeros(n, np.float32)}
        if kl:
            m["kl_ref"] = rng.uniform(0, 0.5, n).astype(np.float32)
        w.append(format_chunk(members, columns, m))


def test_notebook_draws_the_frontier_of_tiny_runs(tmp_path):
    results = tmp_path / "results"
    _tiny_run(str(results / "td"), ["qsharp", "qsharp_cd", "kl_prior"], "td", [1.0, 10.0])
    _tiny_run(str(results / "rollout"), ["qsharp"], "rollout", [1.0, 10.0], score={"score": "mean_last_k",
                                                                                    "score_k": 2})
    _tiny_run(str(results / "c51"), ["c51"], "td", None)
    _tiny_run(str(results / "reference"), ["dqn"], "td", None, kl=False)
    before = sorted(os.walk(results))
    figures = tmp_path / "figures"
    env = {**os.environ, "KLRL_RUNS": str(results), "KLRL_FIGURES_DIR": str(figures), "KLRL_BOOTSTRAP_REPS": "50",
           "MPLBACKEND": "Agg"}
    res = subprocess.run([sys.executable, NOTEBOOK], cwd=str(tmp_path), env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "4 run(s)" in res.stdout
    for method in ("Q♯ (td)", "Q♯ (rollout)", "CD (td)", "soft-Q prior (td)", "C51"):
        assert method in res.stdout
    for name in ("qsharp_frontier.png", "qsharp_vs_eta.png"):
        assert os.path.getsize(figures / name) > 5_000
    assert sorted(os.walk(results)) == before          # everything goes to KLRL_FIGURES_DIR
    with open(figures / "frontier.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * 2 + 2 + 1           # (method, η) points; the reference run has no kl_ref
    assert all(int(r["seeds"]) == 3 for r in rows)
    meta = json.loads((figures / "frontier.json").read_text())
    assert "provenance" in meta
    assert {r["run"]: r["score"] for r in meta["runs"]} == {
        "c51": "mean of the last 3 evaluations", "reference": "mean of the last 3 evaluations",   # the default rule
        "rollout": "mean of the last 2 evaluations", "td": "mean of the last 3 evaluations"}
    for p in meta["points"]:                     # each run's points by its own rule, per member
        vals = {}
        for r in read_metrics(str(results / p["run"] / "metrics.csv")):
            if r["agent"] == p["agent"] and r.get("agent.eta") in (p["eta"], None):
                vals.setdefault(r["metric"], {}).setdefault(r["member"], []).append(r["value"])
        k = 2 if p["run"] == "rollout" else 3
        assert p["returns"] == [float(np.mean(v[-k:])) for _, v in sorted(vals["eval_return"].items())]
        assert p["kls"] == [float(np.mean(v[-k:])) for _, v in sorted(vals["kl_ref"].items())]


def test_notebook_refuses_runs_without_kl_ref(tmp_path):
    """A user's runs that give no frontier point (no kl_ref): one line naming KLRL_RUNS, exit 2,
    no figure."""
    runs = tmp_path / "my_runs"
    _tiny_run(str(runs / "dqn_only"), ["dqn"], "td", None, kl=False)
    figures = tmp_path / "figures"
    env = {**os.environ, "KLRL_RUNS": str(runs), "KLRL_FIGURES_DIR": str(figures), "MPLBACKEND": "Agg"}
    res = subprocess.run([sys.executable, NOTEBOOK], cwd=str(tmp_path), env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-3000:]
    assert res.stderr.strip().splitlines() == [
        f"error: KLRL_RUNS: got {runs}, whose runs have no kl_ref metric; allowed runs of agents with "
        "agent.reference set (qsharp, qsharp_cd, kl_prior, c51)"]
    assert not figures.exists()                        # nothing written


def test_notebook_is_a_jupytext_percent_script():
    import jupytext

    nb = jupytext.read(NOTEBOOK)
    kinds = [c.cell_type for c in nb.cells]
    assert kinds.count("markdown") >= 3 and kinds.count("code") >= 3
