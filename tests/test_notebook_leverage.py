"""notebooks/leverage_average.py redraws the figures from a results directory (no retraining)."""

import os
import subprocess
import sys

from klrl.tabular.experiment import run_experiment
from klrl.tabular.plots import FIGURES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_notebook_draws_figures_from_quick_results(tmp_path):
    results = tmp_path / "results"
    figures = tmp_path / "figures"
    run_experiment(os.path.join(ROOT, "experiments", "leverage_average.toml"),
                            out_dir=str(results), quick=True)
    env = {**os.environ, "KLRL_RESULTS_DIR": str(results), "KLRL_FIGURES_DIR": str(figures),
           "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "notebooks", "leverage_average.py")],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in FIGURES:
        assert (figures / name).stat().st_size > 10_000, name
    assert "log-log slope" in proc.stdout
    # The notebook only reads: the results directory holds nothing new.
    assert sorted(os.listdir(results)) == sorted(["metrics.csv", "summary.json", "config.json", *FIGURES])
