"""Populations over devices (klrl.sharding), on fake CPU devices.

The contract: the same experiment on 1, 2 and 4 devices (4: slow) gives the same metrics to float
rounding, for an in-graph backend (gymnax) and a host pool (one pool per shard), with a
population (3 members) that no device count above 1 divides, so padding members run and
are dropped. Each device count runs in its own process (the device count is fixed when JAX
starts). A run checkpointed on 2 devices resumes on 1 and the reverse (klrl.relayout), through
the CLI, with the uninterrupted run's metrics to float rounding.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from engine_helpers import THREE_MEMBERS, cli_in_process, fake_devices_env, two_processes
from klrl.hooks import KILL_ENV
from klrl.results import read_metrics

# One worker runs this module (make test: --dist loadgroup), so the runs fixture runs once.
pytestmark = pytest.mark.xdist_group("sharding")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIGS = THREE_MEMBERS   # name -> experiment TOML
# The device counts each config runs on in make test: 1 and 2 (3 members padded to 4); 4 devices
# (one member or padding member per device) and 2 processes x 2 devices in the slow tests below.
DEVICES = {"gymnax": (1, 2), "pool": (1, 2)}

_RUN = textwrap.dedent("""
    import sys, jax
    from klrl.runner import run_experiment
    n, base = int(sys.argv[1]), sys.argv[2]
    assert len(jax.devices()) == n, jax.devices()
    for name in sys.argv[3:]:   # train.devices = n: every device, padding included
        run_experiment(f"{base}/{name}.toml", f"{base}/{name}-{n}", overrides=[f"train.devices={n}"])
""")


def _run(n: int, base, names) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _RUN, str(n), str(base), *names], cwd=ROOT, env=fake_devices_env(n),
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("sharding")
    for name, text in CONFIGS.items():
        (base / f"{name}.toml").write_text(text)
    for n in (1, 2, 4):
        res = _run(n, base, [name for name in CONFIGS if n in DEVICES[name]])
        assert res.returncode == 0, res.stderr[-3000:]
    return base


@pytest.mark.parametrize("name", list(CONFIGS))
def test_one_two_four_devices_give_the_same_metrics(runs, name):
    rows = {n: read_metrics(str(runs / f"{name}-{n}" / "metrics.csv")) for n in DEVICES[name]}
    index = [(r["member"], r["step"], r["metric"]) for r in rows[1]]
    assert {r["member"] for r in rows[1]} == {0, 1, 2}            # padding members never written
    n_max = max(DEVICES[name])
    for n in DEVICES[name][1:]:
        assert [(r["member"], r["step"], r["metric"]) for r in rows[n]] == index
        np.testing.assert_allclose([r["value"] for r in rows[n]], [r["value"] for r in rows[1]],
                                   rtol=2e-3, atol=1e-5, equal_nan=True)
    # training happened (the comparison is not between untrained copies)
    loss = [r["value"] for r in rows[n_max] if r["metric"] == "loss" and r["step"] == 400]
    assert len(loss) == 3 and np.all(np.isfinite(loss))
    cfg = json.load(open(runs / f"{name}-{n_max}" / "config.json"))
    assert cfg["provenance"]["device"]["num_devices"] == n_max and len(cfg["members"]) == 3
    assert cfg["placement"]["devices"] == {"mdqn": n_max} and cfg["config"]["train"]["devices"] == n_max


def test_two_processes_equal_one_process_with_two_devices(runs):
    """klrl.distributed: 2 processes x 1 fake device on 127.0.0.1 give the metrics of 1 x 2;
    process 0 writes and reports, process 1 is quiet. (2 x 2 against 1 x 4: slow.)"""
    _check_two_processes(runs, devices=1)


def _check_two_processes(runs, devices):
    tag = f"2x{devices}"
    (rc0, err0), (rc1, err1) = two_processes(runs / "gymnax.toml", runs / f"gymnax-{tag}", devices=devices)
    assert (rc0, rc1) == (0, 0), (err0[-2000:], err1[-2000:])
    a = read_metrics(str(runs / f"gymnax-{2 * devices}" / "metrics.csv"))
    b = read_metrics(str(runs / f"gymnax-{tag}" / "metrics.csv"))
    assert [(r["member"], r["step"], r["metric"]) for r in b] == [(r["member"], r["step"], r["metric"]) for r in a]
    np.testing.assert_allclose([r["value"] for r in b], [r["value"] for r in a], rtol=2e-3, atol=1e-5,
                               equal_nan=True)
    assert "chunk 2/2" in err0 and "chunk" not in err1
    assert sorted(os.listdir(runs / f"gymnax-{tag}")) == sorted(os.listdir(runs / f"gymnax-{2 * devices}"))


def _same_metrics(a_dir, b_dir) -> None:
    a, b = read_metrics(str(a_dir / "metrics.csv")), read_metrics(str(b_dir / "metrics.csv"))
    assert [(r["member"], r["step"], r["metric"]) for r in b] == [(r["member"], r["step"], r["metric"]) for r in a]
    np.testing.assert_allclose([r["value"] for r in b], [r["value"] for r in a], rtol=2e-3, atol=1e-5, equal_nan=True)


def test_killed_on_two_devices_resumes_on_one(runs, tmp_path):
    """`klrl train` on 2 devices (train.devices auto: 3 members on 2), SIGKILLed after its
    first chunk, resumes on 1 device (this process): the checkpoint is re-laid (padding
    dropped, the shards' envs and replays restacked) and the run ends with the uninterrupted
    2-device run's metrics to float rounding."""
    out = tmp_path / "killed"
    res = subprocess.run([sys.executable, "-m", "klrl.cli", "train", str(runs / "gymnax.toml"), "--out", str(out)],
                         cwd=ROOT, env=fake_devices_env(2, {KILL_ENV: "1"}), capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == -signal.SIGKILL, res.stderr[-3000:]
    assert "3 members on 2 devices of 2 (+1 padding)" in res.stderr
    assert json.load(open(out / "config.json"))["placement"]["devices"] == {"mdqn": 2}
    resumed = cli_in_process("train", runs / "gymnax.toml", "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpoint written on 2 device(s) (4 members with padding) re-laid on 1 (3)" in resumed.stderr
    _same_metrics(runs / "gymnax-2", out)


@pytest.mark.slow    # the 2 -> 1 direction stays in the fast suite
def test_one_device_run_resumes_on_two(runs, tmp_path):
    """The reverse: a 1-device run's checkpoint after chunk 1 continued on 2 devices (padding
    added, frozen) gives the uninterrupted 1-device run's metrics to float rounding."""
    out = tmp_path / "one"
    shutil.copytree(runs / "gymnax-1", out)
    shutil.rmtree(out / "checkpoints" / "mdqn" / "2")          # as if killed after chunk 1
    res = subprocess.run([sys.executable, "-m", "klrl.cli", "train", str(runs / "gymnax.toml"), "--out", str(out),
                          "--resume"], cwd=ROOT, env=fake_devices_env(2), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "re-laid on 2 (4)" in res.stderr and "3 members on 2 devices of 2" in res.stderr
    _same_metrics(runs / "gymnax-1", out)


def test_more_devices_than_there_are_is_refused(runs, tmp_path):
    res = cli_in_process("train", runs / "gymnax.toml", "--out", tmp_path / "x", "--set", "train.devices=2")
    assert res.returncode == 2 and not (tmp_path / "x").exists()
    assert res.stderr.strip().splitlines()[-1].startswith("klrl: error: train.devices: got 2; allowed auto or at "
                                                          "most 1 (the devices JAX sees here")


def test_layout_is_declared_per_field():
    """Every TrainState leaf has a declared kind; per-member leaves lead with M, SHARD leaves
    are whole components (env, replay), replicated ones are the counters."""
    import jax

    from klrl.sharding import MEMBER, REPLICATED, SHARD
    from klrl.train import StaticConfig, make_train

    cfg = StaticConfig(env={"name": "CartPole-v1", "num_envs": 2}, agent={"name": "dqn", "hidden": (8,)},
                       train={"total_steps": 40, "chunk_steps": 20, "buffer_size": 32, "batch_size": 4,
                              "learning_starts": 8}, eval={"episodes": 1})
    tr = make_train(cfg)
    state = jax.eval_shape(tr.init, jax.ShapeDtypeStruct((3, 2), np.uint32), {})
    kinds = tr.layout(state)
    assert set(jax.tree.leaves(kinds.learner)) == {MEMBER} and set(jax.tree.leaves(kinds.actor)) == {MEMBER}
    assert set(jax.tree.leaves(kinds.replay)) == {SHARD} and set(jax.tree.leaves(kinds.env)) == {SHARD}
    assert kinds.keys.shared == SHARD and set(jax.tree.leaves(kinds.counters)) == {REPLICATED}
    for leaf, kind in zip(jax.tree.leaves(state), jax.tree.leaves(kinds)):
        if kind == MEMBER:
            assert leaf.shape[0] == 3


@pytest.mark.slow
def test_an_emulator_pool_per_shard(tmp_path):
    """ale (one AtariVectorEnv per shard, each named by its handle): 3 members on 2 devices
    (one padding member) give the 1-device numbers to rounding."""
    import klrl.envs.atari as atari

    if atari.missing_packages("ale"):
        pytest.skip("ale-py is not installed (pip install -e '.[atari]')")
    sets = ["env.name=Pong", "agent.name=mdqn", "agent.torso=minatar_cnn", "agent.hidden=[16]", "env.num_envs=2",
            "eval.envs=1", "train.total_steps=400", "train.chunk_steps=200", "train.buffer_size=400",
            "train.learning_starts=100", "train.batch_size=8", "train.seeds=3", "train.replay_mode=per-member",
            "eval.final_episodes=0"]
    args = [a for s in sets for a in ("--set", s)]
    for n in (1, 2):
        res = subprocess.run([sys.executable, "-m", "klrl.cli", "train", os.path.join(ROOT, "experiments",
                              "atari100k.toml"), "--out", str(tmp_path / f"pong-{n}"), *args], cwd=ROOT,
                             capture_output=True, text=True, timeout=900,
                             env=fake_devices_env(n))
        assert res.returncode == 0, res.stderr[-3000:]
    a = read_metrics(str(tmp_path / "pong-1" / "metrics.csv"))
    b = read_metrics(str(tmp_path / "pong-2" / "metrics.csv"))
    assert [(r["member"], r["step"], r["metric"]) for r in a] == [(r["member"], r["step"], r["metric"]) for r in b]
    np.testing.assert_allclose([r["value"] for r in b], [r["value"] for r in a], rtol=2e-3, atol=1e-5, equal_nan=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_four_devices_give_the_one_device_metrics(runs, name):
    """One member or padding member per device, a pool per shard for the host pool; and for
    gymnax 2 processes x 2 devices equal 1 x 4."""
    res = _run(4, runs, [name])
    assert res.returncode == 0, res.stderr[-3000:]
    a = read_metrics(str(runs / f"{name}-1" / "metrics.csv"))
    b = read_metrics(str(runs / f"{name}-4" / "metrics.csv"))
    assert [(r["member"], r["step"], r["metric"]) for r in a] == [(r["member"], r["step"], r["metric"]) for r in b]
    np.testing.assert_allclose([r["value"] for r in b], [r["value"] for r in a], rtol=2e-3, atol=1e-5, equal_nan=True)
    assert json.load(open(runs / f"{name}-4" / "config.json"))["provenance"]["device"]["num_devices"] == 4
    if name == "gymnax":
        _check_two_processes(runs, devices=2)
