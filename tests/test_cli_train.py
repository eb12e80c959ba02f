"""The `klrl train` contract end to end, on one tiny run shared by the tests of this module.

The tiny run: CartPole-v1, 4 envs, 800 steps in 4 chunks, a 16-unit MLP, a sweep over
agent.name (dqn, mdqn: two compiled populations), agent.alpha (mdqn only) and the learning
rate (one of them 1e30, which must diverge), 2 seeds, SHARED replay. It is also the
reference that a SIGKILLed-and-resumed run must reproduce byte for byte.
"""

from __future__ import annotations

import json
import math
import os
import signal

import numpy as np
import pytest

from klrl import cli
from klrl.config import load_experiment
from klrl.results import read_metrics
from klrl.hooks import KILL_ENV
from klrl.rundir import resolve_out_dir

from engine_helpers import cli_in_process
from engine_helpers import run_cli as _klrl

# One xdist worker runs this module (make test: --dist loadgroup): the `tiny` run is made once.
pytestmark = pytest.mark.xdist_group("cli_train")

TINY = """
[env]
name = "CartPole-v1"
num_envs = 4

[agent]
name = "dqn"
hidden = [16]

[train]
total_steps = 800
chunk_steps = 200
buffer_size = 256
batch_size = 16
learning_starts = 100
target_update_every = 100
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
