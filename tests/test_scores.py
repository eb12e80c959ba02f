"""klrl.scores: shipped Atari tables, normalization, aggregates over runs x tasks."""

import numpy as np
import pytest

from klrl import scores


def test_tables_cover_the_benchmarks():
    assert len(scores.table("atari_human_random")) == 57
    assert len(scores.atari_games("atari100k")) == 26
    assert len(scores.atari_games("atari5")) == 5
    published = scores.table("atari100k_published")
    assert {scores.game_key(g) for g in scores.atari_games("atari100k")} == set(published)


@pytest.mark.parametrize("agent, mean, median", [("DER", 0.285, 0.161), ("SPR", 0.704, 0.415)])
def test_published_aggregates_are_recomputed_from_the_tables(agent, mean, median):
    """The tables reproduce the papers' human-normalized mean/median over the 26 games (to 1e-3:
    the per-game scores are transcribed to one decimal)."""
    published = scores.table("atari100k_published")
    hns = np.array([[float(scores.human_normalized(g, published[scores.game_key(g)][agent]))
                     for g in scores.atari_games("atari100k")]])          # one run x 26 tasks
    assert scores.mean_over_tasks(hns) == pytest.approx(mean, abs=1e-3)
    assert scores.median_over_tasks(hns) == pytest.approx(median, abs=1e-3)


def test_game_names_match_loosely():
    for name in ("BankHeist", "bank_heist", "BankHeist-v5", "bankheist"):
        assert float(scores.human_normalized(name, 14.2)) == 0.0
    assert float(scores.human_normalized("Pong", 14.6)) == pytest.approx(1.0)
    with pytest.raises(KeyError):
        scores.human_normalized("NotAGame", 1.0)


def test_minmax():
    np.testing.assert_allclose(scores.minmax_normalized([1.0, 2.0, 3.0], 1.0, 3.0), [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="low < high"):
        scores.minmax_normalized([1.0], 2.0, 2.0)


def test_aggregate_definitions_and_cis():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)) + np.array([0.0, 1.0, 5.0])
    agg = scores.aggregate(x, reps=500)
    assert agg["runs"] == 8 and agg["tasks"] == 3
    assert agg["mean"] == pytest.approx(x.mean())
    assert agg["median"] == pytest.approx(np.median(x.mean(axis=0)))
    flat = np.sort(x.ravel())
    assert agg["iqm"] == pytest.approx(flat[6:18].mean())     # 24 scores, 6 trimmed each side
    for s in ("iqm", "mean", "median"):
        assert agg[f"{s}_ci_low"] <= agg[s] <= agg[f"{s}_ci_high"]
        assert agg[f"{s}_ci_low"] < agg[f"{s}_ci_high"]
    # Identical runs: no spread, the CI collapses onto the estimate.
    same = scores.aggregate(np.ones((4, 2)), reps=100)
    assert same["iqm_ci_low"] == same["iqm_ci_high"] == 1.0


def test_score_matrix_refuses_ragged_tasks():
    m, tasks = scores.score_matrix({"a": [1, 2], "b": [3, 4]})
    assert m.shape == (2, 2) and tasks == ("a", "b")
    with pytest.raises(ValueError, match="same number of runs"):
        scores.score_matrix({"a": [1, 2], "b": [3]})
