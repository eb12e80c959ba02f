"""Array jobs (`klrl train --task I --num-tasks N`, klrl.tasks) and `klrl merge` (klrl.merge).

One tiny sweep (CartPole-v1, 120 steps in 3 chunks, dqn and mdqn x 3 learning rates x 2
seeds = 12 members, per-member replay, a final evaluation) runs unsplit and as 3 tasks, then
the tasks are merged: the merged run must be the unsplit one. Member m goes to task m mod 3,
so every task holds 2 members of each agent (both populations are interleaved) and the
tasks share their programs: the four trainings run in process (klrl.cli.main) with the test
run's persistent compilation cache (conftest), so each program compiles once. One xdist worker
runs this module (make test: --dist loadgroup), so the `job` fixture is built once.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil

import numpy as np
import pytest

from klrl import cli
from klrl.config import load_experiment
from klrl.errors import ConfigError
from klrl.population import build_populations
from klrl.results import read_metrics
from klrl.tasks import Task, split_populations
from klrl.tracking import installed

from engine_helpers import cli_in_process, run_cli

CFG = """
[env]
name = "CartPole-v1"
num_envs = 2

[agent]
name = "dqn"
hidden = [8]

[train]
total_steps = 120
chunk_steps = 40
buffer_size = 64
batch_size = 8
learning_starts = 20
target_update_every = 20
seeds = 2
replay_mode = "per-member"

[eval]
episodes = 1
final_episodes = 2

[sweep]
"agent.name" = ["dqn", "mdqn"]
"train.learning_rate" = [1e-3, 3e-3, 1e-2]

[output]
checkpoint_every = 3
"""
MEMBERS, TASKS = 12, 3
pytestmark = pytest.mark.xdist_group("tasks")


def _tree(path) -> dict:
    """Every file below `path` -> (size, mtime): what a refused command must leave unchanged."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            st = os.stat(os.path.join(root, f))
            out[os.path.join(root, f)] = (st.st_size, st.st_mtime_ns)
    return out


def _keys(rows):
    return [(r["member"], r["step"], r["metric"]) for r in rows]


@pytest.fixture(scope="module")
def job(tmp_path_factory, jax_cache_env):
    """The unsplit run, and the array job of 3 tasks merged."""
    base = tmp_path_factory.mktemp("tasks")
    cfg = base / "tasks.toml"
    cfg.write_text(CFG)
    env = dict(jax_cache_env)      # for the slow test's subprocesses
    full, arr = base / "full", base / "arr"
    # TensorBoard as a sink where installed (klrl.tracking: each task tracks its own members)
    sinks = ["--set", 'output.sinks=["csv", "tensorboard"]'] if installed("tensorboard") else []
    # in process (klrl.cli.main): the three tasks share their programs through the compile cache
    runs = [cli_in_process("train", cfg, "--out", full, *sinks)]
    runs += [cli_in_process("train", cfg, "--out", arr, "--task", i, "--num-tasks", TASKS, *sinks)
             for i in range(TASKS)]
    for res in runs:
        assert res.returncode == 0, res.stderr[-3000:]
    with contextlib.redirect_stdout(io.StringIO()) as merged:     # the merge compiles nothing: in process
        assert cli.main(["merge", str(arr)]) == 0
    return {"cfg": str(cfg), "full": full, "arr": arr, "base": base, "env": env, "merge_stdout": merged.getvalue()}


def test_merged_run_equals_the_unsplit_run(job):
    full, arr = job["full"], job["arr"]
    for name in ("metrics.csv", "final_eval.csv"):
        a, b = read_metrics(str(full / name)), read_metrics(str(arr / name))
        assert _keys(a) == _keys(b) and len(a) > 0, name        # same rows in the same order
        np.testing.assert_allclose([r["value"] for r in a], [r["value"] for r in b], rtol=1e-4, equal_nan=True)
    assert (full / "metrics.csv").read_text().splitlines()[0] == (arr / "metrics.csv").read_text().splitlines()[0]
    ref, merged = json.load(open(full / "config.json")), json.load(open(arr / "config.json"))
    assert merged["merged_from"] == [f"task-{i}" for i in range(TASKS)]
    assert "task" not in merged and "task_members" not in merged
    for key in ("config", "config_hash", "config_file", "overrides", "members"):
        assert merged[key] == ref[key], key
    s_ref, s_merged = (json.load(open(d / "summary.json"))["summary"] for d in (full, arr))
    assert [s["group"] for s in s_merged] == [s["group"] for s in s_ref] and len(s_ref) == 6
    assert all(s["final_eval_return"]["n"] == 2 and s["final_evaluation"]["n"] == 2 for s in s_merged)
    timing = json.load(open(arr / "timing.json"))["tasks"]
    assert [t["task"] for t in timing] == [0, 1, 2] and all(t["timing"]["populations"] for t in timing)
    assert os.path.getsize(arr / "learning_curves.png") > 10_000
    assert "final greedy evaluation return" in job["merge_stdout"]


def test_each_task_is_a_run_directory_of_its_members(job):
    full_hash = json.load(open(job["full"] / "config.json"))["config_hash"]
    for i in range(TASKS):
        d = job["arr"] / f"task-{i}"
        rec = json.load(open(d / "config.json"))
        assert rec["task"] == {"task": i, "num_tasks": TASKS} and rec["config_hash"] == full_hash
        assert len(rec["members"]) == MEMBERS
        assert rec["task_members"] == [m for m in range(MEMBERS) if m % TASKS == i]
        assert {r["member"] for r in read_metrics(str(d / "metrics.csv"))} == set(rec["task_members"])
        assert sorted(os.listdir(d / "checkpoints")) == ["dqn", "mdqn"]
        assert (d / "summary.json").is_file() and (d / "timing.json").is_file()


@pytest.mark.skipif(not installed("tensorboard"), reason="the tensorboard extra is not installed")
def test_each_member_is_tracked_once_by_the_task_that_trains_it(job):
    """Every member is one TensorBoard run, written by the task that trains it; `klrl merge`
    writes none (the merged run is not tracked twice)."""
    from tracker_files import read_tensorboard

    found = {}
    for i in range(TASKS):
        for run, board in read_tensorboard(str(job["arr"] / f"task-{i}")).items():
            member = int(run.rsplit("/m", 1)[1])
            assert member % TASKS == i and member not in found
            found[member] = [s for s, _ in board["scalars"]["eval_return"]]
    assert sorted(found) == list(range(MEMBERS)) and all(steps == [40, 80, 120] for steps in found.values())
    assert not (job["arr"] / "tensorboard").exists() and not (job["arr"] / "tracking.json").exists()


def test_an_agent_without_members_in_a_task_is_skipped(job):
    exp = load_experiment(job["cfg"], ["sweep.train.learning_rate=[1e-3]"])   # dqn: 0, 1; mdqn: 2, 3
    pops = build_populations(exp)
    share = {i: split_populations(pops, Task(i, 3), "per-member") for i in range(3)}
    assert [[(p.agent, [m.member for m in p.members]) for p in share[i]] for i in range(3)] == [
        [("dqn", [0]), ("mdqn", [3])], [("dqn", [1])], [("mdqn", [2])]]
    mdqn = pops[1]
    kept = share[0][1]                 # member 3: keys and hyperparameters are its unsplit row
    np.testing.assert_array_equal(kept.keys, mdqn.keys[1:2])
    assert all(np.array_equal(kept.hparams[n], v[1:2]) for n, v in mdqn.hparams.items())


def test_resuming_a_task_continues_that_task_only(job, tmp_path, capsys):
    out = tmp_path / "arr"
    shutil.copytree(job["arr"] / "task-1", out / "task-1")
    metrics = (out / "task-1" / "metrics.csv").read_bytes()
    train = ["train", job["cfg"], "--out"]
    assert cli.main([*train, str(out), "--task", "1", "--num-tasks", "3", "--resume"]) == 0   # finished: no-op
    assert (out / "task-1" / "metrics.csv").read_bytes() == metrics
    assert (out / "task-1" / "timing_resume.json").is_file()
    assert "[dqn] already finished" in capsys.readouterr().err
    before, merged = _tree(out), _tree(job["arr"])
    for argv, needle in (
        ([str(out), "--task", "1", "--num-tasks", "2"], "holds task 1 of 3; allowed --task 1 --num-tasks 3"),
        ([str(out / "task-1")], "holds task 1 of 3; allowed --task 1 --num-tasks 3"),
        ([str(out), "--task", "0", "--num-tasks", "3"], "holds no run"),
        ([str(job["arr"])], "holds a merged array job (klrl merge)"),
    ):
        assert cli.main([*train, *argv, "--resume"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err
    assert _tree(out) == before and _tree(job["arr"]) == merged


@pytest.mark.parametrize("flags, needle", [
    (["--task", "0", "--num-tasks", "3", "--set", "train.replay_mode=shared"],
     "--num-tasks: got 3 with train.replay_mode = \"shared\"; allowed --num-tasks 1, or train.replay_mode = "
     "\"per-member\" (a shared buffer would be shared only within each task"),
    (["--task", "3", "--num-tasks", "3"], "--task: got 3; allowed 0..2"),
    (["--task", "-1", "--num-tasks", "3"], "--task: got -1; allowed 0..2"),
    (["--task", "0", "--num-tasks", "0"], "--num-tasks: got 0; allowed an integer >= 1"),
    (["--task", "one", "--num-tasks", "3"], "--task: got 'one'; allowed an integer"),
    (["--task", "0"], "--task: got --task without --num-tasks; allowed both"),
    (["--num-tasks", "3"], "--num-tasks: got --num-tasks without --task; allowed both"),
    (["--task", "0", "--num-tasks", "13"], "--num-tasks: got 13; allowed 1..12 (the run has 12 members"),
])
def test_bad_split_exits_2_with_one_line_and_writes_nothing(job, capsys, flags, needle):
    out = job["base"] / "never"
    assert cli.main(["train", job["cfg"], "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("klrl: error: ") and needle in err, err
    assert not out.exists()


def _copy_tasks(job, dest, tasks=range(TASKS)):
    for i in tasks:
        shutil.copytree(job["arr"] / f"task-{i}", dest / f"task-{i}", ignore=shutil.ignore_patterns("checkpoints"))
    return dest


def _edit(path, **changes):
    rec = json.load(open(path))
    rec.update(changes)
    json.dump(rec, open(path, "w"))


@pytest.mark.parametrize("case, needle", [
    ("missing", "merge: got tasks 0, 2 of 3 in"),
    ("hash", "with config hash 000000000000"),
    ("num_tasks", "of --num-tasks 4 next to"),
    ("unfinished", "(no summary.json); allowed finished tasks (resume it: klrl train CONFIG --out"),
    ("merged", "which already holds a merged run (config.json)"),
    ("empty", "with no task-I directory"),
])
def test_bad_merge_exits_2_with_one_line_and_writes_nothing(job, tmp_path, capsys, case, needle):
    out = tmp_path / "arr"
    if case == "missing":
        _copy_tasks(job, out, [0, 2])
    elif case == "merged":
        out = job["arr"]
    elif case == "empty":
        out.mkdir()
    else:
        _copy_tasks(job, out)
        if case == "hash":
            _edit(out / "task-1" / "config.json", config_hash="0" * 64)
        elif case == "num_tasks":
            _edit(out / "task-2" / "config.json", task={"task": 2, "num_tasks": 4})
        else:
            os.remove(out / "task-1" / "summary.json")
    before = _tree(out)
    assert cli.main(["merge", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("klrl: error: ") and needle in err, err
    assert _tree(out) == before


def test_a_task_directory_can_be_a_reference_run(job):
    """A task's config.json lists the whole run but its checkpoints hold only its members:
    klrl.reference finds a member's row among them and refuses the others."""
    from klrl.reference import _run_info

    run = str(job["arr"] / "task-2")                     # members 2, 5, 8, 11: mdqn is 6..11
    info = _run_info(run, 8, "CartPole-v1")
    assert (info.agent, info.local_index, info.population_size) == ("mdqn", 0, 2)
    with pytest.raises(ConfigError, match="agent.reference_member: got 7; allowed a member that"):
        _run_info(run, 7, "CartPole-v1")


@pytest.mark.slow
def test_an_env_sweep_is_split_env_by_env_and_merged_like_a_sweep(job, tmp_path):
    """With a sweep over env.name each task is a sweep (sweep.json, one run per env, each
    split the same way) and the merge writes the unsplit sweep: sweep.json, summary.json
    and one merged run directory per env, in the unsplit run's row order. Slow (two more
    processes, ~25 s): the fast file stays within its minute."""
    cfg = tmp_path / "envs.toml"     # the same static config as CFG's dqn: CartPole's program is cached
    cfg.write_text(CFG.replace('"agent.name" = ["dqn", "mdqn"]', '"env.name" = ["CartPole-v1", "Acrobot-v1"]')
                   .replace("[1e-3, 3e-3, 1e-2]", "[1e-3, 3e-3]"))            # 4 members, 2 per task
    out, envs = tmp_path / "arr", ["CartPole-v1", "Acrobot-v1"]
    for i in range(2):
        res = run_cli("train", str(cfg), "--out", str(out), "--task", str(i), "--num-tasks", "2", env=job["env"])
        assert res.returncode == 0, res.stderr[-3000:]
    assert json.load(open(out / "task-1" / "sweep.json"))["task"] == {"task": 1, "num_tasks": 2}
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["merge", str(out)]) == 0
    sweep = json.load(open(out / "sweep.json"))
    assert sweep["merged_from"] == ["task-0", "task-1"] and "task" not in sweep
    assert sweep["config_hash"] == load_experiment(str(cfg)).config_hash() and list(sweep["runs"]) == envs
    assert set(json.load(open(out / "summary.json"))["summary"]) == set(envs)
    for env in envs:
        rec = json.load(open(out / env / "config.json"))
        assert rec["config_hash"] == load_experiment(str(cfg), [f"env.name={env}"]).config_hash()
        assert rec["merged_from"] == [os.path.join("..", f"task-{i}", env) for i in range(2)]
        for name in ("metrics.csv", "final_eval.csv"):
            keys = _keys(read_metrics(str(out / env / name)))
            assert {k[0] for k in keys} == {0, 1, 2, 3}
            assert keys == sorted(keys, key=lambda k: (k[1], k[0]))   # chunk by chunk, members in order
