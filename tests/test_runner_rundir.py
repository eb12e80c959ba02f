"""The run directory's policy (klrl.rundir) without training: where a run writes, what its
records hold, and what a resumed final_eval.csv keeps."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from klrl.config import load_experiment
from klrl.errors import ConfigError
from klrl.population import build_populations
from klrl.results import header, read_metrics
from klrl.rundir import FinalEvalFile, member_table, resolve_out_dir, run_record, write_json
from klrl.tasks import Task

TOML = """
[env]
name = "CartPole-v1"

[agent]
name = "dqn"

[train]
total_steps = 200
chunk_steps = 100
final_eval_episodes = 2
seeds = 2
replay_mode = "per-member"

[sweep]
"agent.name" = ["dqn", "mdqn"]
"agent.alpha" = [0.5, 0.9]
"""


@pytest.fixture
def exp(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(TOML)
    return load_experiment(str(path))


def _final(pop, value):
    m = pop.size
    return {"step": np.full(m, 200), "final_eval_return": np.full(m, value, np.float32),
            "final_eval_episodes": np.full(m, 2.0, np.float32)}


def test_member_table_and_run_record(exp):
    pops = build_populations(exp)
    table = member_table(pops)
    assert [(m["member"], m["agent"], m["seed"], m["alpha"]) for m in table] == [
        (0, "dqn", 0, None), (1, "dqn", 1, None), (2, "mdqn", 0, 0.5), (3, "mdqn", 1, 0.5),
        (4, "mdqn", 0, 0.9), (5, "mdqn", 1, 0.9)]
    record = run_record(exp, "run.toml", ["train.seeds=2"], {"members": table}, {"commit": "c"})
    assert list(record) == ["config", "config_hash", "schema_version", "config_file", "overrides", "members",
                            "provenance"]
    assert record["config"] == exp.resolved() and record["config_hash"] == exp.config_hash()


def test_out_dir_policy(exp, tmp_path):
    fresh = str(tmp_path / "new")
    assert resolve_out_dir(fresh, exp, resume=False) == fresh and not os.path.exists(fresh)
    os.makedirs(fresh)
    write_json(os.path.join(fresh, "config.json"), {"config_hash": exp.config_hash()})
    with pytest.raises(ConfigError, match="already holds files"):
        resolve_out_dir(fresh, exp, resume=False)
    assert resolve_out_dir(fresh, exp, resume=True) == fresh
    with pytest.raises(ConfigError, match="holds task 0 of 2|holds an unsplit run"):
        resolve_out_dir(fresh, exp, resume=True, task=Task(0, 2))
    write_json(os.path.join(fresh, "config.json"), {"config_hash": "0" * 64})
    with pytest.raises(ConfigError, match="config whose hash"):
        resolve_out_dir(fresh, exp, resume=True)
    with pytest.raises(ConfigError, match="holds no run"):
        resolve_out_dir(str(tmp_path / "none"), exp, resume=True)
    assert json.load(open(os.path.join(fresh, "config.json"))) == {"config_hash": "0" * 64}   # nothing rewritten


def test_final_eval_file_keeps_the_populations_written_in_full(exp, tmp_path):
    dqn, mdqn = build_populations(exp)
    out = str(tmp_path)
    first = FinalEvalFile(out, [dqn, mdqn], resume=False)
    first.append(dqn, _final(dqn, 9.5))
    assert first.done == {"dqn"}
    full = open(first.writer.path).read()
    with open(first.writer.path, "a") as fh:          # killed while writing mdqn's rows
        fh.write("2,0,0.5,mdqn,200,final_eval_episodes,2.0\n2,0,0.5,mdqn,200,final_eval_ret")
    resumed = FinalEvalFile(out, [dqn, mdqn], resume=True)
    assert resumed.done == {"dqn"}                    # mdqn is evaluated again
    assert open(resumed.writer.path).read() == full   # its partial rows dropped
    resumed.append(mdqn, _final(mdqn, 7.0))
    rows = read_metrics(resumed.writer.path)
    assert [r["member"] for r in rows] == [m for m in range(6) for _ in range(2)]
    assert [r["value"] for r in rows if r["metric"] == "final_eval_return"] == [9.5] * 2 + [7.0] * 4
    again = FinalEvalFile(out, [dqn, mdqn], resume=True)
    assert again.done == {"dqn", "mdqn"} and len(read_metrics(again.writer.path)) == 12
    assert open(FinalEvalFile(out, [dqn, mdqn], resume=False).writer.path).read() == ",".join(
        header(dqn.columns)) + "\n"                   # a fresh run starts the file anew
    discard = FinalEvalFile(str(tmp_path / "other"), [dqn, mdqn], resume=False, write=False)
    discard.append(dqn, _final(dqn, 1.0))             # a non-primary process writes nothing
    assert not os.path.exists(tmp_path / "other")
