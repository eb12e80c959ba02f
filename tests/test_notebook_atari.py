"""notebooks/atari.py on a tiny results folder: fabricated (make test), or made by ONE real tiny
`klrl train` call (slow).

The call is experiments/atari100k.toml shrunk by `--set`: a sweep over env.name of Breakout and
Asterix (`OUT/sweep.json`, `OUT/<Game>/`), DQN and M-DQN, 2 seeds, a MinAtar-sized CNN on the
84x84 frames, 400 steps per member on 1 training + 1 test env, 4 updates, and a final
evaluation of 2 episodes per member (1 per env). Evaluation is at epsilon 1 (random play) so
that a test game ends within 400 steps (random Breakout/Asterix games last ~130-370 agent
steps; an untrained greedy Breakout agent may never press FIRE): this tests the pipeline, not
learning. Pong is not used: a random Pong game lasts ~900 steps.

Four populations compile (2 games x 2 agents, plus their final evaluations); the run shares a
persistent JAX compilation cache in pytest's cache folder, so only a first run pays in full.

The notebook runs twice: on the sweep as written (every final score from final_eval.csv), and
on a copy in the one-run-per-game layout (no sweep.json) with Breakout's final_eval.csv removed
(its final scores then are its eval_return scored by the run's rule, which the copy's
config.json sets to the mean of the last 3 non-NaN evaluations: `eval.score = "mean_last_k"`)
and Asterix's summary.json removed (so it is in progress and enters no table or aggregate);
then once more on Breakout's run directory alone, its rule set back to the default (`last`).
Every number the test checks is recomputed here from the CSV files and klrl.scores.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from klrl.scores import STATISTICS, aggregate, human_normalized, table

from fabricate import fabricate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "atari.py")
TOML = os.path.join(ROOT, "experiments", "atari100k.toml")
GAMES = ["Asterix", "Breakout"]                 # the notebook's order (the benchmark's, alphabetical)
AGENTS = ["dqn", "mdqn"]
REPS = 200
TINY = ['sweep.env.name=["Breakout", "Asterix"]', 'sweep.agent.name=["dqn", "mdqn"]', "train.seeds=2",
        "agent.torso=minatar_cnn", "agent.hidden=[16]", "env.num_envs=1", "eval.envs=1",
        "train.total_steps=400", "train.chunk_steps=200", "train.buffer_size=400", "train.learning_starts=396",
        "train.batch_size=8", "eval.epsilon=1.0", "train.epsilon_fraction=1.0",
        "eval.final_episodes=2", "output.checkpoint_every=2"]


def _members(path, metric):
    """{(agent, seed): {step: value}} of one metric of a tidy metrics/final_eval CSV (csv module only)."""
    out = {}
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            if r["metric"] == metric:
                out.setdefault((r["agent"], int(r["seed"])), {})[int(r["step"])] = float(r["value"])
    return out


def _finals(run_dir):
    """{agent: {seed: final score}}: final_eval_return if final_eval.csv exists, else the
    eval_return values in step order scored by the run's rule (config.json's eval.score: the
    last value by default, or the mean of the last eval.score_k non-NaN values)."""
    fe = os.path.join(run_dir, "final_eval.csv")
    out = {}
    if os.path.isfile(fe):
        for (agent, seed), d in _members(fe, "final_eval_return").items():
            out.setdefault(agent, {})[seed] = next(iter(d.values()))
        return out
    rule = json.load(open(os.path.join(run_dir, "config.json")))["config"].get("eval", {})
    for (agent, seed), d in _members(os.path.join(run_dir, "metrics.csv"), "eval_return").items():
        if rule.get("score", "last") == "last":
            out.setdefault(agent, {})[seed] = d[max(d)]
            continue
        x = [d[s] for s in sorted(d) if not math.isnan(d[s])]
        out.setdefault(agent, {})[seed] = float(np.mean(x[-rule.get("score_k", 3):])) if x else math.nan
    return out


def _set_rule(run_dir, **rule):
    """Set the run's score rule in its config record (config.json's "config" -> "eval")."""
    path = os.path.join(run_dir, "config.json")
    record = json.load(open(path))
    record["config"]["eval"] = rule
    json.dump(record, open(path, "w"))


def _run_notebook(results, tmp_path, tag, env):
    summary = tmp_path / f"summary_{tag}.json"
    figures = tmp_path / f"figures_{tag}"
    nb_env = {**env, "KLRL_RUNS": str(results), "KLRL_FIGURES_DIR": str(figures),
              "KLRL_BOOTSTRAP_REPS": str(REPS), "KLRL_WRITE_SUMMARY": str(summary), "MPLBACKEND": "Agg"}
    res = subprocess.run([sys.executable, NOTEBOOK], cwd=str(tmp_path), env=nb_env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("atari_curves.png", "atari_aggregate.png"):
        assert os.path.getsize(figures / name) > 5_000, name
    return res.stdout, json.loads(summary.read_text())


def _check_numbers(s, results, games, finite=True):
    """Per-game finals, their human normalization, the aggregates and the anchors, recomputed."""
    assert s["games"] == games and s["aggregate_games"] == games
    assert s["groups"] == AGENTS and list(s["aggregate"]) == AGENTS
    finals = {g: _finals(os.path.join(results, g)) for g in games}
    for game in games:
        e = s["per_game"][game]
        ref = table("atari_human_random")[game.lower()]
        assert e["random"] == ref["random"] and e["human"] == ref["human"]
        assert e["published"] == {a: table("atari100k_published")[game.lower()][a] for a in ("DER", "DrQ", "SPR")}
        assert list(e["groups"]) == AGENTS
        for agent in AGENTS:
            g = e["groups"][agent]
            mine = [finals[game][agent][seed] for seed in g["seeds"]]
            assert sorted(g["seeds"]) == [0, 1] and g["n"] == 2
            assert all(math.isfinite(v) for v in mine) or not finite, (game, agent, mine)
            np.testing.assert_allclose(np.array(g["finals"], dtype=float), mine, rtol=1e-12)
            np.testing.assert_allclose(np.array(g["human_normalized"], dtype=float), human_normalized(game, mine),
                                       rtol=1e-12)
            if finite:
                assert g["mean"] == pytest.approx(np.mean(mine), rel=1e-12)
    if not finite:                          # a NaN final score (no evaluation ended in the last chunk)
        return
    for agent in AGENTS:
        x = np.array([[human_normalized(g, finals[g][agent][seed]) for g in games] for seed in (0, 1)])
        want = aggregate(x, reps=REPS)
        got = s["aggregate"][agent]
        assert got["games"] == games and got["runs"] == 2 and got["tasks"] == len(games)
        for k, v in want.items():
            assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), (agent, k)
            assert math.isfinite(got[k])
    assert s["anchors"]["games"] == games
    for a in ("DER", "DrQ", "SPR"):
        x = np.array([[human_normalized(g, table("atari100k_published")[g.lower()][a]) for g in games]])
        for stat, fn in STATISTICS.items():
            assert s["anchors"][a][stat] == pytest.approx(fn(x), rel=1e-12), (a, stat)


def _train_tiny_sweep(results, env):
    """The real tiny sweep: one `klrl train` call (four populations compile)."""
    cmd = [sys.executable, "-m", "klrl.cli", "train", TOML, "--out", str(results)]
    for s in TINY:
        cmd += ["--set", s]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]


def _check_notebook_on(results, tmp_path, env):
    """The notebook on the sweep as written, then on the one-run-per-game layout (Breakout without
    a final evaluation, Asterix unfinished), then on Breakout's run directory alone."""
    sweep = json.loads((results / "sweep.json").read_text())
    assert sweep["runs"] == {"Breakout": "Breakout", "Asterix": "Asterix"}
    for game in GAMES:
        for name in ("config.json", "metrics.csv", "final_eval.csv", "summary.json"):
            assert (results / game / name).is_file(), (game, name)
    before = sorted(os.walk(results))

    out, s = _run_notebook(results, tmp_path, "sweep", env)
    assert sorted(os.walk(results)) == before                 # the notebook only reads
    assert "sweep over env.name (sweep.json)" in out and "SUMMARY {" in out
    assert "Asterix: complete" in out and "Breakout: complete" in out
    assert "budget 400 steps/member" in out
    assert s["layout"] == "sweep over env.name (sweep.json)" and s["in_progress"] == []
    for game in GAMES:
        assert all(g["final_source"] == "final_eval" and g["min_final_eval_episodes"] >= 2
                   for g in s["per_game"][game]["groups"].values())
    _check_numbers(s, str(results), GAMES)

    # The one-run-per-game layout; Breakout without a final evaluation, Asterix unfinished.
    per_game = tmp_path / "per_game"
    for game in GAMES:
        shutil.copytree(results / game, per_game / game, ignore=shutil.ignore_patterns("checkpoints"))
    os.remove(per_game / "Breakout" / "final_eval.csv")
    os.remove(per_game / "Asterix" / "summary.json")
    _set_rule(per_game / "Breakout", score="mean_last_k", score_k=3)
    out, s = _run_notebook(per_game, tmp_path, "per_game", env)
    assert "one run directory per game" in out and "Asterix: in progress" in out
    assert s["layout"] == "one run directory per game"
    assert s["in_progress"] == ["Asterix"] and set(s["per_game"]) == {"Breakout"}
    assert all(g["final_source"] == "mean_last_3_evals" for g in s["per_game"]["Breakout"]["groups"].values())
    _check_numbers(s, str(per_game), ["Breakout"])

    _set_rule(per_game / "Breakout", score="last")    # the other rule: the last evaluation
    out, s = _run_notebook(per_game / "Breakout", tmp_path, "single", env)   # one game's run directory
    assert s["layout"] == "a single game's run directory" and s["games"] == ["Breakout"]
    assert all(g["final_source"] == "last_eval" for g in s["per_game"]["Breakout"]["groups"].values())
    _check_numbers(s, str(per_game), ["Breakout"], finite=False)


def test_notebook_on_a_fabricated_atari_sweep(tmp_path):
    """The tiny sweep's run directories written without training (tests/fabricate.py: the
    runner's own writers and member table, made-up values, some evaluations NaN)."""
    results = tmp_path / "results"
    fabricate(TOML, results, TINY, nan_every=3)
    _check_notebook_on(results, tmp_path, dict(os.environ))


@pytest.mark.slow
def test_notebook_on_a_tiny_atari_sweep(tmp_path, jax_cache_env):
    """The same checks on the directories of a real tiny `klrl train` sweep."""
    results = tmp_path / "results"
    env = {**os.environ, **jax_cache_env}
    env.pop("KLRL_TEST_KILL_AFTER_CHUNKS", None)
    _train_tiny_sweep(results, env)
    _check_notebook_on(results, tmp_path, env)


def test_notebook_refuses_a_folder_without_runs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes").mkdir()
    res = subprocess.run([sys.executable, NOTEBOOK], cwd=str(tmp_path), capture_output=True, text=True,
                         env={**os.environ, "KLRL_RUNS": str(empty), "KLRL_FIGURES_DIR": str(tmp_path / "figures"),
                              "MPLBACKEND": "Agg"}, timeout=120)
    assert res.returncode == 2
    (line,) = res.stderr.strip().splitlines()           # one line, no traceback
    assert line.startswith(f"error: KLRL_RUNS: got {str(empty)!r}: no Atari runs found")
    assert not (tmp_path / "figures").exists()         # nothing written


def test_notebook_is_a_jupytext_percent_script():
    import jupytext

    nb = jupytext.read(NOTEBOOK)
    kinds = [c.cell_type for c in nb.cells]
    assert kinds.count("markdown") >= 5 and kinds.count("code") >= 5
