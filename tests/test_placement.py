"""Where a run runs (klrl.placement) and a state re-laid for another device count
(klrl.relayout): pure functions, no compile."""

from __future__ import annotations

import numpy as np
import pytest

from klrl import placement, relayout
from klrl.config import build_experiment
from klrl.errors import ConfigError
from klrl.replay import ReplayState
from klrl.static import StaticConfig

FLAG = placement.HOST_DEVICES_FLAG


def test_the_cli_adds_one_host_device_per_core_and_never_overrides_a_users_count():
    assert placement.host_device_flags({}, 4) == f"{FLAG}=4"
    assert placement.host_device_flags({"XLA_FLAGS": "--xla_cpu_fast_math=false"}, 2) == \
        f"--xla_cpu_fast_math=false {FLAG}=2"
    assert placement.host_device_flags({"XLA_FLAGS": f"--xla_dump_to=/tmp {FLAG}=1"}, 8) is None
    assert placement.host_device_flags({"JAX_NUM_CPU_DEVICES": "3"}, 8) is None
    assert placement.host_cores() >= 1


@pytest.mark.parametrize("members,available,expected", [
    (1, 8, 1), (2, 2, 2), (3, 2, 2), (8, 2, 2), (7, 8, 7), (9, 8, 5), (5, 4, 3), (16, 4, 4), (3, 1, 1)])
def test_auto_takes_the_fewest_devices_that_give_the_shortest_shards(members, available, expected):
    n = placement.shard_count("auto", available, members, "per-member")
    assert n == expected
    assert -(-members // n) == -(-members // available)          # the shortest shard of any count


def test_device_count_rules():
    assert placement.shard_count("auto", 8, 16, "shared") == 1     # a shared store stays whole
    assert placement.shard_count(3, 4, 16, "shared") == 3          # unless asked
    assert placement.shard_count("auto", 4, 1, "per-member", processes=2) == 4
    with pytest.raises(ConfigError, match=r"^train.devices: got 5; allowed auto or at most 4 \(the devices"):
        placement.shard_count(5, 4, 8, "per-member")
    with pytest.raises(ConfigError, match=r"^train.devices: got 2 in a run of 2 processes; allowed auto or 4"):
        placement.shard_count(2, 4, 8, "per-member", processes=2)


def test_train_devices_is_recorded_not_hashed():
    base = build_experiment({})
    two = build_experiment({}, ["train.devices=2"])
    assert two.config_hash() == base.config_hash() == build_experiment({}, ["train.devices=auto"]).config_hash()
    assert two.resolved()["train"]["devices"] == 2 and "devices" not in base.resolved()["train"]
    for bad in ("0", "two", "1.5", "true"):
        with pytest.raises(ConfigError, match=r"^train.devices: got .*; allowed auto or a device count >= 1$"):
            build_experiment({}, [f"train.devices={bad}"])
    with pytest.raises(ConfigError, match=r"^sweep.train.devices: got a sweep over a static setting"):
        build_experiment({}, ["sweep.train.devices=[1, 2]"])


def test_auto_is_the_platforms_choice_and_is_not_hashed():
    cpu, gpu = placement.platform_choice("cpu", "nature_cnn"), placement.platform_choice("gpu", "nature_cnn")
    assert cpu == {"agent.conv": "patches", "train.member_map": "map"}
    assert gpu == {"agent.conv": "lax", "train.member_map": "vmap"}
    assert placement.platform_choice("cpu", "mlp")["train.member_map"] == "vmap"
    cfg = StaticConfig(env={"name": "Breakout-MinAtar"}, agent={"torso": "minatar_cnn"})
    assert (cfg.agent.conv, cfg.train.member_map) == ("auto", "auto")
    placed = placement.resolve(cfg, platform="cpu")
    assert (placed.agent.conv, placed.train.member_map) == ("patches", "vmap")
    assert placement.resolve(cfg.replace(agent={"conv": "lax"}), platform="cpu").agent.conv == "lax"
    exp = build_experiment({})
    assert "conv" not in exp.resolved()["agent"] and "member_map" not in exp.resolved()["train"]
    assert build_experiment({}, ["agent.conv=lax"]).config_hash() != exp.config_hash()


def test_a_resumed_run_keeps_what_its_record_resolved_on_the_same_platform():
    cfg = StaticConfig(env={"name": "Breakout-MinAtar"}, agent={"torso": "minatar_cnn"})
    rec = {"placement": {"platform": "cpu", "agent.conv": "lax", "train.member_map": "vmap"}}
    same, note = placement.resolve_for_run(cfg, "cpu", rec)
    assert same.agent.conv == "lax" and note == ""
    moved, note = placement.resolve_for_run(cfg, "gpu", {"placement": {**rec["placement"], "agent.conv": "patches"}})
    assert moved.agent.conv == "lax" and note == ("klrl: recorded on cpu, resumed on gpu: auto resolves to "
                                                  "agent.conv = lax (was patches)")
    old, note = placement.resolve_for_run(cfg, "cpu", {"config": {}})      # recorded before `auto`
    assert (old.agent.conv, old.train.member_map, note) == ("lax", "vmap", "")
    fresh, _ = placement.resolve_for_run(cfg, "cpu", None)
    assert fresh.agent.conv == "patches"


def _shared_store(shards, local, envs, T, pos, size):
    """A shared replay state [S, T, L·E]: slot (t, column) of shard s holds 1000·member +
    100·env + (the add that wrote it), so a re-laid slot says where it came from."""
    frame = np.zeros((shards, T, local * envs), np.int32)
    adds = size if size < T else T
    for s in range(shards):
        for a in range(adds):                       # age a: written by add number (n_adds - 1 - a)
            t = (pos - 1 - a) % T
            for c in range(local * envs):
                m = s * local + c // envs
                frame[s, t, c] = 1000 * m + 100 * (c % envs) + (size - 1 - a)
    full = lambda v: np.full((shards,), v, np.int32)   # noqa: E731
    return ReplayState({"frame": frame}, full(pos), full(size))


def test_a_shared_store_is_re_laid_by_member_columns_and_age():
    """3 members, 2 envs, buffer 24: T = 6 on 2 shards of 2, T = 4 on one shard of 3. The
    newest min(size, T') slots of each member's columns move, oldest first."""
    rules = relayout.Rules(shared=True, envs=2, buffer=24)
    old, new = relayout.Layout(2, 2, 3), relayout.Layout(1, 3, 3)
    store = _shared_store(2, 2, 2, rules.ring(2), pos=2, size=6)       # full ring, wrapped
    out = relayout._shared_store(store, rules, old, new)
    assert out.data["frame"].shape == (1, 4, 6) and list(out.pos) == [0] and list(out.size) == [4]
    got = out.data["frame"][0]
    for t in range(4):                                  # adds 2..5 (the newest 4), oldest first
        for c in range(6):
            assert got[t, c] == 1000 * (c // 2) + 100 * (c % 2) + (2 + t)
    back = relayout._shared_store(out, rules, new, relayout.Layout(2, 2, 3))
    assert back.data["frame"].shape == (2, 6, 4) and list(back.size) == [4, 4] and list(back.pos) == [4, 4]
    assert back.data["frame"][1, :4, :2].tolist() == got[:, 4:6].tolist()     # member 2 on shard 1
    assert back.data["frame"][1, :4, 2:].tolist() == got[:, 4:6].tolist()     # its padding copy


def test_member_rows_are_unpadded_and_repadded():
    old, new = relayout.Layout(2, 2, 3), relayout.Layout(4, 1, 3)
    x = np.arange(4 * 2).reshape(2, 2, 2)                              # [S, L, E]: member m -> 2m, 2m+1
    got = relayout._members(x, old, new, axis_shards=True)
    assert got.shape == (4, 1, 2) and got[:, 0].tolist() == [[0, 1], [2, 3], [4, 5], [4, 5]]
    assert relayout._members(np.arange(4), old, relayout.Layout(1, 3, 3), axis_shards=False).tolist() == [0, 1, 2]


@pytest.mark.parametrize("run,ran_with", [("minatar_breakout", ("lax", "vmap")),
                                          ("atari_pipeline/Pong", ("patches", "vmap"))])
def test_committed_runs_from_before_auto_resume_with_what_they_ran(run, ran_with):
    """Their records name no conv / member_map (the defaults of the time, lax and vmap): the
    hash still matches today's config (where the keys are `auto`), and a resume keeps them."""
    import json
    import os

    from klrl.config import load_experiment

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rec = json.load(open(os.path.join(root, "results", run, "config.json")))
    exp = load_experiment(os.path.join(root, rec["config_file"]), rec["overrides"])
    assert exp.schema.record_hash(rec) == exp.config_hash()
    assert exp.static.train.member_map == "auto" and "placement" not in rec
    placed, note = placement.resolve_for_run(exp.static, "cpu", rec)
    assert (placed.agent.conv, placed.train.member_map, note) == (*ran_with, "")


def test_the_cli_gives_jax_one_device_per_core_before_it_starts():
    """klrl.cli sets the flag in a fresh process (JAX not imported yet): JAX then sees one CPU
    device per core (a count in the environment is left alone: the first test)."""
    import os
    import subprocess
    import sys

    code = ("import os, sys; from klrl import cli; cli._host_devices(); assert 'jax' not in sys.modules; "
            "import jax; print(jax.device_count(), os.environ['XLA_FLAGS'])")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    cores = placement.host_cores()
    assert out.stdout.split() == [str(cores), f"{FLAG}={cores}"]
