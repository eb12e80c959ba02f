"""notebooks/qsharp_stargraph.py draws a star-graph summary.json and refuses what is not one.

The summaries are made up here (numbers chosen by the test, in the schema that
`python -m klrl.stargraph run` writes: task, pi_ref, methods, frontier), so no model is trained.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "qsharp_stargraph.py")

# name -> (family, accuracy mean, ci95, kl mean, ci95): made-up numbers, distinct per method.
FAMILY = {"pi_ref": "reference", "qsharp": "value", "cd": "value", "qsharp_alg1": "value", "cd_alg1": "value",
          "qsharp_oracle": "oracle", "cd_oracle": "oracle", "reinforce": "policy", "rpo": "policy", "dpo": "policy"}
LABEL = {"pi_ref": "π_ref", "qsharp": "Q♯", "cd": "CD", "qsharp_alg1": "Q♯ (Alg. 1)", "cd_alg1": "CD (Alg. 1)",
         "qsharp_oracle": "Q♯ (oracle)", "cd_oracle": "CD (oracle)", "reinforce": "REINFORCE", "rpo": "RPO",
         "dpo": "DPO"}


def _stat(mean: float, ci: float) -> dict:
    return {"mean": mean, "ci95": ci}


def _method(i: int, name: str, seeds: int = 0) -> dict:
    acc, kl = 0.1 + 0.0812 * i, 0.0371 * i
    m = {"accuracy": _stat(acc, 0.0123 + i / 1000), "kl": _stat(kl, 0.0045 + i / 1000), "n": 200 + i,
         "family": FAMILY[name]}
    if seeds:
        m["seeds"] = [{"seed": s, "accuracy": _stat(acc + 0.01 * s, 0.02), "kl": _stat(kl, 0.01)}
                      for s in range(seeds)]
    return m


def _summary(names, frontier=True) -> dict:
    """rpo with one seed's row (as a single-seed run writes it), reinforce and dpo with three."""
    methods = {n: _method(i, n, seeds={"reinforce": 3, "dpo": 3, "rpo": 1}.get(n, 0)) for i, n in enumerate(names)}
    curves = {}
    if frontier:
        etas = (1.0, 0.3, 0.1, 0.03)
        for j, name in enumerate(("qsharp", "cd", "qsharp_alg1", "cd_alg1", "qsharp_oracle", "cd_oracle")):
            curves[name] = [{"eta": eta, "accuracy": _stat(0.5 + 0.1 * k - 0.05 * j, 0.02),
                             "kl": _stat(0.2 * k + 0.03 * j, 0.01)} for k, eta in enumerate(etas)]
        curves["closed_form"] = [{"eta": eta, "success": 0.55 + 0.1 * k, "kl": 0.2 * k} for k, eta in enumerate(etas)]
    return {"task": {"degree": 2, "path_length": 5, "num_nodes": 50}, "config": {},
            "pi_ref": {"teacher_forced": {"accuracy": [1.0, 0.5, 1.0, 1.0, 1.0], "nll": 0.17}, "parameters": 1000},
            "methods": methods, "frontier": curves, "seconds": {"total": 1.0}, "machine": "test",
            "provenance": {"commit": "test"}}


def _run(tmp_path, results):
    figures = tmp_path / "figures"
    env = {**os.environ, "KLRL_RUNS": str(results), "KLRL_FIGURES_DIR": str(figures), "MPLBACKEND": "Agg"}
    res = subprocess.run([sys.executable, NOTEBOOK], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                         timeout=300)
    return res, figures


def _write(path, summary) -> None:
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps(summary))


def test_notebook_draws_bars_frontier_and_table_of_a_summary(tmp_path):
    summary = _summary(list(FAMILY))
    _write(tmp_path / "run", summary)
    res, figures = _run(tmp_path, tmp_path / "run")
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("stargraph_accuracy_kl.png", "stargraph_frontier.png"):
        assert os.path.getsize(figures / name) > 10_000
    with open(figures / "methods.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == list(FAMILY)          # the paper's order, grouped by family
    md = (figures / "methods.md").read_text()
    for r in rows:
        m = summary["methods"][r["name"]]
        assert (r["method"], r["family"]) == (LABEL[r["name"]], FAMILY[r["name"]])
        assert float(r["accuracy_mean"]) == m["accuracy"]["mean"] and float(r["accuracy_ci95"]) == m["accuracy"]["ci95"]
        assert float(r["kl_mean"]) == m["kl"]["mean"] and float(r["kl_ci95"]) == m["kl"]["ci95"]
        assert int(r["n"]) == m["n"] and int(r["seeds"]) == {"reinforce": 3, "dpo": 3}.get(r["name"], 1)
        assert (f"| {LABEL[r['name']]} | {m['family']} | {m['accuracy']['mean']:.3f} ± {m['accuracy']['ci95']:.3f} | "
                f"{m['kl']['mean']:.3f} ± {m['kl']['ci95']:.3f} | {m['n']} |") in md
    assert "1/d = 0.500" in md
    assert "π_ref teacher-forced accuracy per target position: 1.00, 0.50, 1.00, 1.00, 1.00" in res.stdout


def test_notebook_draws_the_methods_present_only(tmp_path):
    """Missing methods are absent (not zero bars); no frontier means no frontier figure."""
    _write(tmp_path / "run", _summary(["pi_ref", "dpo"], frontier=False))
    res, figures = _run(tmp_path, tmp_path / "run")
    assert res.returncode == 0, res.stderr[-3000:]
    with open(figures / "methods.csv") as fh:
        assert [r["name"] for r in csv.DictReader(fh)] == ["pi_ref", "dpo"]
    assert (figures / "stargraph_accuracy_kl.png").exists()
    assert not (figures / "stargraph_frontier.png").exists()
    assert "no frontier" in res.stdout


def test_notebook_refuses_a_folder_without_a_summary(tmp_path):
    """An empty folder, a summary without methods, a frontier point without numbers: one line
    naming KLRL_RUNS, exit 2, nothing written."""
    (tmp_path / "empty").mkdir()
    res, figures = _run(tmp_path, tmp_path / "empty")
    assert res.returncode == 2, res.stderr[-3000:]
    assert res.stderr.strip().splitlines() == [
        f"error: KLRL_RUNS: got {str(tmp_path / 'empty')!r}, which has no summary.json; allowed one star-graph "
        "result directory (its summary.json, from `python -m klrl.stargraph run`)"]
    assert not figures.exists()
    _write(tmp_path / "no_methods", {**_summary([]), "methods": {}})
    res, figures = _run(tmp_path, tmp_path / "no_methods")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr[-3000:]
    assert "summary.json lists no methods" in res.stderr
    assert not figures.exists()
    broken = _summary(["pi_ref"])
    del broken["frontier"]["cd"][2]["kl"]
    _write(tmp_path / "broken", broken)
    res, figures = _run(tmp_path, tmp_path / "broken")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr[-3000:]
    assert "whose frontier 'cd' has a point without eta and accuracy/kl mean and ci95" in res.stderr
    assert not figures.exists()


def test_notebook_is_a_jupytext_percent_script():
    import jupytext

    nb = jupytext.read(NOTEBOOK)
    kinds = [c.cell_type for c in nb.cells]
    assert kinds.count("markdown") >= 4 and kinds.count("code") >= 4
