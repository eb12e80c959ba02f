"""`klrl bench atari`: the quick run's JSON structure (no timing assertions), the replay
arithmetic of the shipped experiments, the vmap/map comparison and the --members option."""

import json
import math

import pytest

from klrl.envs.atari import missing_packages
from klrl.errors import ConfigError

needs_ale = pytest.mark.skipif(bool(missing_packages("ale")), reason="ale-py not installed (extra atari)")


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow   # ~150 s on the shared 2-core machine: 3 compiled training chunks of the Nature CNN
@needs_ale
def test_quick_bench_writes_positive_finite_numbers(tmp_path):
    from klrl.bench.atari import bench_atari

    out = tmp_path / "atari.json"
    bench_atari(out_path=str(out), quick=True)
    r = json.loads(out.read_text())
    assert r["quick"] is True and r["platform"] and r["device_kind"] and r["provenance"]["commit"]
    assert r["machine"]["cpu_count"] >= 1 and r["load_average_1min_start"] >= 0 and r["elapsed_seconds"] > 0
    raw = r["raw_pool"]
    assert {(x["backend"], x["members"]) for x in raw} >= {("ale", 1), ("ale", 2)}
    for x in raw:
        assert _positive(x["agent_steps_per_second"]) and _positive(x["env_steps_per_second"])
        assert x["env_steps_per_second"] > x["agent_steps_per_second"]   # test envs step too
    train = r["training"]
    assert {(x["members"], x["member_map"]) for x in train} == {(1, "vmap"), (2, "vmap"), (2, "map")}
    for x in train:
        for k in ("agent_steps_per_second", "agent_steps_per_second_no_updates", "compile_seconds", "ratio_to_raw",
                  "acting_env_replay_seconds_per_vector_step"):
            assert _positive(x[k]), (k, x[k])
        assert x["update_seconds_per_member_update"] >= 0 and math.isfinite(x["update_seconds_per_member_update"])
        assert x["loss_finite"] and x["no_update_chunks_had_no_updates"]
        assert len(x["no_update_chunk_seconds"]) == 3 and all(map(_positive, x["update_chunk_seconds"]))
    assert all(_positive(x["seconds_per_member_update"]) for x in r["update_alone"])
    maps = r["member_map"]
    assert maps["choice"]["member_map"] in ("vmap", "map") and _positive(maps["choice"]["vmap_over_map"])
    assert any("vmap_over_map" in row for row in maps["rows"])
    assert [x["bytes_per_transition"] for x in r["replay"]] == [7067, 7067]


@needs_ale
def test_raw_pool_counts_train_envs_as_agent_steps():
    from klrl.bench.atari import time_raw_pool

    r = time_raw_pool("ale", "Pong", 1, 4, 48)
    assert r["vector_steps"] == 8 and _positive(r["seconds"])
    assert r["env_steps_per_second"] / r["agent_steps_per_second"] == pytest.approx(6 / 4)


@needs_ale
def test_replay_memory_of_the_shipped_experiments():
    from klrl.bench.atari import replay_memory

    a100k = replay_memory("experiments/atari100k.toml")
    # 84x84 uint8 frame + int32 action + float32 reward + 3 bool flags, from the store's arrays
    assert a100k["bytes_per_transition"] == 84 * 84 + 4 + 4 + 3 == a100k["declared_bytes_per_transition"]
    assert a100k["members_per_population"] == [5, 5, 5] and a100k["populations_per_game"] == 3
    assert a100k["bytes_per_population"] == 5 * 100_000 * 7067 + 8   # + the int32 cursors pos, size
    dopamine = replay_memory("experiments/atari_dopamine_mdqn.toml")
    assert dopamine["members_per_population"] == [3, 3]
    assert dopamine["bytes_per_member"] == 1_000_000 * 7067 + 8


def test_compare_maps_picks_the_cheaper_member_map():
    from klrl.bench.atari import compare_maps

    def row(m, mode, pmu):
        return {"backend": "ale", "members": m, "member_map": mode, "update_seconds_per_member_update": pmu,
                "agent_steps_per_second": 1.0 / pmu}

    rows = [row(1, "vmap", 1.0), row(1, "map", 1.0), row(4, "vmap", 2.0), row(4, "map", 1.0)]
    out = compare_maps(rows, [], "cpu")
    assert out["choice"]["member_map"] == "map" and out["choice"]["vmap_over_map"] == 2.0
    at4 = next(r for r in out["rows"] if r["members"] == 4)
    assert at4["vmap_per_member_cost_vs_1"] == 2.0 and at4["map_per_member_cost_vs_1"] == 1.0
    assert compare_maps(rows[:1], [], "cpu")["choice"] is None


def test_members_option():
    from klrl.bench.atari import parse_members
    from klrl.cli import main

    assert parse_members("1,4,16,64") == (1, 4, 16, 64) and parse_members(None) is None
    for bad in ("", "0", "a,b", "4,-1"):
        with pytest.raises(ConfigError, match="--members"):
            parse_members(bad)
    assert main(["bench", "tabular", "--members", "4"]) == 2   # only bench atari takes it
