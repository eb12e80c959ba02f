"""The `klrl train` contract end to end, on one tiny run shared by the tests of this module.

The tiny run: CartPole-v1, 4 envs, 800 steps in 4 chunks, a 16-unit MLP, a sweep over
agent.name (dqn, mdqn: two compiled populations), agent.alpha (mdqn only) and the learning
rate (one of them 1e30, which must diverge), 2 seeds, SHARED replay. It is also the
reference that a SIGKILLed-and-resumed run must reproduce byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from klrl import cli
from klrl.config import load_experiment
from klrl.results import read_metrics
from klrl.errors import EXIT_STOPPED
from klrl.hooks import KILL_ENV
from klrl.rundir import resolve_out_dir
from klrl.stopping import PAUSE_ENV
from klrl.tracking import installed

from engine_helpers import TINY_CARTPOLE_TOML, ROOT, cli_in_process
from engine_helpers import run_cli as _klrl

# One xdist worker runs this module (make test: --dist loadgroup): the `tiny` run is made once.
pytestmark = pytest.mark.xdist_group("cli_train")

TINY = TINY_CARTPOLE_TOML + """target_update_every = 100
seeds = 2
replay_mode = "shared"

[eval]
episodes = 2

[sweep]
"agent.name" = ["dqn", "mdqn"]
"agent.alpha" = [0.5, 0.9]
"train.learning_rate" = [1e-3, 1e30]

[output]
checkpoint_every = 2
"""
# members: dqn 2 lr x 2 seeds = 4 (alpha unused), mdqn 2 alpha x 2 lr x 2 seeds = 8
CHUNKS = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    cfg = base / "tiny.toml"
    cfg.write_text(TINY)
    out = base / "run"
    res = cli_in_process("train", cfg, "--out", out)      # the killed run below reuses its programs
    assert res.returncode == 0, res.stderr[-3000:]
    return {"cfg": str(cfg), "out": str(out), "stderr": res.stderr, "stdout": res.stdout, "base": base}


def test_run_directory_holds_config_metrics_checkpoints_figure(tiny):
    out = tiny["out"]
    record = json.load(open(os.path.join(out, "config.json")))
    assert record["config"]["train"]["replay_mode"] == "shared"
    assert record["config"]["sweep"]["agent.name"] == ["dqn", "mdqn"]
    assert record["config_hash"] == load_experiment(tiny["cfg"]).config_hash()
    prov = record["provenance"]
    assert prov["commit"] and "jax" in prov["versions"] and prov["device"]["platform"] == "cpu"
    assert len(record["members"]) == 12
    head = open(os.path.join(out, "metrics.csv")).readline().strip()
    assert head == "member,seed,alpha,learning_rate,agent,step,metric,value"
    rows = read_metrics(os.path.join(out, "metrics.csv"))
    # The loss's aux metrics (q_mean, target_mean) reach metrics.csv next to the trainer's four.
    assert {r["metric"] for r in rows} == {"eval_return", "train_return", "loss", "diverged", "q_mean", "target_mean"}
    assert len(rows) == 12 * CHUNKS * 6
    assert sorted({r["step"] for r in rows}) == [200, 400, 600, 800]
    assert {r["alpha"] for r in rows if r["agent"] == "dqn"} == {None}
    assert {r["alpha"] for r in rows if r["agent"] == "mdqn"} == {0.5, 0.9}
    for agent in ("dqn", "mdqn"):
        assert os.path.isdir(os.path.join(out, "checkpoints", agent))
    assert os.path.getsize(os.path.join(out, "learning_curves.png")) > 10_000
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert len(summary["summary"]) == 2 + 4        # dqn x 2 lr, mdqn x 2 alpha x 2 lr
    assert "final greedy evaluation return" in tiny["stdout"]   # the summary table
    assert "agent-steps/s" in tiny["stderr"] and "ETA" in tiny["stderr"]   # progress lines


def test_seeds_differ_and_every_member_has_its_own_run(tiny):
    rows = read_metrics(os.path.join(tiny["out"], "metrics.csv"))
    loss = {}
    for r in rows:
        if r["metric"] == "loss" and r["learning_rate"] < 1:
            loss.setdefault(r["member"], []).append(r["value"])
    series = [tuple(v) for v in loss.values()]
    assert len(series) == 6 and len(set(series)) == 6      # no two healthy members identical
    assert all(math.isfinite(x) for s in series for x in s)


def test_divergence_is_reported_and_contained(tiny):
    rows = read_metrics(os.path.join(tiny["out"], "metrics.csv"))
    last = {r["member"]: r for r in rows if r["metric"] == "diverged" and r["step"] == 800}
    bad = sorted(m for m, r in last.items() if r["value"] > 0)
    assert bad == sorted(m for m, r in last.items() if r["learning_rate"] > 1)
    assert len(bad) == 6
    for m in bad:
        assert f"DIVERGED: member {m} " in tiny["stderr"]
    assert "learning_rate=1e+30" in tiny["stderr"]
    summary = json.load(open(os.path.join(tiny["out"], "summary.json")))["summary"]
    assert {s["group"]: s["diverged_members"] for s in summary if s["learning_rate"] < 1} == {
        "dqn (learning_rate=0.001)": 0, "mdqn (alpha=0.5, learning_rate=0.001)": 0,
        "mdqn (alpha=0.9, learning_rate=0.001)": 0}
    assert all(s["diverged_members"] == 2 for s in summary if s["learning_rate"] > 1)


# slow: 26 s; the fast suite keeps kill + resume through test_sharding (SIGKILL on 2 devices, resumed
# on 1) and the SIGTERM stop + resume below (byte-identical metrics.csv).
@pytest.mark.slow
def test_sigkill_then_resume_reproduces_the_run_byte_for_byte(tiny):
    out = os.path.join(tiny["base"], "killed")
    # chunk 7 of 8 (mdqn's 3rd): its rows are on disk, its last checkpoint is at chunk 2
    res = _klrl("train", tiny["cfg"], "--out", out, env={KILL_ENV: "7"})
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    ref = open(os.path.join(tiny["out"], "metrics.csv"), "rb").read()
    partial = open(os.path.join(out, "metrics.csv"), "rb").read()
    assert ref.startswith(partial) and len(partial) < len(ref)       # rows so far recoverable
    assert partial.count(b"\n") == 1 + (4 * CHUNKS + 8 * 3) * 6   # 6 metrics per member and chunk
    # a resume with a different resolved config is refused, before compiling
    bad = cli_in_process("train", tiny["cfg"], "--out", out, "--resume", "--set", "agent.tau=0.05")
    assert bad.returncode == 2 and "config whose hash" in bad.stderr
    assert open(os.path.join(out, "metrics.csv"), "rb").read() == partial
    res = cli_in_process("train", tiny["cfg"], "--out", out, "--resume")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "[dqn] already finished" in res.stderr and "[mdqn] resumed at chunk 2/4" in res.stderr
    assert open(os.path.join(out, "metrics.csv"), "rb").read() == ref


def test_existing_run_is_not_overwritten(tiny, capsys):
    before = {f: os.path.getmtime(os.path.join(tiny["out"], f)) for f in os.listdir(tiny["out"])}
    data = open(os.path.join(tiny["out"], "metrics.csv"), "rb").read()
    assert cli.main(["train", tiny["cfg"], "--out", tiny["out"]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("klrl: error: --out: got") and "--resume" in err
    after = {f: os.path.getmtime(os.path.join(tiny["out"], f)) for f in os.listdir(tiny["out"])}
    assert before == after
    assert open(os.path.join(tiny["out"], "metrics.csv"), "rb").read() == data


def test_new_subdir_policy_keeps_the_existing_run(tiny):
    exp = load_experiment(tiny["cfg"], ["output.if_exists=new_subdir"])
    sub = resolve_out_dir(tiny["out"], exp, resume=False)
    assert os.path.dirname(sub) == os.path.join(tiny["out"], "runs") and not os.path.exists(sub)
    fresh = os.path.join(tiny["base"], "not-yet")
    assert resolve_out_dir(fresh, exp, resume=False) == fresh


def test_plot_command_redraws_from_metrics(tiny):
    png = os.path.join(tiny["out"], "learning_curves.png")
    os.remove(png)
    assert cli.main(["plot", tiny["out"]]) == 0
    assert os.path.getsize(png) > 10_000


@pytest.mark.parametrize("sets, needle", [
    (["agent.bogus=1"], "agent.bogus: got an unknown key"),
    (["train.total_steps=abc"], "train.total_steps: got 'abc'; allowed an integer"),
    (["agent.tau=-0.03"], "agent.tau: got -0.03"),
    (["train.learning_rate=-1.0"], "train.learning_rate: got -1.0"),
    (["agent.entropic_index=0.9"], "agent.entropic_index: got 0.9"),
    (["env.name=Pong-v5"], "env.name: got 'Pong-v5'"),
    (["agent.name=ppo"], "agent.name: got 'ppo'"),
    (["sweep.agent.alpha=[]"], "sweep.agent.alpha: got []"),
    (["sweep.train.batch_size=[8, 16]"], "a sweep over a static setting"),
    (["agent.tau"], "--set: got 'agent.tau'; allowed SECTION.KEY=VALUE"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tiny, capsys, sets, needle):
    out = os.path.join(tiny["base"], "never")
    args = ["train", tiny["cfg"], "--out", out]
    for s in sets:
        args += ["--set", s]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("klrl: error: ") and needle in err, err
    assert not os.path.exists(out)


def test_bad_input_through_the_real_command(tiny):
    out = os.path.join(tiny["base"], "never2")
    res = _klrl("sweep", tiny["cfg"], "--out", out, "--set", "agent.tau=-1", timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("klrl: error: agent.tau: got -1.0")
    assert not os.path.exists(out)
    res = cli_in_process("train", tiny["cfg"], "--out", out, "--resume")
    assert res.returncode == 2 and "holds no run" in res.stderr
    assert not os.path.exists(out)


def test_member_table_matches_rows(tiny):
    record = json.load(open(os.path.join(tiny["out"], "config.json")))
    rows = read_metrics(os.path.join(tiny["out"], "metrics.csv"))
    by_member = {r["member"]: r for r in rows}
    for m in record["members"]:
        r = by_member[m["member"]]
        assert (r["seed"], r["agent"], r["alpha"]) == (m["seed"], m["agent"], m["alpha"])
        assert np.float32(r["learning_rate"]) == np.float32(m["learning_rate"])


POOL = """
[env]
name = "CartPole-v1"
backend = "pool"
num_envs = 4

[agent]
name = "mdqn"
hidden = [16]

[train]
total_steps = 800
chunk_steps = 200
buffer_size = 256
batch_size = 16
learning_starts = 100
update_every = 4
target_update_every = 100
seeds = 2

[eval]
mode = "concurrent"
envs = 2

[output]
checkpoint_every = 2
"""


def test_pool_resume_restores_learner_exactly_and_re_resets_the_pool(tmp_path):
    """A host pool cannot be checkpointed. What --resume means for it (klrl.rundir.resumed_state):
    the run restarts from the last checkpoint with learner, optimizer, replay, keys and counters
    exactly as saved, the pool re-reset from derived seeds, and it finishes with the same step
    count. The killed run is uninterrupted up to its kill (chunk 3; checkpoint at chunk 2): the
    resumed run's rows up to the checkpoint are byte-identical to it, chunk 3's rows are a valid
    continuation, not the same numbers (the episodes in flight were lost)."""
    cfg = tmp_path / "pool.toml"
    cfg.write_text(POOL)
    killed = _klrl("train", str(cfg), "--out", str(tmp_path / "k"), env={KILL_ENV: "3"})   # checkpoint at chunk 2
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    a = read_metrics(str(tmp_path / "k" / "metrics.csv"))                 # chunks 1-3 of the uninterrupted run
    assert sorted({r["step"] for r in a}) == [200, 400, 600]
    resumed = cli_in_process("train", cfg, "--out", tmp_path / "k", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "re-reset" in resumed.stderr
    b = read_metrics(str(tmp_path / "k" / "metrics.csv"))
    assert [(r["member"], r["step"], r["metric"]) for r in b] == [(m, s, k) for s in (200, 400, 600, 800)
                                                                  for m, k in [(r["member"], r["metric"])
                                                                               for r in a if r["step"] == 200]]
    assert max(r["step"] for r in b) == 800
    assert [r for r in a if r["step"] <= 400] == [r for r in b if r["step"] <= 400]
    after_a = [r["value"] for r in a if r["step"] == 600 and r["metric"] == "loss"]
    after_b = [r["value"] for r in b if r["step"] == 600 and r["metric"] == "loss"]
    assert all(math.isfinite(v) for v in after_b) and after_a != after_b


SWEEP_ENVS = """
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

[eval]
episodes = 1
final_episodes = 3

[sweep]
"env.name" = ["CartPole-v1", "Acrobot-v1"]
"""


def test_sweep_over_env_name_runs_one_directory_per_env_and_resumes(tmp_path):
    """A sweep over env.name: <out>/sweep.json, then <out>/<env>/ per env, each the run that
    `--set env.name=<env>` makes (same config hash, byte-identical metrics.csv). Killed after
    the first env's last chunk (SIGKILL after its checkpoint, before its final evaluation) and
    resumed, that env is not trained again but evaluated, and both files equal a fresh
    standalone run's byte for byte."""
    from klrl.runner import run_experiment

    cfg = tmp_path / "envs.toml"
    cfg.write_text(SWEEP_ENVS)
    out = tmp_path / "sweep"
    killed = _klrl("train", str(cfg), "--out", str(out), env={KILL_ENV: "3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (out / "CartPole-v1" / "final_eval.csv").read_text().count("\n") == 1   # header only
    assert not (out / "Acrobot-v1").exists() and not (out / "summary.json").exists()
    resumed = cli_in_process("train", cfg, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed at chunk 3/3" in resumed.stderr and "final evaluation: 4+ episodes" in resumed.stderr

    record = json.load(open(out / "sweep.json"))
    assert record["config"]["sweep"]["env.name"] == ["CartPole-v1", "Acrobot-v1"]
    assert record["runs"] == {"CartPole-v1": "CartPole-v1", "Acrobot-v1": "Acrobot-v1"}
    summary = json.load(open(out / "summary.json"))["summary"]
    assert set(summary) == {"CartPole-v1", "Acrobot-v1"}
    for env in ("CartPole-v1", "Acrobot-v1"):
        sub = json.load(open(out / env / "config.json"))
        assert sub["config"]["env"]["name"] == env and "env.name" not in sub["config"]["sweep"]
        assert sub["overrides"] == [f"env.name={env}"]
        assert sub["config_hash"] == load_experiment(str(cfg), [f"env.name={env}"]).config_hash()
    returns = {float(r["value"]) for r in read_metrics(str(out / "Acrobot-v1" / "metrics.csv"))
               if r["metric"] == "eval_return"}
    assert returns and max(returns) <= 0                        # Acrobot's rewards (-1 a step), not CartPole's

    final = read_metrics(str(out / "Acrobot-v1" / "final_eval.csv"))
    assert sorted({r["metric"] for r in final}) == ["final_eval_episodes", "final_eval_return"]
    assert {r["value"] for r in final if r["metric"] == "final_eval_episodes"} == {4.0}   # ceil(3 / 2) per env
    sub_summary = summary["CartPole-v1"][0]
    assert sub_summary["final_evaluation"]["n"] == 2 and all(8 <= x <= 500 for x in sub_summary["final_evaluation_returns"])

    alone = run_experiment(str(cfg), str(tmp_path / "alone"), ["env.name=CartPole-v1"])
    for name in ("metrics.csv", "final_eval.csv"):
        assert open(os.path.join(alone, name)).read() == (out / "CartPole-v1" / name).read_text(), name
    # the root refuses to be overwritten, and resuming it with another sweep is refused
    assert cli_in_process("train", cfg, "--out", out).returncode == 2
    other = cli_in_process("train", cfg, "--out", out, "--resume", "--set", 'sweep.env.name=["Acrobot-v1"]')
    assert other.returncode == 2 and "hash" in other.stderr


# --------------------------------------------------------------------------------------
# Trackers and signals (klrl.tracking, klrl.stopping): the tiny run's dqn population (4
# members: 2 learning rates x 2 seeds, the program the `tiny` run compiled) with TensorBoard
# and W&B (offline: no network) as sinks.

TRACKERS = installed("tensorboard") and installed("wandb")     # both extras are in `test`
SINKS = '["csv", "tensorboard", "wandb"]' if TRACKERS else '["csv"]'
TRACKED = ["--set", "agent.name=dqn", "--set", "agent.alpha=0.5", "--set", f"output.sinks={SINKS}"]
needs_trackers = pytest.mark.skipif(not TRACKERS, reason="the tensorboard and wandb extras are not installed")


@contextlib.contextmanager
def _environ(values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def tracked(tiny):
    """The 4-member population, uninterrupted, with both trackers; W&B offline, its settings
    and cache in the test's directory."""
    home = tiny["base"] / "wandb-home"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": str(home / "config"),
           "WANDB_CACHE_DIR": str(home / "cache"), "WANDB_DATA_DIR": str(home / "data")}
    out = tiny["base"] / "tracked"
    with _environ(env):
        res = cli_in_process("train", tiny["cfg"], "--out", out, *TRACKED)
    assert res.returncode == 0, res.stderr[-3000:]
    return {"out": str(out), "env": env, "stderr": res.stderr}


def _series(run_dir):
    """member -> metric -> [(step, value)] from metrics.csv."""
    out = {}
    for r in read_metrics(os.path.join(run_dir, "metrics.csv")):
        out.setdefault(r["member"], {}).setdefault(r["metric"], []).append((r["step"], r["value"]))
    return out


@needs_trackers
def test_a_population_is_one_tracked_run_per_member_in_tensorboard_and_wandb(tracked):
    from tracker_files import read_tensorboard, read_wandb

    csv_rows = _series(tracked["out"])
    assert sorted(csv_rows) == [0, 1, 2, 3]
    tb = read_tensorboard(tracked["out"])
    assert sorted(tb) == [f"tensorboard/dqn/m{m}" for m in range(4)]
    wb = read_wandb(tracked["out"])
    assert len(wb) == 4 and all(r["folders"] == 1 for r in wb.values())
    by_member = {r["config"]["member"]: r for r in wb.values()}
    record = json.load(open(os.path.join(tracked["out"], "config.json")))
    for m in record["members"]:
        i, want = m["member"], csv_rows[m["member"]]
        board, run = tb[f"tensorboard/dqn/m{i}"], by_member[i]
        assert set(board["scalars"]) == set(want) == {k for k in run["history"][0] if not k.startswith("_")}
        for metric, rows in want.items():           # the rows metrics.csv got, at env steps per member
            np.testing.assert_array_equal(np.float32([v for _, v in board["scalars"][metric]]), np.float32([v for _, v in rows]))
            np.testing.assert_array_equal(np.float32([h[metric] for h in run["history"]]), np.float32([v for _, v in rows]))
            assert [s for s, _ in board["scalars"][metric]] == [h["_step"] for h in run["history"]] == [200, 400, 600, 800]
        for config in (board["hparams"], run["config"]):  # the member's row is its run's config
            assert (config["seed"], config["agent"], config["env"]) == (m["seed"], "dqn", "CartPole-v1")
            assert np.float32(config["learning_rate"]) == np.float32(m["learning_rate"])
            assert np.float32(config["train.learning_rate"]) == np.float32(m["learning_rate"])
        assert (run["group"], run["job_type"], run["project"]) == ("tracked", "dqn", "klrl")
    assert "wandb: 4 runs in project klrl, group tracked (offline" in tracked["stderr"]


def test_sigterm_stops_after_the_chunk_and_resume_continues_the_same_runs(tiny, tracked):
    """SIGTERM once the first chunk's rows are on disk: the run finishes the chunk in flight,
    checkpoints it, prints one line and exits 75; --resume ends with the uninterrupted run's
    metrics.csv byte for byte, and every tracked run holds each step once."""
    from tracker_files import read_tensorboard, read_wandb

    out = os.path.join(tiny["base"], "stopped")
    env = {**os.environ, **tracked["env"], PAUSE_ENV: "0.5"}       # a tiny run's chunks take milliseconds
    proc = subprocess.Popen([sys.executable, "-m", "klrl.cli", "train", tiny["cfg"], "--out", out, *TRACKED],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(out, "metrics.csv")
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not (
            os.path.isfile(metrics) and open(metrics).read().count("\n") > 1):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_STOPPED, err[-3000:]
    last = err.strip().splitlines()[-1]
    cmd = f"klrl train {tiny['cfg']} --out {out} {shlex.join(TRACKED)} --resume"
    done = int(re.fullmatch(rf"klrl: stopped at chunk (\d)/4 of dqn on SIGTERM; continue with: {re.escape(cmd)}", last)[1])
    assert 1 <= done < 4 and "Traceback" not in err
    assert os.path.isdir(os.path.join(out, "checkpoints", "dqn", str(done)))      # the chunk it stopped after
    ref = open(os.path.join(tracked["out"], "metrics.csv"), "rb").read()
    partial = open(metrics, "rb").read()
    assert ref.startswith(partial) and partial.count(b"\n") == 1 + done * 4 * 6

    with _environ(tracked["env"]):
        res = cli_in_process("train", tiny["cfg"], "--out", out, *TRACKED, "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"[dqn] resumed at chunk {done}/4" in res.stderr
    assert open(metrics, "rb").read() == ref
    if not TRACKERS:
        return
    wb = read_wandb(out)
    assert len(wb) == 4 and all(r["folders"] == 2 for r in wb.values())           # the same 4 runs, resumed
    assert all([h["_step"] for h in r["history"]] == [200, 400, 600, 800] for r in wb.values())
    tb = read_tensorboard(out)
    assert len(tb) == 4 and all([s for s, _ in b["scalars"]["loss"]] == [200, 400, 600, 800] for b in tb.values())


def test_resume_without_a_checkpoint_says_so_and_starts_over(tiny, tracked):
    """A run killed before its first checkpoint holds a config.json and no checkpoint:
    --resume says so in one line and trains from chunk 0 to the same metrics.csv."""
    out = os.path.join(tiny["base"], "no-checkpoint")
    os.makedirs(out)
    shutil.copy(os.path.join(tracked["out"], "config.json"), out)
    res = cli_in_process("train", tiny["cfg"], "--out", out, *TRACKED[:4], "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    line = f"[dqn] no checkpoint yet in {os.path.join(out, 'checkpoints', 'dqn')}: starting from chunk 0"
    assert line in res.stderr.splitlines()
    assert open(os.path.join(out, "metrics.csv"), "rb").read() == open(os.path.join(tracked["out"], "metrics.csv"), "rb").read()


def test_a_real_run_names_the_ignored_swept_values_in_one_line_and_writes_strict_json(tiny):
    """dqn does not read agent.alpha: the run says so once, before training; summary.json
    parses with NaN refused (diverged members' scores are null, not NaN)."""
    notices = [line for line in tiny["stderr"].splitlines() if "swept values an agent does not read" in line]
    assert notices == ["klrl: swept values an agent does not read are collapsed for it: "
                       "dqn ignores agent.alpha [0.5, 0.9] (4 members, not 8)"]
    assert tiny["stderr"].index(notices[0]) < tiny["stderr"].index("agent-steps/s")

    def refuse(constant):
        raise ValueError(constant)

    with open(os.path.join(tiny["out"], "summary.json")) as fh:
        json.loads(fh.read(), parse_constant=refuse)
    assert "nan" not in tiny["stderr"].lower()
