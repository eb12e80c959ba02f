"""Tidy CSV writing/reading, the final score and the aggregates (klrl.results)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from klrl.errors import ConfigError
from klrl.population import Member
from klrl.results import (
    MetricsWriter, ScoreRule, final_score, final_scores, format_chunk, format_history, format_value, header, iqm,
    read_metrics, score_rule, stratified_bootstrap_ci, summarize,
)


def _members():
    return (Member(0, 0, 0, "mdqn", {"alpha": 0.9}), Member(1, 1, 0, "mdqn", {"alpha": 0.9}),
            Member(2, 0, 0, "dqn", {"alpha": None}))


def test_format_value_round_trips_float32():
    for x in [0.1, 1 / 3, 500.0, -1e-7, 123456.78, 3.4e38]:
        f = np.float32(x)
        assert np.float32(float(format_value(f))) == f
    assert format_value(np.nan) == "nan" and format_value(np.inf) == "inf"


def test_write_read_round_trip(tmp_path):
    members = _members()
    chunk1 = {"step": np.array([10, 10, 10], np.float32), "loss": np.array([0.5, np.nan, 2.0], np.float32),
              "eval_return": np.array([9.0, 10.5, 500.0], np.float32),
              "train_return": np.array([np.nan, 8.0, 9.0], np.float32), "diverged": np.zeros(3, np.float32)}
    chunk2 = {k: (v * 2 if k != "diverged" else v) for k, v in chunk1.items()}
    path = str(tmp_path / "metrics.csv")
    w = MetricsWriter(path, ["alpha"], prefix=format_chunk(members, ["alpha"], chunk1))
    w.append(format_chunk(members, ["alpha"], chunk2))
    text = open(path).read()
    lines = text.splitlines()
    assert lines[0] == ",".join(header(["alpha"])) == "member,seed,alpha,agent,step,metric,value"
    assert len(lines) == 1 + 2 * 3 * 4          # chunks x members x metrics (step is a column)
    # metric order is fixed: eval_return, train_return, loss, diverged
    assert [l.split(",")[5] for l in lines[1:5]] == ["eval_return", "train_return", "loss", "diverged"]
    assert lines[1] == "0,0,0.9,mdqn,10,eval_return,9.0"
    assert lines[9] == "2,0,,dqn,10,eval_return,500.0"           # unused swept column is empty
    # the same arrays as a history give the same bytes
    hist = {k: np.stack([chunk1[k], chunk2[k]]) for k in chunk1}
    assert text == ",".join(header(["alpha"])) + "\n" + format_history(members, ["alpha"], hist)
    rows = read_metrics(path)
    assert rows[0] == {"member": 0, "seed": 0, "agent": "mdqn", "step": 10, "metric": "eval_return",
                       "value": 9.0, "alpha": 0.9}
    assert rows[8]["alpha"] is None
    assert math.isnan([r for r in rows if r["member"] == 1 and r["metric"] == "loss"][0]["value"])
    finals = final_scores(rows, "eval_return", ["alpha"], "last")
    np.testing.assert_array_equal(finals[("mdqn", 0.9)], [18.0, 21.0])
    np.testing.assert_array_equal(finals[("dqn", None)], [1000.0])


def test_iqm_trims_a_quarter_each_side():
    assert iqm([1, 2, 3, 4, 5, 6, 7, 8]) == 4.5                 # mean of 3..6
    assert iqm([0, 0, 10, 10, 10, 10, 1e9, -1e9]) == 7.5          # robust to the outliers
    assert iqm([3.0]) == 3.0 and iqm([1.0, np.nan, 3.0]) == 2.0
    assert math.isnan(iqm([]))
    x = np.random.default_rng(0).normal(size=1001)
    k = int(0.25 * x.size)
    assert math.isclose(iqm(x), np.sort(x)[k:x.size - k].mean())


def test_bootstrap_ci_is_stratified_and_reproducible():
    rng = np.random.default_rng(1)
    scores = rng.normal(loc=5.0, size=(20, 3))
    lo, hi = stratified_bootstrap_ci(scores, reps=500, seed=3)
    assert lo < iqm(scores) < hi
    assert (lo, hi) == stratified_bootstrap_ci(scores, reps=500, seed=3)
    # each task constant: resampling runs WITHIN tasks never changes the statistic (a pooled,
    # unstratified bootstrap would mix tasks and give a wide interval)
    const = np.stack([np.zeros(8), np.full(8, 10.0)], axis=1)
    assert stratified_bootstrap_ci(const, statistic=np.mean, reps=200) == (5.0, 5.0)
    # more runs -> narrower interval
    wide = stratified_bootstrap_ci(rng.normal(size=5), statistic=np.mean, reps=500)
    narrow = stratified_bootstrap_ci(rng.normal(size=500), statistic=np.mean, reps=500)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


def test_summarize():
    s = summarize([100.0, 200.0, 300.0, 400.0, np.nan])
    assert s["n"] == 5 and s["median"] == 250.0 and s["iqm"] == 250.0
    assert s["iqm_ci_low"] <= s["iqm"] <= s["iqm_ci_high"]


def test_json_safe_makes_strict_json():
    import json

    from klrl.results import json_safe

    x = json_safe({1: np.float32(np.nan), "b": (np.int64(3), 1.5, float("inf")), "c": "s"})
    assert x == {"1": None, "b": [3, 1.5, None], "c": "s"}
    assert json.loads(json.dumps(x, allow_nan=False)) == x


def test_final_score_last_is_the_value_at_the_last_step():
    curves_ = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, np.nan]])
    np.testing.assert_array_equal(final_score(curves_, "last"), [3.0, np.nan])    # NaN: no episode ended at the end
    np.testing.assert_array_equal(final_score(curves_[0], "last"), 3.0)


def test_final_score_mean_last_k_skips_nan_evaluations():
    curves_ = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, np.nan, 8.0], [np.nan, 6.0, np.nan, np.nan],
                        [np.nan] * 4])
    got = final_score(curves_, "mean_last_k", 2)
    np.testing.assert_array_equal(got, [3.5, 5.0, 6.0, np.nan])         # fewer than k: their mean; none: NaN
    np.testing.assert_array_equal(final_score(curves_[:2], "mean_last_k", 3), [3.0, 11 / 3])
    np.testing.assert_array_equal(final_score(curves_[:2, None], "mean_last_k", 9), [[2.5], [11 / 3]])   # [..., T]


def test_score_rule_reads_the_eval_section_with_defaults():
    assert score_rule({}) == ScoreRule("mean_last_k", 3) == score_rule({"eval": {}})     # runs from before [eval]
    assert score_rule({"eval": {"score": "last"}}) == ("last", 3)
    assert score_rule({"eval": {"score": "mean_last_k"}}) == ("mean_last_k", 3)
    assert score_rule({"eval": {"score": "mean_last_k", "score_k": 5, "episodes": 10}}) == ("mean_last_k", 5)
    assert ScoreRule().describe() == "mean of the last 3 evaluations" and ScoreRule("last").describe() == "last chunk"
    assert ScoreRule("mean_last_k", 5).describe() == "mean of the last 5 evaluations"


@pytest.mark.parametrize("section, needle", [
    ({"score": "median"}, "eval.score: got 'median'; allowed 'last', 'mean_last_k'"),
    ({"score": "mean_last_k", "score_k": 0}, "eval.score_k: got 0; allowed an integer >= 1"),
    ({"score_k": 2.5}, "eval.score_k: got 2.5; allowed an integer >= 1"),
])
def test_a_bad_score_rule_is_one_config_error(section, needle):
    with pytest.raises(ConfigError) as err:
        score_rule({"eval": section})
    assert str(err.value) == needle
    with pytest.raises(ConfigError):
        final_score([1.0], section.get("score", "last"), section.get("score_k", 3))


def test_final_scores_by_rule(tmp_path):
    members = _members()
    path = str(tmp_path / "metrics.csv")
    w = MetricsWriter(path, ["alpha"])
    for c, ev in enumerate(([1.0, 2.0, 3.0], [5.0, np.nan, 7.0], [9.0, 10.0, np.nan])):
        w.append(format_chunk(members, ["alpha"], {"step": np.full(3, 10 * (c + 1)),
                                                   "eval_return": np.array(ev, np.float32)}))
    rows = read_metrics(path)
    last = final_scores(rows, "eval_return", ["alpha"], "last")
    np.testing.assert_array_equal(last[("mdqn", 0.9)], [9.0, 10.0])
    np.testing.assert_array_equal(last[("dqn", None)], [np.nan])
    mean2 = final_scores(rows, "eval_return", ["alpha"], *ScoreRule("mean_last_k", 2))
    np.testing.assert_array_equal(mean2[("mdqn", 0.9)], [7.0, 6.0])
    np.testing.assert_array_equal(mean2[("dqn", None)], [5.0])
