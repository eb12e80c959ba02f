"""klrl.plotting / klrl.plot_style: the figure of a sweep, on fabricated run directories
(tests/fabricate.py: the runner's writers and member table, made-up values; no training).

The run: quickstart.toml with DQN and MVI swept over tau (DQN does not use tau: its group has no
tau value) and 3 seeds, 4 chunks; every 4th evaluation NaN (concurrent evaluation)."""

from __future__ import annotations

import os

import matplotlib
import numpy as np
import pytest

from klrl import cli
from klrl.plot_style import group_colors, short_number
from klrl.plotting import plot_run, run_figure
from klrl.results import final_scores, read_metrics, score_rule, summarize, swept_columns

from fabricate import fabricate

matplotlib.use("Agg")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOML = os.path.join(ROOT, "experiments", "quickstart.toml")
SWEEP = ['sweep.agent.name=["dqn", "mvi"]', "sweep.agent.tau=[0.001, 0.01, 0.1]", "train.seeds=3",
         "train.total_steps=100000", "train.chunk_steps=25000"]


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("plot") / "sweep"
    fabricate(TOML, out, SWEEP, nan_every=4, scale=400.0)
    return str(out)


@pytest.mark.parametrize("x, label", [(0, "0"), (950, "950"), (10_000, "10k"), (25_000, "25k"),
                                      (1_500_000, "1.5M"), (2e9, "2G"), (-20.75, "-20.75"), (0.05, "0.05"),
                                      (12_500, "12.5k"), (float("nan"), "")])
def test_short_number(x, label):
    assert short_number(x) == label


def test_one_colour_family_per_agent_and_shades_per_value():
    keys = [("mvi", 0.1), ("dqn", None), ("mvi", 0.001), ("mvi", 0.01)]
    colors = group_colors(keys)
    mvi = [np.array(colors[("mvi", v)][:3]) for v in (0.001, 0.01, 0.1)]
    # One family: the same hue order of channels; shades darker as the value grows.
    brightness = [c.sum() for c in mvi]
    assert brightness[0] > brightness[1] > brightness[2]
    assert all(np.argmax(c) == np.argmax(mvi[0]) for c in mvi)
    dqn = np.array(colors[("dqn", None)][:3])
    assert np.argmax(dqn) != np.argmax(mvi[0]) or np.abs(dqn - mvi[1]).max() > 0.2   # another family


def test_sweep_figure_has_score_panel_with_the_summary_numbers(sweep_run):
    fig = run_figure(sweep_run)
    path = os.path.join(sweep_run, "metrics.csv")
    rows, columns = read_metrics(path), swept_columns(path)
    assert columns == ["tau"]
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    assert len(axes) == 4                              # 3 curve panels + the tau panel, 2 x 2
    score_ax = axes[3]
    assert score_ax.get_xlabel() == "tau" and score_ax.get_xscale() == "log"   # tau spans 2 decades
    # Every MVI point is the IQM of its seeds' final scores by the run's rule (the summary's
    # number), its error bar the bootstrap 95% CI; DQN (no tau) is a level line.
    import json

    rule = score_rule(json.load(open(os.path.join(sweep_run, "config.json")))["config"])
    finals = final_scores(rows, "eval_return", columns, *rule)
    want = sorted(summarize(finals[("mvi", t)])["iqm"] for t in (0.001, 0.01, 0.1))
    got = sorted(float(c.lines[0].get_ydata()[0]) for c in score_ax.containers)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    dqn = summarize(finals[("dqn", None)])["iqm"]
    assert any(np.allclose(line.get_ydata(), dqn) for line in score_ax.lines)
    # The legend is outside every axes (to the right), one entry per group with its seed count.
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["dqn (n=3)", "mvi (tau=0.001) (n=3)", "mvi (tau=0.01) (n=3)", "mvi (tau=0.1) (n=3)"]
    fig.canvas.draw()
    right = max(ax.get_window_extent().x1 for ax in axes)
    assert legend.get_window_extent().x0 >= right
    # Short step labels on the curve panels.
    ticks = [t.get_text() for t in axes[0].get_xticklabels() if t.get_text()]
    assert any(t.endswith("k") for t in ticks) and not any(t.endswith("000") for t in ticks)
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_run_without_sweep_has_a_per_group_panel(tmp_path):
    out = tmp_path / "run"
    fabricate(TOML, out, ["train.seeds=2", "train.total_steps=50000"])
    fig = run_figure(str(out))
    axes = [ax for ax in fig.axes if ax.axison]
    assert axes[3].get_title() == "final score per group"
    assert [t.get_text() for t in axes[3].get_xticklabels()] == ["dqn", "mdqn", "mvi"]
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_plot_command_writes_the_png(sweep_run):
    png = os.path.join(sweep_run, "learning_curves.png")
    assert cli.main(["plot", sweep_run]) == 0
    assert os.path.getsize(png) > 20_000
    assert plot_run(sweep_run) == [png]
