"""`klrl bench train` with --members and --env: the quick runs' JSON rows for both presets
(structure, no timing assertions), the options' errors, the time guard's estimate, and the
GPU suite's budget cuts and goals on fake timings (nothing compiled)."""

import json
import math

import pytest

from klrl.cli import main


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


# each ~20 s on a quiet 2-core machine (two whole-run compiles), up to ~60 s under load: in
# `make test-all` only (make test's time budget); the option checks below stay in make test
@pytest.mark.slow
@pytest.mark.parametrize("env,name", [("cartpole", "CartPole-v1"), ("minatar", "Breakout-MinAtar"),
                                      ("purejaxrl", "CartPole-v1")])
def test_quick_members_rows(tmp_path, env, name):
    out = tmp_path / f"{env}.json"
    assert main(["bench", "train", "--quick", "--members", "1,2", "--env", env, "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["env"] == env and r["quick"] is True and r["config"]["env"]["name"] == name
    assert r["platform"] and r["device_kind"] and r["provenance"]["commit"] and r["skipped_by_budget"] == []
    assert [row["members"] for row in r["rows"]] == [1, 2]
    for row in r["rows"]:
        for k in ("seconds", "compile_seconds", "agent_steps_per_second", "per_member_cost_ratio", "cpu_seconds"):
            assert _positive(row[k]), (k, row[k])
        assert row["total_steps"] == r["config"]["train"]["total_steps"] == 2000
        assert row["agent_steps_per_second"] == pytest.approx(row["members"] * 2000 / row["seconds"])
    one, two = r["rows"]
    assert one["per_member_cost_ratio"] == 1.0 and len(one["all_run_seconds"]) == 5   # best of 3, then 2 more
    assert two["per_member_cost_ratio"] == pytest.approx(two["seconds"] / (2 * one["seconds"]))
    if env == "minatar":   # experiments/minatar_munchausen.toml's learner
        assert r["config"]["agent"]["torso"] == "minatar_cnn" and r["hparams"]["tau"] == pytest.approx(0.03)


@pytest.mark.parametrize("argv", [
    ["bench", "train", "--env", "pong"],
    ["bench", "train", "--members", "0"],
    ["bench", "train", "--total-steps", "15"],       # not a multiple of the 10 envs
    ["bench", "tabular", "--env", "minatar"],
    ["bench", "atari", "--total-steps", "1000"],
])
def test_bad_options_fail_before_any_work(tmp_path, argv, capsys):
    out = tmp_path / "x.json"
    assert main(argv + ["--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("klrl: error: ") and not out.exists()


def test_total_steps_replaces_the_length_as_one_chunk():
    from klrl.bench.train import preset_config

    cfg, hp = preset_config("cartpole", total_steps=500_000)
    assert (cfg.train.total_steps, cfg.train.chunk_steps, cfg.train.buffer_size) == (500_000, 500_000, 10_000)
    cfg, hp = preset_config("minatar")
    assert (cfg.env.name, cfg.train.total_steps, cfg.train.batch_size, hp["adam_eps"]) == (
        "Breakout-MinAtar", 50_000, 32, pytest.approx(3.125e-4))


def test_estimate_scales_the_nearest_smaller_row():
    from klrl.bench.train import estimate_seconds

    rows = [{"members": 1, "total_steps": 100, "seconds": 2.0, "compile_seconds": 5.0},
            {"members": 64, "total_steps": 100, "seconds": 4.0, "compile_seconds": 6.0}]
    assert estimate_seconds([], 64, 100, 1) is None
    assert estimate_seconds(rows, 256, 100, 1) == 6.0 + 16.0          # from M = 64: 4 s x 4
    assert estimate_seconds(rows, 16, 1000, 3) == 5.0 + 3 * 2.0 * 16 * 10
    assert estimate_seconds(rows[1:], 2, 100, 1) == 6.0 + 4.0 * 2 / 64   # no smaller row: the smallest


def _fake_timing(seconds):
    """A Timing whose rows have `seconds(env, members, steps)` run seconds and 5 compile
    seconds, so the suite's logic runs without any program."""
    from klrl.bench.train import Timing

    def row(cfg, members, repeats=1, hparams=None, pop=None):
        s = seconds(cfg.env.name, members, cfg.train.total_steps)
        return {"members": members, "total_steps": cfg.train.total_steps, "seconds": s, "compile_seconds": 5.0,
                "cpu_seconds": s, "all_run_seconds": [s] * repeats, "all_cpu_seconds": [s] * repeats,
                "agent_steps_per_second": members * cfg.train.total_steps / s, "achieved_update_gflop_per_second": 1.0}

    return Timing(compile=lambda cfg, m, hp=None: (cfg.env.name, m), row=row,
                  rerun=lambda pop, repeats: ([seconds(pop[0], pop[1], 50_000)] * repeats, [1.0] * repeats, {}))


def test_gpu_suite_cuts_by_budget_and_states_the_goals(tmp_path):
    from klrl.bench.train import bench_suite

    # CartPole: 1 + M/100 s per 50k steps; MinAtar 4x that
    timing = _fake_timing(lambda env, m, steps: (1 + m / 100) * steps / 50_000 * (4 if "MinAtar" in env else 1))
    out = tmp_path / "train_gpu.json"
    r = bench_suite(str(out), "gpu", budget_s=100.0, timing=timing)
    assert json.loads(out.read_text())["goals"] == r["goals"]
    parts = r["parts"]
    assert [row["members"] for row in parts["cartpole"]["rows"]] == [1, 64, 256, 1024]
    assert [row["members"] for row in parts["minatar"]["rows"]] == [1, 16, 64]
    # the 500k row: 5 s compile + 10 x the 50k row of 1024 members (11.24 s) > 100 s
    assert parts["cartpole_1024x500k"]["rows"] == []
    (skip,) = r["skipped_by_budget"]
    assert skip["part"] == "cartpole_1024x500k" and skip["members"] == 1024 and skip["total_steps"] == 500_000
    assert skip["estimated_seconds"] == pytest.approx(5.0 + 112.4)
    goals = {(g["part"], g["members"]): g for g in r["goals"]}
    assert goals["cartpole", 64]["ratio"] == pytest.approx(1.64 / 1.01) and goals["cartpole", 64]["met"] is True
    assert goals["minatar", 64]["met"] is True and goals["cartpole_1024x500k", 1024]["met"] is None
    assert r["errors"] == [] and r["budget_s"] == 100.0


def test_suite_without_budget_measures_every_part(tmp_path):
    from klrl.bench.train import bench_suite

    timing = _fake_timing(lambda env, m, steps: m * steps / 50_000)   # every member costs one run
    r = bench_suite(str(tmp_path / "s.json"), "gpu", timing=timing)
    assert r["skipped_by_budget"] == []
    goals = {(g["part"], g["members"]): g for g in r["goals"]}
    assert goals["cartpole", 64]["ratio"] == 64.0 and goals["cartpole", 64]["met"] is False
    big = goals["cartpole_1024x500k", 1024]
    assert big["seconds"] == 10240.0 and big["seconds_including_compile"] == 10245.0
    assert big["met"] is False and big["met_including_compile"] is False
