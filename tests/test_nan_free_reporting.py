"""What a user reads never shows NaN: a short run where no episode has ended yet.

The progress line shows "—" for a metric nothing measured, summary.json is strict JSON (null,
never a bare NaN), the printed summary shows "—", `klrl plot` marks an empty panel instead of
warning, and the ETA counts the slow phase after `learning_starts` (klrl.eta).
"""

from __future__ import annotations

import io
import json
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fabricate import fabricate
from klrl.eta import PhaseSpeeds, phase_speeds, phase_steps, time_left
from klrl.hooks import ProgressLog
from klrl.loop import LoopRun
from klrl.summary import print_summary

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "experiments" / "quickstart.toml"
SHORT = ["train.total_steps=2000", "train.chunk_steps=500", "train.seeds=2"]


def _refuse(constant):
    raise ValueError(f"bare {constant} in JSON")


def test_phase_steps_split_a_chunk_at_learning_starts():
    assert phase_steps(0, 500, 1000) == (500, 0)
    assert phase_steps(500, 1500, 1000) == (500, 500)
    assert phase_steps(1000, 1500, 1000) == (0, 500)
    assert phase_steps(0, 500, 0) == (0, 500)


def test_eta_is_a_lower_bound_until_the_learning_phase_is_timed():
    """1 s per 500 fast steps, then 100 s per 500 learning steps: an ETA from the first chunk
    alone would say 7 s for the 3,500 steps left; it is flagged as a lower bound, and once a
    learning chunk is timed the estimate uses its speed for the learning steps."""
    timed = [(500, 0, 1.0)]
    first = time_left(phase_speeds(timed), 500, 4000, 1000)
    assert first.lower_bound and first.seconds == pytest.approx(7.0)
    timed += [(500, 0, 1.0), (0, 500, 100.0)]
    later = time_left(phase_speeds(timed), 1500, 4000, 1000)
    assert not later.lower_bound and later.seconds == pytest.approx(500.0)


def test_a_straddling_chunk_is_split_with_the_first_phase_speed():
    speeds = phase_speeds([(500, 0, 1.0), (250, 250, 50.5)])
    assert speeds == PhaseSpeeds(before=pytest.approx(0.002), learning=pytest.approx(0.2))
    assert time_left(speeds, 1000, 2000, 750).seconds == pytest.approx(200.0)
    # No first-phase chunk timed alone: the whole chunk is charged to learning (longer, not shorter).
    assert phase_speeds([(250, 250, 50.5)]).learning == pytest.approx(0.202)
    assert math.isnan(phase_speeds([]).learning)


def _progress_line(capsys, metrics, done, seconds, learning_starts=1000):
    pop = SimpleNamespace(agent="dqn", size=2)
    run = LoopRun(pop, num_chunks=8, chunk_steps=500, start=0, state=None)
    hook = ProgressLog(total_steps=4000, learning_starts=learning_starts)
    hook.on_start(run)
    for c in range(done):
        run.ran, run.run_seconds = c + 1, seconds[c]
        hook.on_chunk(run, metrics)
    return capsys.readouterr().err.strip().splitlines()


def test_progress_line_shows_a_dash_for_nothing_measured(capsys):
    nan = np.full(2, np.nan, np.float32)
    metrics = {"step": np.full(2, 500), "eval_return": nan, "train_return": nan, "loss": nan}
    lines = _progress_line(capsys, metrics, done=1, seconds=[1.0])
    assert "nan" not in lines[0].lower(), lines[0]
    assert "eval — train — (medians over 2) | loss —" in lines[0]
    assert "ETA ~0:00:07 (updates not timed yet" in lines[0]


def test_progress_line_eta_after_the_learning_phase_is_timed(capsys):
    metrics = {"step": np.full(2, 1500), "eval_return": np.array([1.0, np.nan]),
               "train_return": np.array([2.0, 4.0]), "loss": np.array([0.5, np.nan])}
    lines = _progress_line(capsys, metrics, done=3, seconds=[1.0, 2.0, 102.0])
    assert "eval 1.0 train 3.0 (medians over 2) | loss 0.5 | ETA 0:08:20" in lines[-1]


def test_summary_json_is_strict_and_the_table_shows_dashes(tmp_path):
    """Every evaluation NaN (no episode ended): scores are null in summary.json, "—" in the table."""
    fabricate(QUICKSTART, tmp_path, SHORT, nan_every=1, final_eval=False)
    text = (tmp_path / "summary.json").read_text()
    doc = json.loads(text, parse_constant=_refuse)
    row = doc["summary"][0]
    assert row["final_eval_return"]["median"] is None and row["final_eval_return"]["iqm_ci_low"] is None
    assert row["final_eval_returns"] == [None, None]
    out = io.StringIO()
    print_summary(doc["summary"], file=out)
    table = out.getvalue()
    assert "nan" not in table.lower() and "—" in table


def test_plot_marks_empty_panels_without_warnings(tmp_path):
    """No eval_return measured: the panel says so, the legend goes to a panel with lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from klrl.plotting import plot_curves, plot_run
    from klrl.results import read_metrics, swept_columns

    fabricate(QUICKSTART, tmp_path, SHORT, nan_every=1, final_eval=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = plot_run(str(tmp_path))
    assert Path(paths[0]).stat().st_size > 0
    rows, columns = read_metrics(str(tmp_path / "metrics.csv")), swept_columns(str(tmp_path / "metrics.csv"))
    fig, (empty, full) = plt.subplots(1, 2)
    assert plot_curves(empty, rows, "eval_return", columns, "eval") == 0
    assert [t.get_text() for t in empty.texts] == ["nothing measured yet"]
    assert plot_curves(full, rows, "train_return", columns, "train") == 3 and not full.texts
    plt.close(fig)
