"""`klrl bench atari`: the quick run's JSON structure (no timing assertions), the replay
arithmetic of the shipped experiments, the vmap/map and lax/patches comparisons, the choice of
the fastest (conv, member_map) pair, the time guard's estimate, the shared pools and the
--members/--convs options."""

import json
import math

import pytest

from klrl.envs.atari import missing_packages
from klrl.errors import ConfigError

needs_ale = pytest.mark.skipif(bool(missing_packages("ale")), reason="ale-py not installed (extra atari)")


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def check_quick_result(r: dict) -> None:
    """The structure of a quick run's JSON (ale installed; also used on a CLI run's file)."""
    assert r["quick"] is True and r["platform"] and r["device_kind"] and r["provenance"]["commit"]
    assert r["machine"]["cpu_count"] >= 1 and r["load_average_1min_start"] >= 0 and r["elapsed_seconds"] > 0
    assert r["config"]["convs"] == ["lax", "patches"] and r["config"]["scan_updates"] == 4
    raw = r["raw_pool"]
    assert {(x["backend"], x["members"]) for x in raw} >= {("ale", 1), ("ale", 2)}
    for x in raw:
        assert _positive(x["agent_steps_per_second"]) and _positive(x["env_steps_per_second"])
        assert x["env_steps_per_second"] > x["agent_steps_per_second"]   # test envs step too
    train = r["training"]
    assert sorted((x["members"], x["conv"], x["member_map"]) for x in train) == [
        (2, "lax", "map"), (2, "lax", "vmap"), (2, "patches", "map"), (2, "patches", "vmap")]
    for x in train:
        for k in ("agent_steps_per_second", "agent_steps_per_second_no_updates", "compile_seconds", "ratio_to_raw",
                  "acting_env_replay_seconds_per_vector_step"):
            assert _positive(x[k]), (k, x[k])
        assert x["update_seconds_per_member_update"] >= 0 and math.isfinite(x["update_seconds_per_member_update"])
        assert x["loss_finite"] and x["no_update_chunks_had_no_updates"]
        assert len(x["no_update_chunk_seconds"]) == 3 and all(map(_positive, x["update_chunk_seconds"]))
    alone = r["update_alone"]
    assert sorted((x["members"], x["conv"], x["member_map"], x["variant"], x["updates"]) for x in alone) == [
        (2, "lax", "vmap", "alone", 1), (2, "lax", "vmap", "scan", 4),
        (2, "patches", "vmap", "alone", 1), (2, "patches", "vmap", "scan", 4)]
    assert all(_positive(x["seconds_per_member_update"]) and _positive(x["compile_seconds"]) for x in alone)
    maps = r["member_map"]
    assert set(maps["choice"]) == {"lax", "patches"}
    for conv, c in maps["choice"].items():
        assert c["conv"] == conv and c["member_map"] in ("vmap", "map") and _positive(c["vmap_over_map"])
    assert {row["conv"] for row in maps["rows"] if "vmap_over_map" in row} == {"lax", "patches"}
    assert set(maps["update_alone_seconds_per_member_update"]["patches"]) == {"alone", "scan"}
    convs = r["conv"]
    assert [(x["backend"], x["members"], x["member_map"]) for x in convs["rows"]] == [("ale", 2, "vmap"),
                                                                                     ("ale", 2, "map")]
    for x in convs["rows"]:
        for k in ("lax_seconds_per_member_update", "patches_seconds_per_member_update",
                  "lax_agent_steps_per_second", "patches_agent_steps_per_second",
                  "agent_steps_per_second_lax_over_patches"):
            assert _positive(x[k]), (k, x[k])
        assert "seconds_per_member_update_lax_over_patches" in x
    (a,) = convs["update_alone"]
    assert (a["members"], a["member_map"]) == (2, "vmap")
    for k in ("lax_scan_over_alone", "patches_scan_over_alone", "alone_lax_over_patches", "scan_lax_over_patches"):
        assert _positive(a[k]), (k, a[k])
    choice = r["choice"]
    assert choice["platform"] == r["platform"] and [x["members"] for x in choice["by_members"]] == [2]
    (at2,) = choice["by_members"]
    assert at2["pairs_measured"] == 4 and len(at2["agent_steps_per_second_by_pair"]) == 4
    assert at2["agent_steps_per_second"] == max(at2["agent_steps_per_second_by_pair"].values())
    o = choice["overall"]
    assert o["members"] == 2 and o["conv"] in ("lax", "patches") and o["member_map"] in ("vmap", "map")
    assert (o["conv"], o["member_map"]) == (at2["conv"], at2["member_map"])
    assert r["skipped_by_budget"] == [] and r["errors"] == []
    assert [x["bytes_per_transition"] for x in r["replay"]] == [7067, 7067]


# ~4-5 min on the shared 2-core machine: 4 compiled training chunks of the Nature CNN (2 convs x
# 2 maps) and 4 update programs
@pytest.mark.slow
@needs_ale
def test_quick_bench_writes_positive_finite_numbers(tmp_path):
    from klrl.bench.atari import bench_atari

    out = tmp_path / "atari.json"
    bench_atari(out_path=str(out), quick=True, backends=("ale",))
    check_quick_result(json.loads(out.read_text()))


@needs_ale
def test_raw_pool_counts_train_envs_as_agent_steps():
    from klrl.bench.atari_measure import time_raw_pool

    r = time_raw_pool("ale", "Pong", 1, 4, 48)
    assert r["vector_steps"] == 8 and _positive(r["seconds"])
    assert r["env_steps_per_second"] / r["agent_steps_per_second"] == pytest.approx(6 / 4)


@needs_ale
def test_shared_pools_build_one_pool_per_shape_and_feed_the_trainer():
    import klrl.envs
    import klrl.train
    from klrl.bench.atari import sizes
    from klrl.bench.atari_measure import AGENT, _experiment, bench_overrides, pool_source, shared_pools

    cfg = _experiment(bench_overrides("ale", "Pong", "vmap", 4, sizes("cpu", quick=True), 1)).static_config(AGENT)
    with shared_pools() as make:
        a = make("Pong", 1, 2, "ale", preset="atari100k")
        assert pool_source(cfg, make).make(1, 2) is a   # the trainer's call, through its EnvSource
        assert pool_source(cfg, make).spec == klrl.train.env_source(cfg).spec
        assert make("Pong", 1, 3, "ale", preset="atari100k") is not a
    assert klrl.envs.make_env.__module__ == "klrl.envs"   # nothing patched
    assert klrl.train.env_source(cfg).make(1, 2) is not a  # the trainer's own source builds its own pool


@needs_ale
def test_replay_memory_of_the_shipped_experiments():
    from klrl.bench.atari_measure import replay_memory

    a100k = replay_memory("experiments/atari100k.toml")
    # 84x84 uint8 frame + int32 action + float32 reward + 3 bool flags, from the store's arrays
    assert a100k["bytes_per_transition"] == 84 * 84 + 4 + 4 + 3 == a100k["declared_bytes_per_transition"]
    assert a100k["members_per_population"] == [5, 5, 5] and a100k["populations_per_game"] == 3
    assert a100k["bytes_per_population"] == 5 * 100_000 * 7067 + 8   # + the int32 cursors pos, size
    dopamine = replay_memory("experiments/atari_dopamine_mdqn.toml")
    assert dopamine["members_per_population"] == [3, 3]
    assert dopamine["bytes_per_member"] == 1_000_000 * 7067 + 8


def _row(m, mode, pmu, conv="lax", backend="ale", rate=None):
    return {"backend": backend, "members": m, "conv": conv, "member_map": mode,
            "update_seconds_per_member_update": pmu, "agent_steps_per_second": rate or 1.0 / pmu}


def test_compare_maps_picks_the_cheaper_member_map_per_conv():
    from klrl.bench.atari_report import compare_maps

    rows = [_row(1, "vmap", 1.0), _row(1, "map", 1.0), _row(4, "vmap", 2.0), _row(4, "map", 1.0),
            _row(4, "vmap", 0.1, "patches"), _row(4, "map", 0.2, "patches")]
    alone = [{"members": 1, "conv": "lax", "member_map": "vmap", "variant": "scan", "seconds_per_member_update": 0.5}]
    out = compare_maps(rows, alone, "cpu")
    assert out["choice"]["lax"]["member_map"] == "map" and out["choice"]["lax"]["vmap_over_map"] == 2.0
    assert out["choice"]["patches"]["member_map"] == "vmap" and out["choice"]["patches"]["vmap_over_map"] == 0.5
    at4 = next(r for r in out["rows"] if r["members"] == 4 and r["conv"] == "lax")
    assert at4["vmap_per_member_cost_vs_1"] == 2.0 and at4["map_per_member_cost_vs_1"] == 1.0
    assert next(r for r in out["rows"] if r["conv"] == "patches")["vmap_per_member_cost_vs_1"] is None  # no M = 1
    assert out["update_alone_seconds_per_member_update"] == {"lax": {"scan": {1: {"vmap": 0.5}}}}
    assert compare_maps(rows[:1], [], "cpu")["choice"] == {"lax": None}
    assert compare_maps([], [], "cpu")["choice"] == {}


def test_compare_convs_and_the_choice_of_the_fastest_pair():
    from klrl.bench.atari_report import choose, compare_convs

    rows = [_row(1, "vmap", 0.5, "lax", rate=8.0), _row(1, "vmap", 0.05, "patches", rate=40.0),
            _row(4, "vmap", 2.0, "lax", rate=2.0), _row(4, "map", 0.5, "lax", rate=6.0),
            _row(4, "vmap", 0.1, "patches", rate=50.0), _row(4, "map", 0.08, "patches", rate=60.0),
            _row(16, "map", 0.5, "lax", rate=5.0)]   # the budget cut the rest of M = 16
    alone = [{"members": 1, "conv": c, "member_map": "vmap", "variant": v, "seconds_per_member_update": s}
             for c, v, s in (("lax", "alone", 0.1), ("lax", "scan", 0.5), ("patches", "alone", 0.05),
                             ("patches", "scan", 0.04))]
    out = compare_convs(rows, alone)
    assert [(r["members"], r["member_map"]) for r in out["rows"]] == [(1, "vmap"), (4, "vmap"), (4, "map"), (16, "map")]
    r4 = out["rows"][1]
    assert r4["seconds_per_member_update_lax_over_patches"] == pytest.approx(20.0)
    assert r4["agent_steps_per_second_lax_over_patches"] == pytest.approx(2.0 / 50.0)
    assert r4["lax_agent_steps_per_second"] == 2.0 and r4["patches_seconds_per_member_update"] == 0.1
    assert "agent_steps_per_second_lax_over_patches" not in out["rows"][3]   # lax only at M = 16
    (a,) = out["update_alone"]
    assert a["lax_scan_over_alone"] == pytest.approx(5.0) and a["patches_scan_over_alone"] == pytest.approx(0.8)
    assert a["alone_lax_over_patches"] == pytest.approx(2.0) and a["scan_lax_over_patches"] == pytest.approx(12.5)

    c = choose(rows, "cpu")
    assert [(x["members"], x["conv"], x["member_map"]) for x in c["by_members"]] == [
        (1, "patches", "vmap"), (4, "patches", "map"), (16, "lax", "map")]
    assert c["by_members"][1]["over_next"] == pytest.approx(60.0 / 50.0) and c["by_members"][1]["pairs_measured"] == 4
    # overall: the largest M where at least two pairs ran (M = 16 had one)
    assert (c["overall"]["members"], c["overall"]["conv"], c["overall"]["member_map"]) == (4, "patches", "map")
    # two backends: a pair must be measured on both; the geometric mean decides
    two = [_row(1, "vmap", 1, "lax", "ale", 4.0), _row(1, "vmap", 1, "lax", "envpool", 9.0),
           _row(1, "vmap", 1, "patches", "ale", 5.0), _row(1, "vmap", 1, "patches", "envpool", 5.0),
           _row(1, "map", 1, "patches", "ale", 100.0)]
    (x,) = choose(two, "cpu")["by_members"]
    assert (x["conv"], x["member_map"], x["pairs_measured"]) == ("lax", "vmap", 2)
    assert x["agent_steps_per_second"] == pytest.approx(6.0)
    assert choose([], "cpu") is None


def test_training_estimate_scales_the_like_rows_update_cost():
    from klrl.bench.atari import sizes
    from klrl.bench.atari_report import estimate_training as _estimate_training

    size = sizes("cpu", quick=False)
    assert _estimate_training({"training": []}, "ale", 1, "lax", "vmap", size) is None
    done = dict(_row(4, "vmap", 0.5, "lax"), init_seconds=2.0, compile_seconds=3.0, warmup_chunk_seconds=0.5,
                no_update_chunk_seconds=[0.25, 0.5, 0.25], chunk_env_steps=4, updates_per_member_per_chunk=4)
    got = _estimate_training({"training": [done]}, "ale", 16, "lax", "vmap", size)
    # fixed 2 + 3 + 0.5 + 1 = 6.5; one update chunk: 16 members x 4 updates x 0.5 s x 1.25 + 0.25
    assert got == pytest.approx(6.5 + 16 * 4 * 0.5 * 1.25 + 0.25)
    # patches: nothing like it yet -> the fixed part only
    assert _estimate_training({"training": [done]}, "ale", 16, "patches", "vmap", size) == pytest.approx(6.5)
    # two sizes of the pair: the per-member cost's growth from M = 1 to 4 (2x) replaces the 1.25
    first = dict(done, members=1, update_seconds_per_member_update=0.25)
    got = _estimate_training({"training": [first, done]}, "ale", 16, "lax", "vmap", size)
    assert got == pytest.approx(6.5 + 16 * 4 * 0.5 * 2.0 + 0.25)


def test_sizes_keep_lax_rows_short_on_cpu():
    from klrl.bench.atari import CPU_BUDGET_S, sizes

    cpu = sizes("cpu", quick=False)
    assert cpu["members"] == (1, 4, 16) and cpu["budget_s"] == CPU_BUDGET_S
    assert [cpu["chunk"](m, "lax") for m in (1, 4, 16)] == [4, 4, 4] and cpu["update_chunks"]("lax") == 1
    assert cpu["update_chunks"]("patches") == 2 and cpu["alone_members"]((1, 4, 16)) == [1]
    gpu = sizes("gpu", quick=False)
    assert gpu["members"] == (1, 4, 16, 64) and gpu["budget_s"] is None
    assert gpu["alone_members"]((1, 4, 16, 64)) == [1, 64]
    quick = sizes("cpu", quick=True)
    assert quick["budget_s"] is None and quick["train_min_members"] == 2 and quick["alone_members"]((1, 2)) == [2]


def test_members_and_convs_options():
    from klrl.bench.atari import bench_atari, parse_convs, parse_members
    from klrl.cli import main

    assert parse_members("1,4,16,64") == (1, 4, 16, 64) and parse_members(None) is None
    for bad in ("", "0", "a,b", "4,-1"):
        with pytest.raises(ConfigError, match="--members"):
            parse_members(bad)
    assert main(["bench", "tabular", "--members", "4"]) == 2   # only bench atari takes it
    assert parse_convs("lax,patches") == ("lax", "patches")
    assert parse_convs("patches, lax,patches") == ("patches", "lax")
    for bad in ("", "xla", "lax,im2col"):
        with pytest.raises(ConfigError, match="--convs"):
            parse_convs(bad)
    with pytest.raises(ConfigError, match="--convs patches"):   # the conv is the bench's axis, not an override
        bench_atari(out_path="/nonexistent/x.json", quick=True, overrides=("agent.conv=patches",))
