"""The star-graph experiment's config and driver (klrl.stargraph.experiment_config, experiment,
summary): every key checked with a one-line error, overrides, and — slow — the whole driver at
tiny size: every part written, summary.json in the documented shape, a second call re-runs nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from klrl.errors import ConfigError
from klrl.stargraph.experiment_config import PARTS, load_experiment, resolve


def test_defaults_resolve_and_record_round_trips():
    exp = resolve({})
    assert exp.pretrain.task == exp.task
    assert resolve(exp.record()) == exp


@pytest.mark.parametrize("tables, field", [
    ({"critic": {"head": "w"}}, "critic.head"),
    ({"critic": {"steps": "many"}}, "critic.steps"),
    ({"baselines": {"methods": ["ppo"]}}, "baselines.methods"),
    ({"run": {"parts": ["pretrain", "sweep"]}}, "run.parts"),
    ({"eval": {"etas": 0.1}}, "eval.etas"),
    ({"pretrain": {"task": 3}}, "pretrain.task"),
    ({"baselines": {"method": "dpo"}}, "baselines.method"),
    ({"policy": {}}, "[policy]"),
])
def test_bad_keys_and_values_name_the_field(tables, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        resolve(tables)


def test_overrides_and_types(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text('[task]\ndegree = 2\npath_length = 3\nnum_nodes = 8\n[eval]\neta = 1\n')
    exp = load_experiment(str(path), ["critic.head=q", "baselines.seeds=[4]", "run.parts=['oracle']"])
    assert (exp.critic.head, exp.baselines.seeds, exp.run.parts, exp.eval.eta) == ("q", (4,), ("oracle",), 1.0)
    with pytest.raises(ConfigError, match="num_nodes"):
        load_experiment(str(path), ["task.num_nodes=4"])


def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "klrl.stargraph", "run", "experiments/qsharp_stargraph.toml",
                           str(out), "critic.head=w"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "critic.head" in proc.stderr
    assert not out.exists()


TINY = ["task.degree=2", "task.path_length=3", "task.num_nodes=8", "pretrain.layers=1", "pretrain.width=16",
        "pretrain.heads=2", "pretrain.steps=30", "pretrain.train_size=512", "pretrain.test_size=64",
        "pretrain.eval_every=30", "critic.layers=1", "critic.width=16", "critic.heads=2", "critic.steps=20",
        "critic.batch_size=16", "critic.warmup=2", "offline.posttrain_size=64", "offline.tries=2",
        "rounds.rounds=2", "rounds.prompts=32", "baselines.steps=3", "baselines.batch_size=8",
        "baselines.seeds=[0, 1]", "eval.test_size=64", "eval.etas=[0.1, 1.0]"]


@pytest.mark.slow
def test_driver_at_tiny_size_writes_every_part_and_resumes(tmp_path):
    from klrl.stargraph.experiment import run

    out = str(tmp_path / "sg")
    logs = []
    summary = run(load_experiment("experiments/qsharp_stargraph.toml", TINY), out, log=logs.append)
    assert set(summary["methods"]) == {"pi_ref", "qsharp", "cd", "qsharp_alg1", "cd_alg1", "qsharp_oracle",
                                       "cd_oracle", "reinforce", "rpo", "dpo"}
    for name, row in summary["methods"].items():
        assert 0.0 <= row["accuracy"]["mean"] <= 1.0 and row["kl"]["mean"] >= -1e-5, name
        assert row["n"] == 64
    assert [len(summary["methods"][m]["seeds"]) for m in ("reinforce", "rpo", "dpo")] == [2, 2, 2]
    assert [r["eta"] for r in summary["frontier"]["qsharp"]] == [0.1, 1.0]
    assert summary["pi_ref"]["teacher_forced"]["accuracy"] is not None
    assert json.load(open(os.path.join(out, "summary.json"))) == summary
    # a second call finds every part written and trains nothing
    logs.clear()
    again = run(load_experiment("experiments/qsharp_stargraph.toml", TINY), out, log=logs.append)
    assert not [row for row in logs if "part" in row]
    assert again["methods"] == summary["methods"]
    with pytest.raises(ConfigError, match="OUT_DIR"):
        run(load_experiment("experiments/qsharp_stargraph.toml", TINY + ["critic.steps=21"]), out, log=logs.append)


def test_summary_pools_seeds_as_mean_and_band_over_seeds():
    """Several seeds: the mean of the seed means, half-width 1.96·sd/√S over seeds; one seed
    keeps its own prompt CI."""
    import math

    from klrl.stargraph.summary import _over_seeds

    rows = [{"seed": s, "accuracy": {"mean": m, "ci95": 0.3}, "kl": {"mean": 2 * m, "ci95": 0.4}, "n": 10}
            for s, m in [(0, 0.2), (1, 0.6), (2, 0.4)]]
    out = _over_seeds(rows)
    assert out["family"] == "policy" and out["n"] == 10 and [r["seed"] for r in out["seeds"]] == [0, 1, 2]
    assert math.isclose(out["accuracy"]["mean"], 0.4) and math.isclose(out["kl"]["mean"], 0.8)
    assert math.isclose(out["accuracy"]["ci95"], 1.96 * 0.2 / math.sqrt(3))
    one = _over_seeds(rows[:1])
    assert one["accuracy"] == {"mean": 0.2, "ci95": 0.3} and len(one["seeds"]) == 1
