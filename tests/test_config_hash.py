"""The config hash (klrl.config_hash), the [eval] section and the keys it took over from [train]."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from typing import ClassVar

import pytest

from klrl import static
from klrl.config import Schema, build_experiment, engine_schema, load_experiment
from klrl.config_hash import RENAMED, SCHEMA_VERSION, legacy_hash, record_hash, upgrade_resolved
from klrl.errors import ConfigError
from klrl.sections import ranged, section_field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "results")
# Committed runs of schema version 1: plain, an env sweep's run with --set overrides, and a
# run whose checkpoints are committed too.
COMMITTED = ["mvi_index_sweep", "minatar_munchausen/Asterix", "qsharp_frontier/reference"]   # version 1 records


@pytest.fixture(scope="module")
def schema():
    return engine_schema()


@dataclass(frozen=True)
class EvalPlus(static.EvalConfig):
    """[eval] with one key added after runs were recorded."""

    SECTION: ClassVar[str] = "eval"
    added: int = ranged(7, lo=0)


@dataclass(frozen=True)
class StaticPlus(static.StaticConfig):
    eval: EvalPlus = section_field(EvalPlus)


def _record(run: str) -> dict:
    with open(os.path.join(RESULTS, run, "config.json")) as fh:
        return json.load(fh)


def _experiment(rec: dict, extra=(), schema=None):
    """The experiment a record was run from, resolved by today's code."""
    return load_experiment(os.path.join(ROOT, rec["config_file"]), [*rec["overrides"], *extra], schema=schema)


# --------------------------------------------------------------------------------------
# The hash: values that differ from the defaults, plus the schema version.


def test_hash_ignores_a_key_added_with_its_default(schema):
    plus = dataclasses.replace(schema, static_cls=StaticPlus)
    raw = {"agent": {"name": "dqn"}, "train": {"gamma": 0.9}, "eval": {"episodes": 4}}
    before, after = build_experiment(raw, schema=schema), build_experiment(raw, schema=plus)
    assert after.resolved()["eval"]["added"] == 7
    assert after.config_hash() == before.config_hash()
    # (the version 1 hash, over every resolved key, is what used to break)
    assert legacy_hash(after.resolved()) != legacy_hash(before.resolved())
    set_ = build_experiment({**raw, "eval": {"episodes": 4, "added": 8}}, schema=plus)
    assert set_.config_hash() != before.config_hash()


def test_hash_differs_on_a_changed_value_not_on_output_or_a_spelled_default(schema):
    base = build_experiment({}, schema=schema)
    same = [build_experiment({}, ["train.gamma=0.99", "eval.episodes=10", "train.seeds=[0, 1, 2]"], schema=schema),
            build_experiment({}, ["output.checkpoint_every=7"], schema=schema),
            build_experiment({}, ["eval.score=last"], schema=schema)]
    assert {e.config_hash() for e in same} == {base.config_hash()}
    changed = ["train.gamma=0.98", "eval.episodes=11", "train.seeds=4", "eval.epsilon=0.05",
               "agent.tau=0.05", "agent.name=dqn", "sweep.agent.alpha=[0.5, 0.9]"]
    hashes = {build_experiment({}, [c], schema=schema).config_hash() for c in changed}
    assert len(hashes) == len(changed) and base.config_hash() not in hashes


def test_hash_is_the_documented_payload_with_the_schema_version(schema):
    def sha(obj):
        return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    assert SCHEMA_VERSION == 2
    exp = build_experiment({}, ["train.gamma=0.5", "output.checkpoint_every=3"], schema=schema)
    payload = {"schema_version": SCHEMA_VERSION, "config": {"train.gamma": 0.5}}
    assert exp.config_hash() == sha(payload)
    assert exp.config_hash() != sha({**payload, "schema_version": 1})
    assert build_experiment({}, schema=schema).config_hash() == sha({"schema_version": 2, "config": {}})


# --------------------------------------------------------------------------------------
# Records of schema version 1 (no "schema_version"): committed runs still resume.


@pytest.mark.parametrize("run", COMMITTED)
def test_committed_run_resumes_and_a_changed_value_is_refused(schema, run):
    from klrl.runner import resolve_out_dir

    rec = _record(run)
    assert "schema_version" not in rec and legacy_hash(rec["config"]) == rec["config_hash"]
    out = os.path.join(RESULTS, run)
    exp = _experiment(rec, schema=schema)
    assert record_hash(rec, schema.resolved_defaults()) == exp.config_hash() != rec["config_hash"]
    assert resolve_out_dir(out, exp, resume=True) == out
    changed = _experiment(rec, ["train.gamma=0.5"], schema=schema)
    with pytest.raises(ConfigError, match=r"^--resume: got a config whose hash \w{12} differs from the run's"):
        resolve_out_dir(out, changed, resume=True)


def test_an_edited_version_1_record_is_refused(schema, tmp_path):
    """The stored hash vouches for the stored config: an edited config does not resume."""
    from klrl.runner import resolve_out_dir

    rec = _record("mvi_index_sweep")
    exp = _experiment(rec, schema=schema)
    edited = json.loads(json.dumps(rec))
    edited["config"]["train"]["gamma"] = 0.5
    (tmp_path / "config.json").write_text(json.dumps(edited))
    assert schema.record_hash(edited) == rec["config_hash"] != exp.config_hash()
    with pytest.raises(ConfigError, match=r"^--resume: got a config whose hash"):
        resolve_out_dir(str(tmp_path), exp, resume=True)


def test_version_1_records_are_read_under_todays_names(schema):
    rec = _record("minatar_munchausen/Asterix")
    up = upgrade_resolved(rec["config"])
    assert "eval_mode" not in up["train"] and up["eval"] == {"mode": "concurrent", "envs": 2, "epsilon": 0.01,
                                                            "episodes": 10}
    assert up["sweep"] == rec["config"]["sweep"] and up["env"] == rec["config"]["env"]


def test_a_version_1_checkpoint_restores_under_its_verified_record(schema, tmp_path):
    """The committed reference run's checkpoint carries the version 1 hash: refused against
    today's hash alone, restored once config.json (matched to this config) vouches for it."""
    from klrl.checkpoint import PopulationCheckpointer
    from klrl.rundir import recorded_hash as _recorded_hash

    run = tmp_path / "reference"
    shutil.copytree(os.path.join(RESULTS, "qsharp_frontier", "reference"), run)
    rec = _record("qsharp_frontier/reference")
    exp = _experiment(rec, schema=schema)
    ckpt_dir = str(run / "checkpoints" / "dqn")
    alone = PopulationCheckpointer(ckpt_dir, exp.config_hash())
    with pytest.raises(ConfigError, match=r"^--resume: got a checkpoint .* from a different config"):
        alone.meta()
    alone.close()
    assert _recorded_hash(str(run), exp) == (rec["config_hash"],)
    ckpt = PopulationCheckpointer(ckpt_dir, exp.config_hash(), also_accept=_recorded_hash(str(run), exp))
    meta, history = ckpt.restore_metrics()
    ckpt.close()
    assert meta["config_hash"] == rec["config_hash"] and meta["chunks_done"] == history["step"].shape[0]
    other = _experiment(rec, ["train.gamma=0.5"], schema=schema)
    assert _recorded_hash(str(run), other) == ()


def test_new_records_carry_the_schema_version(schema):
    exp = build_experiment({"train": {"gamma": 0.9}}, schema=schema)
    rec = {"config": exp.resolved(), "config_hash": exp.config_hash(), "schema_version": SCHEMA_VERSION}
    assert schema.record_hash(rec) == exp.config_hash()
    assert schema.record_hash({**rec, "schema_version": SCHEMA_VERSION + 1}) == exp.config_hash()
    assert schema.record_hash({**rec, "config_hash": "0" * 64}) == "0" * 64


# --------------------------------------------------------------------------------------
# [eval]: the old [train] names still read, the score rule is checked.


def test_old_train_eval_keys_are_accepted(schema):
    old = {"train": {"eval_mode": "episodes", "eval_episodes": 3, "eval_envs": 4, "eval_epsilon": 0.05,
                     "final_eval_episodes": 6}}
    new = {"eval": {"mode": "episodes", "episodes": 3, "envs": 4, "epsilon": 0.05, "final_episodes": 6}}
    a, b = build_experiment(old, schema=schema), build_experiment(new, schema=schema)
    assert a.static == b.static and a.config_hash() == b.config_hash() and a.resolved() == b.resolved()
    assert a.static.eval == static.EvalConfig(mode="episodes", episodes=3, envs=4, epsilon=0.05, final_episodes=6)
    # --set under the old name, over a file that uses the new one (and the other way round)
    assert build_experiment(new, ["train.eval_episodes=5"], schema=schema).static.eval.episodes == 5
    assert build_experiment(old, ["eval.episodes=5"], schema=schema).static.eval.episodes == 5
    assert set(RENAMED.values()) <= set(schema.defaults())
    with pytest.raises(ConfigError, match=r"^train.eval_episodes: got it next to eval.episodes; allowed one of them"):
        build_experiment({"train": {"eval_episodes": 3}, "eval": {"episodes": 3}}, schema=schema)
    with pytest.raises(ConfigError, match=r"^eval.episodes: got 0; allowed an integer >= 1$"):
        build_experiment({"train": {"eval_episodes": 0}}, schema=schema)
    with pytest.raises(ConfigError, match=r"^sweep.eval.epsilon: got a sweep over a static setting"):
        build_experiment({}, ["sweep.train.eval_epsilon=[0.0, 0.1]"], schema=schema)


@pytest.mark.parametrize("raw,message", [
    ({"score": "median"}, r"^eval.score: got 'median'; allowed one of last, mean_last_k$"),
    ({"score": "mean_last_k", "score_k": 0}, r"^eval.score_k: got 0; allowed an integer >= 1$"),
    ({"score_k": 2.5}, r"^eval.score_k: got 2.5; allowed an integer$"),
    ({"scores": "last"}, r"^eval.scores: got an unknown key; allowed eval.envs, eval.episodes, eval.epsilon, "
                         r"eval.final_episodes, eval.mode, eval.score, eval.score_k$"),
])
def test_score_rule_is_checked(schema, raw, message):
    with pytest.raises(ConfigError, match=message):
        build_experiment({"eval": raw}, schema=schema)


def test_score_rule_is_recorded_but_not_hashed(schema):
    """score_k is recorded only for mean_last_k; the rule summarizes results and changes none,
    so a run may be re-reported (or resumed) under another rule: neither key enters the hash."""
    last = build_experiment({"eval": {"score": "last", "score_k": 5}}, schema=schema)
    assert "score_k" in last.static.eval.unused() and "score_k" not in last.resolved()["eval"]
    assert last.resolved()["eval"]["score"] == "last"
    mean = {k: build_experiment({"eval": {"score": "mean_last_k", "score_k": k}}, schema=schema) for k in (3, 5)}
    assert mean[5].resolved()["eval"]["score_k"] == 5 and mean[3].static.eval.score_k == 3
    base = build_experiment({}, schema=schema).config_hash()
    assert last.config_hash() == mean[3].config_hash() == mean[5].config_hash() == base
    assert static.EvalConfig().score == "mean_last_k" and static.SCORE_RULES == ("last", "mean_last_k")


def test_schema_is_walked_with_the_eval_section(schema):
    assert isinstance(schema, Schema) and schema.sections["eval"] is static.EvalConfig
    for old, new in RENAMED.items():
        assert old not in schema.defaults()
    assert not any(k.startswith("eval_") or k == "final_eval_episodes" for k in static.TrainConfig.specs())
