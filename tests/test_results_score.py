"""The reported final score has ONE definition (klrl.results.final_score) whose rule is ONE
entry of the run's config record (`eval.score`, `eval.score_k` under config.json's "config"):
changing that entry changes what the runner's summary, `klrl merge` and a notebook report.

The run directories are fabricated (tests/fabricate.py: the runner's own writers, made-up
values, every 3rd evaluation NaN as concurrent evaluation reports): an unsplit run and the two
tasks of its array job. Every expected number is recomputed here from metrics.csv with the
csv module and plain numpy.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from klrl.merge import merge
from klrl.results import score_rule
from klrl.summary import print_summary, run_summary
from klrl.tasks import Task

from fabricate import fabricate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "munchausen_gymnax.py")
TOML = """
[env]
name = "CartPole-v1"

[agent]
name = "dqn"

[train]
total_steps = 1000
chunk_steps = 100
seeds = 3
replay_mode = "per-member"

[sweep]
"agent.name" = ["dqn", "mdqn"]
"""
RULES = [("last", 3), ("mean_last_k", 3), ("mean_last_k", 2)]
pytestmark = pytest.mark.xdist_group("results_score")     # one worker: the `runs` fixture is built once


def _expected(run_dir, rule, k) -> dict[str, list[float]]:
    """{agent: [final score per member, member order]}, by hand from metrics.csv."""
    curves = {}
    with open(os.path.join(run_dir, "metrics.csv"), newline="") as fh:
        for r in csv.DictReader(fh):
            if r["metric"] == "eval_return":
                curves.setdefault((r["agent"], int(r["member"])), []).append((int(r["step"]), float(r["value"])))
    out = {}
    for (agent, _), points in sorted(curves.items()):
        values = [v for _, v in sorted(points)]
        if rule == "last":
            score = values[-1]
        else:
            finite = [v for v in values if not math.isnan(v)]
            score = float(np.mean(finite[-k:])) if finite else math.nan
        out.setdefault(agent, []).append(score)
    return out


def _set_rule(run_dir, rule, k) -> dict:
    """Write the rule into the run's config record (the ONE place); returns its config."""
    path = os.path.join(run_dir, "config.json")
    record = json.load(open(path))
    record["config"]["eval"] = {**record["config"].get("eval", {}), "score": rule, "score_k": k}
    json.dump(record, open(path, "w"))
    return record["config"]


def _reported(summary) -> dict[str, list[float]]:
    """Each agent's reported scores, a score not measured (null in strict JSON) as NaN."""
    return {row["agent"]: [math.nan if v is None else v for v in row["final_eval_returns"]] for row in summary}


def _notebook_scores(results, tmp_path) -> dict[str, list[float]]:
    """notebooks/munchausen_gymnax.py's final-score table of `results/quickstart`."""
    table = tmp_path / "table.json"
    env = {**os.environ, "KLRL_RESULTS_DIR": str(results), "KLRL_FIGURES_DIR": str(tmp_path / "figures"),
           "KLRL_BOOTSTRAP_REPS": "20", "KLRL_WRITE_SUMMARY": str(table), "MPLBACKEND": "Agg"}
    res = subprocess.run([sys.executable, NOTEBOOK], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return {r["group"]: [math.nan if x is None else x for x in r["scores"]]        # JSON null: NaN
            for r in json.loads(table.read_text())["final_scores"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("score")
    toml = base / "run.toml"
    toml.write_text(TOML)
    run = base / "results" / "quickstart"
    fabricate(toml, run, nan_every=3)
    for i in range(2):
        fabricate(toml, base / "arr", task=Task(i, 2), seed=i, nan_every=3)
    return {"base": base, "run": run, "results": base / "results", "arr": base / "arr"}


def test_fabricated_runs_differ_by_rule(runs):
    """The fixture can tell the rules apart: last, mean of 3 and mean of 2 give other numbers."""
    scores = [_expected(runs["run"], *r) for r in RULES]
    assert all(math.isfinite(v) for s in scores[1:] for vs in s.values() for v in vs)
    assert scores[0] != scores[1] != scores[2] != scores[0]
    assert any(math.isnan(v) for vs in scores[0].values() for v in vs)   # 10 chunks, NaN every 3rd: last is NaN


@pytest.mark.parametrize("rule, k", RULES)
def test_the_config_record_sets_what_runner_merge_and_notebook_report(runs, tmp_path, rule, k):
    run = runs["run"]
    config = _set_rule(run, rule, k)
    want = _expected(run, rule, k)

    # the runner's summary: run_summary(out, the run's resolved config) and its printed table
    summary = run_summary(str(run), config)
    np.testing.assert_array_equal(_reported(summary)["dqn"], want["dqn"])
    np.testing.assert_array_equal(_reported(summary)["mdqn"], want["mdqn"])
    table = io.StringIO()
    print_summary(summary, table, score_rule(config))
    assert table.getvalue().startswith(f"final greedy evaluation return ({score_rule(config).describe()})")

    # klrl merge of the array job, the rule set in the tasks' records
    arr = tmp_path / "arr"
    shutil.copytree(runs["arr"], arr)
    for i in range(2):
        _set_rule(arr / f"task-{i}", rule, k)
    with contextlib.redirect_stdout(io.StringIO()) as printed, contextlib.redirect_stderr(io.StringIO()):
        merge(str(arr))
    merged = json.load(open(arr / "summary.json"))["summary"]
    want_merged = _expected(arr, rule, k)
    for agent in ("dqn", "mdqn"):
        np.testing.assert_array_equal(_reported(merged)[agent], want_merged[agent])
    assert f"({score_rule(config).describe()})" in printed.getvalue()
    merged_eval = json.load(open(arr / "config.json"))["config"]["eval"]
    assert (merged_eval["score"], merged_eval["score_k"]) == (rule, k)

    # a notebook: munchausen_gymnax's final-score table
    nb = _notebook_scores(runs["results"], tmp_path)
    for agent in ("dqn", "mdqn"):
        np.testing.assert_allclose(nb[agent], want[agent], rtol=0, atol=0, equal_nan=True)


def test_a_bad_rule_in_the_record_is_refused_by_merge_before_it_writes(runs, tmp_path):
    from klrl.errors import ConfigError

    arr = tmp_path / "arr"
    shutil.copytree(runs["arr"], arr)
    for i in range(2):
        _set_rule(arr / f"task-{i}", "best", 3)
    before = sorted(p for p, _, _ in os.walk(arr)), sorted(os.listdir(arr))
    with pytest.raises(ConfigError, match="eval.score: got 'best'; allowed 'last', 'mean_last_k'"):
        merge(str(arr))
    assert (sorted(p for p, _, _ in os.walk(arr)), sorted(os.listdir(arr))) == before   # checked before writing


RUN_TOML = """
[env]
name = "CartPole-v1"
num_envs = 2

[agent]
name = "dqn"
hidden = [8]

[train]
total_steps = 160
chunk_steps = 40
buffer_size = 64
batch_size = 8
learning_starts = 20
target_update_every = 20
eval_episodes = 1
seeds = 2
"""
SCORE_SETS = ["eval.score=mean_last_k", "eval.score_k=2"]


def _schema_has_eval_score(toml) -> bool:
    from klrl.config import load_experiment
    from klrl.errors import ConfigError

    try:
        load_experiment(str(toml), SCORE_SETS)
    except ConfigError:
        return False
    return True


def test_a_real_run_reports_by_the_rule_its_config_sets(tmp_path):
    """`klrl train --set eval.score=mean_last_k --set eval.score_k=2`: summary.json and the
    printed table follow the rule (needs the engine's [eval] section with `score`, `score_k`)."""
    from engine_helpers import cli_in_process

    toml = tmp_path / "run.toml"
    toml.write_text(RUN_TOML)
    if not _schema_has_eval_score(toml):
        pytest.skip("the engine config has no eval.score / eval.score_k keys yet")
    args = ["train", toml, "--out", tmp_path / "run"]
    for s in SCORE_SETS:
        args += ["--set", s]
    res = cli_in_process(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    record = json.load(open(tmp_path / "run" / "config.json"))
    assert score_rule(record["config"]) == ("mean_last_k", 2)
    summary = json.load(open(tmp_path / "run" / "summary.json"))["summary"]
    np.testing.assert_array_equal(_reported(summary)["dqn"], _expected(tmp_path / "run", "mean_last_k", 2)["dqn"])
    assert "final greedy evaluation return (mean of the last 2 evaluations), over seeds:" in res.stdout
