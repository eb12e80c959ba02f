"""Config parsing and validation (klrl.config): no compilation happens here."""

from __future__ import annotations

import dataclasses
import glob
import json
import os

import pytest

from klrl import train
from klrl.config import (
    PLUMBING_KEYS, OutputConfig, build_experiment, engine_schema, load_experiment, parse_override,
)
from klrl.config_hash import RENAMED, legacy_hash
from klrl.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def schema():
    return engine_schema()


def test_every_static_field_and_hparam_has_one_key(schema):
    """The keys are walked from the declarations: each StaticConfig section's fields under
    its TOML table, each traced hyperparameter under its declared section, [output], seeds."""
    sections = train.StaticConfig.section_classes()
    assert list(sections) == ["env", "agent", "train", "eval", "iqn"]   # the fixed ones, then the agents' own
    static_keys = [f"{s}.{f.name}" for s, cls in sections.items() for f in dataclasses.fields(cls)]
    hparam_keys = [schema.key_of(n) for n in train.HPARAMS]
    output_keys = [f"output.{f.name}" for f in dataclasses.fields(OutputConfig)]
    keys = static_keys + hparam_keys + output_keys
    assert len(set(keys)) == len(keys) == 41 + 5 + 14 + 5
    defaults = schema.defaults()
    assert set(defaults) == set(keys) | set(PLUMBING_KEYS)
    for n in train.HPARAMS:
        assert schema.name_of(schema.key_of(n)) == n
    assert schema.name_of("train.batch_size") is None and schema.name_of("train.tau") is None
    # today's TOML mapping of the fields
    assert {k for k in static_keys if k.startswith("env.")} == {"env.name", "env.backend", "env.num_envs", "env.preset"}
    assert {"agent.hidden", "agent.reference_run", "agent.qsharp_switch_horizon", "agent.softmax_temperature",
            "eval.mode", "train.replay_store", "train.learning_rate", "train.polyak"} <= set(defaults)
    # the keys the issue names explicitly
    for key in ("env.name", "agent.name", "agent.alpha", "agent.tau", "agent.entropic_index",
                "train.total_steps", "train.learning_rate", "train.seeds"):
        assert key in defaults


def test_defaults_round_trip_to_static_config(schema):
    exp = build_experiment({}, schema=schema)
    cfg = exp.static_config(exp.agents[0])
    assert cfg == train.StaticConfig()
    assert exp.hparam_base() == {k: float(v) for k, v in train.HPARAMS.items()}
    assert exp.values["output.if_exists"] == "refuse" and exp.checkpoint_every == 1
    assert exp.seeds == (0, 1, 2)


def test_sections_overrides_and_sweep(schema):
    raw = {
        "env": {"name": "Acrobot-v1", "num_envs": 4},
        "agent": {"name": "mvi", "hidden": [32, 32], "entropic_index": 1.5},
        "train": {"total_steps": 1000, "chunk_steps": 100, "learning_rate": 1e-3, "seeds": [3, 7]},
        "sweep": {"agent": {"alpha": [0.5, 0.9]}, "train.gamma": [0.9, 0.99]},
    }
    exp = build_experiment(raw, ["agent.tau=0.1", "sweep.agent.entropic_index=[1.0, 2.0]"], schema=schema)
    cfg = exp.static_config("mvi")
    assert (cfg.env.name, cfg.env.num_envs, cfg.agent.hidden, cfg.train.total_steps) == \
        ("Acrobot-v1", 4, (32, 32), 1000)
    assert exp.seeds == (3, 7)
    assert exp.values["agent.tau"] == 0.1 and exp.values["train.learning_rate"] == 1e-3
    assert exp.sweep == {"agent.alpha": [0.5, 0.9], "train.gamma": [0.9, 0.99], "agent.entropic_index": [1.0, 2.0]}
    # --set on a swept key replaces the list with one value
    exp2 = build_experiment(raw, ["agent.alpha=0.7"], schema=schema)
    assert "agent.alpha" not in exp2.sweep and exp2.values["agent.alpha"] == 0.7


def test_agent_sweep_is_one_population_per_agent(schema):
    exp = build_experiment({"sweep": {"agent.name": ["dqn", "mdqn", "mvi"]}}, schema=schema)
    assert exp.agents == ("dqn", "mdqn", "mvi")
    assert exp.resolved()["sweep"]["agent.name"] == ["dqn", "mdqn", "mvi"]
    assert exp.static_config("mvi").agent.name == "mvi"
    assert exp.static_config("dqn").agent == dataclasses.replace(exp.static_config("mvi").agent, name="dqn")


def test_set_agent_name_replaces_the_agent_sweep(schema):
    raw = {"sweep": {"agent.name": ["dqn", "mdqn"]}}
    assert build_experiment(raw, ["agent.name=mvi"], schema=schema).agents == ("mvi",)
    assert build_experiment(raw, ["sweep.agent.name=[\"c51\"]"], schema=schema).agents == ("c51",)


def test_parse_override():
    assert parse_override("env.name=Breakout-MinAtar") == ("env.name", "Breakout-MinAtar")
    assert parse_override("agent.hidden=[8, 8]") == ("agent.hidden", [8, 8])
    assert parse_override("train.total_steps = 100") == ("train.total_steps", 100)
    assert parse_override("agent.consistent_weight=true") == ("agent.consistent_weight", True)


@pytest.mark.parametrize("raw, overrides, needle", [
    ({"agent": {"bogus": 1}}, [], "agent.bogus: got an unknown key"),
    ({"nosuch": {}}, [], "nosuch: got an unknown section"),
    ({}, ["train.totl_steps=5"], "train.totl_steps: got an unknown key"),
    ({"train": {"total_steps": "many"}}, [], "train.total_steps: got 'many'; allowed an integer"),
    ({"train": {"total_steps": 1.5}}, [], "train.total_steps: got 1.5"),
    ({"agent": {"tau": -0.1}}, [], "agent.tau: got -0.1; allowed (0, inf)"),
    ({"train": {"learning_rate": -1e-3}}, [], "train.learning_rate: got -0.001"),
    ({"agent": {"entropic_index": 0.5}}, [], "agent.entropic_index: got 0.5; allowed [1, inf)"),
    ({"env": {"name": "Pong"}}, [], "env.name: got 'Pong'; allowed one of CartPole-v1"),
    ({"agent": {"name": "ppo"}}, [], "agent.name: got 'ppo'; allowed one of dqn"),
    ({"sweep": {"agent.alpha": []}}, [], "sweep.agent.alpha: got []; allowed a non-empty list"),
    ({"sweep": {"agent.name": ["dqn", "ppo"]}}, [], "sweep.agent.name: got 'ppo'"),
    ({"sweep": {"train.batch_size": [32, 64]}}, [], "sweep.train.batch_size: got a sweep over a static setting"),
    ({"sweep": {"agent.hidden": [[8], [16]]}}, [], "sweep.agent.hidden: got a sweep over a static setting"),
    ({"sweep": {"agent.tau": [0.1, -1.0]}}, [], "sweep.agent.tau: got -1.0"),
    ({"sweep": {"agent.alpha": 0.5}}, [], "sweep.agent.alpha: got 0.5; allowed a list"),
    ({}, ["agent.tau"], "--set: got 'agent.tau'; allowed SECTION.KEY=VALUE"),
    ({}, ["tau=1"], "--set: got 'tau=1'; allowed SECTION.KEY=VALUE"),
    ({}, ["agent.tau="], "--set: got 'agent.tau='"),
    ({"train": {"seeds": 0}}, [], "train.seeds: got 0"),
    ({"train": {"seeds": [1, 1]}}, [], "train.seeds: got [1, 1]"),
    ({"train": {"total_steps": 1000, "chunk_steps": 300}}, [], "train.chunk_steps: got 300; allowed a divisor"),
    ({"train": {"total_steps": 1000, "chunk_steps": 100}, "env": {"num_envs": 3}}, [],
     "train.chunk_steps: got 100; allowed a multiple of env.num_envs (3)"),
    ({"agent": {"v_min": 5, "v_max": 1.0}}, [], "agent.v_min: got 5.0; allowed a value < agent.v_max (1.0)"),
    ({"agent": {"num_atoms": 1}}, [], "agent.num_atoms: got 1; allowed an integer >= 2"),
    ({"agent": {"obs_scale": True}}, [], "agent.obs_scale: got True; allowed a number"),
    ({"env": {"num_envs": 0}}, [], "env.num_envs: got 0; allowed an integer >= 1"),
    ({"env": {"backend": "nosuch"}}, [], "env.backend: got 'nosuch'; allowed one of jax, pool"),
    ({"eval": {"mode": "never"}}, [], "eval.mode: got 'never'; allowed one of episodes, concurrent"),
    ({"agent": {"torso": "minatar_cnn"}}, [], "agent.torso: got 'minatar_cnn'; allowed mlp for CartPole-v1"),
    ({"agent": {"name": "qsharp"}}, [], "agent.reference: got 'none'"),
    ({"output": {"checkpoint_every": 0}}, [], "output.checkpoint_every: got 0; allowed an integer >= 1"),
    ({"agent": {"tau": float("inf")}}, [], "agent.tau: got inf; allowed a finite number"),
    ({"train": {"buffer_size": 10, "batch_size": 32}}, [], "train.batch_size: got 32"),
    ({"agent": {"loss": "mse"}}, [], "agent.loss: got 'mse'; allowed one of huber, l2"),
    ({"train": {"replay_mode": "global"}}, [], "train.replay_mode: got 'global'"),
    ({"agent": {"hidden": [0]}}, [], "agent.hidden: got [0]"),
    ({"output": {"if_exists": "overwrite"}}, [],
     "output.if_exists: got 'overwrite'; allowed one of refuse, new_subdir"),
    ({"output": {"bogus": 1}}, [],
     "output.bogus: got an unknown key; allowed output.checkpoint_every, output.if_exists"),
    ({"sweep": {"train.seeds": [0, 1]}}, [], "sweep.train.seeds: got [0, 1]; allowed train.seeds = N"),
])
def test_bad_input_names_field_value_and_allowed(schema, raw, overrides, needle):
    with pytest.raises(ConfigError) as info:
        build_experiment(raw, overrides, schema=schema)
    msg = str(info.value)
    assert needle in msg
    assert "\n" not in msg and "allowed" in msg


def test_load_missing_or_broken_file(tmp_path, schema):
    with pytest.raises(ConfigError, match="config: got"):
        load_experiment(str(tmp_path / "none.toml"), schema=schema)
    bad = tmp_path / "bad.toml"
    bad.write_text("[env\nname = 1\n")
    with pytest.raises(ConfigError, match="allowed valid TOML"):
        load_experiment(str(bad), schema=schema)


def test_config_hash_tracks_results_not_output(schema):
    a = build_experiment({}, schema=schema)
    b = build_experiment({}, ["output.checkpoint_every=5"], schema=schema)
    c = build_experiment({}, ["agent.tau=0.05"], schema=schema)
    d = build_experiment({}, ["train.seeds=4"], schema=schema)
    assert a.config_hash() == b.config_hash()
    assert len({a.config_hash(), c.config_hash(), d.config_hash()}) == 3


def test_shipped_experiment_files_are_valid(schema):
    files = sorted(glob.glob(os.path.join(ROOT, "experiments", "*.toml")))
    # every deep-agent experiment (the tabular one has its own schema, tests/test_leverage.py; the
    # star-graph ones theirs, klrl.stargraph's `run` config)
    mine = [f for f in files if not f.endswith("leverage_average.toml") and "stargraph" not in os.path.basename(f)]
    assert any("quickstart" in f for f in mine) and any("qsharp_frontier" in f for f in mine)
    for path in mine:
        load_experiment(path, schema=schema)


# config_hash() of every shipped experiment, computed with the flat-StaticConfig code before
# the sectioned config (a run's hash is compared on --resume; quickstart's, mvi_index_sweep's
# and minatar_breakout's are the ones stored in results/*/config.json). Schema version 2 hashes
# differently (klrl.config_hash); these are the version 1 hashes of today's values.
SHIPPED_HASHES = {
    "minatar_breakout": "710b66f6d904e9674b958d65bb44601579b280afd67997f84486d43361033d27",
    "mvi_index_sweep": "94f598f772db6782b8476e88f10c8575896d9a87b86ba20611e6b13969d7a8d7",
    "qsharp_frontier": "69b1170674f9b22d29971d3bf8f353a1181d569aa3fb3027b200dc7261d8074c",
    "qsharp_frontier_c51": "a76f5f9e8478f923bdda16ad5d4dc3efe71480f41d50eee1f8d5e4e66e3f03e1",
    "qsharp_frontier_rollout": "e1f638a6c019630cb1a87185948c9a4f93732f0ce20a5432177eb09b56639f6e",
    "qsharp_reference": "f342d1e33a7b58219cd5c3619e3ea32df8dc9089e1179c157cb49bbbedbe46e5",
    "quickstart": "d8c12cc752f1dcfe00fe78f0009dbe16bb6c6e7e3ab052650fb2d927d9dc0e8f",
}


def _as_version_1(resolved: dict) -> dict:
    """Today's resolved config in schema version 1's layout: the moved keys under their old
    names, the keys added since left out (they are at their defaults here)."""
    out = {s: dict(t) for s, t in resolved.items()}
    moved = out.pop("eval")
    assert moved.pop("score") == "mean_last_k" and moved.pop("score_k") == 3
    for old, new in RENAMED.items():
        if new.partition(".")[2] in moved:
            out[old.partition(".")[0]][old.partition(".")[2]] = moved.pop(new.partition(".")[2])
    assert not moved
    return out


@pytest.mark.parametrize("name", sorted(SHIPPED_HASHES))
def test_config_hash_of_shipped_experiments_is_unchanged(schema, name):
    """Every shipped experiment resolves to the values it had (version 1's hash of them is
    unchanged), and a committed run's record hashes as today's config (--resume accepts it)."""
    exp = load_experiment(os.path.join(ROOT, "experiments", f"{name}.toml"), schema=schema)
    assert legacy_hash(_as_version_1(exp.resolved())) == SHIPPED_HASHES[name]
    record = os.path.join(ROOT, "results", name, "config.json")
    if os.path.isfile(record):
        with open(record) as fh:
            stored = json.load(fh)
        assert schema.record_hash(stored) == exp.config_hash()
        if "schema_version" in stored:      # re-run since version 2: today's hash, stored as is
            assert stored["config_hash"] == exp.config_hash()
        else:
            assert stored["config_hash"] == SHIPPED_HASHES[name]
            # config.json's resolved config is the same, in version 1's layout
            assert stored["config"] == _as_version_1(exp.resolved())


def test_env_preset_only_with_an_atari_backend(schema):
    """env.preset is an Atari protocol: refused elsewhere, and left out of a non-Atari run's
    config.json and hash (so runs made before the key existed resume)."""
    with pytest.raises(ConfigError, match=r"^env.preset: got 'machado'; allowed only with an Atari backend"):
        build_experiment({"env": {"name": "CartPole-v1", "preset": "machado"}}, schema=schema)
    with pytest.raises(ConfigError, match=r"^env.preset: got 'nope'; allowed one of dopamine, machado"):
        build_experiment({"env": {"name": "Pong", "backend": "ale", "preset": "nope"}}, schema=schema)
    plain = build_experiment({"env": {"name": "CartPole-v1"}}, schema=schema)
    assert "preset" not in plain.resolved()["env"]
    atari = build_experiment({"env": {"name": "Pong", "backend": "ale", "preset": "atari100k"},
                              "agent": {"torso": "nature_cnn"},
                              "train": {"buffer_size": 1000}, "eval": {"mode": "concurrent"}}, schema=schema)
    assert atari.resolved()["env"]["preset"] == "atari100k"
    assert atari.static.env.preset == "atari100k"


def test_atari_and_minatar_experiments_say_what_their_notes_say(schema):
    """The shipped Atari / MinAtar experiment files: backend, preset, protocol numbers."""
    load = lambda name: load_experiment(os.path.join(ROOT, "experiments", f"{name}.toml"), schema=schema)  # noqa: E731
    a100k = load("atari100k")
    assert a100k.agents == ("dqn", "mdqn", "mvi") and len(a100k.seeds) == 5
    s = a100k.static
    assert (s.env.backend, s.env.preset, s.agent.torso, s.eval.mode) == ("ale", "atari100k", "nature_cnn", "concurrent")
    assert s.train.total_steps == 100_000 and s.train.update_every == 1 and a100k.values["eval.epsilon"] == 0.001
    dop = load("atari_dopamine_mdqn")
    d = dop.static
    assert (d.env.preset, d.train.buffer_size, d.train.update_every, d.train.target_update_every) == ("dopamine", 1_000_000, 4, 8000)
    assert dop.values["train.learning_rate"] == 5e-5 and dop.values["train.adam_eps"] == 3.125e-4
    # one population per game: every game of the benchmark is a valid --set env.name
    from klrl.scores import atari_games
    from klrl.envs import atari

    roms = {scores_key: name for name, scores_key in ((n, n.lower()) for n in atari.installed_roms("ale"))}
    assert a100k.envs == tuple(roms[game.replace("_", "")] for game in atari_games("atari100k"))
    assert [e.static.env.name for e in a100k.per_env()] == list(a100k.envs)
    assert s.eval.final_episodes == 100
    mun, mvi = load("minatar_munchausen"), load("minatar_mvi_q")
    assert mun.agents == ("dqn", "soft_dqn", "al", "mdqn") and len(mun.seeds) == 5
    assert mvi.swept_hparams() == {"entropic_index": [1.0, 1.5, 2.0, 3.0]} and len(mvi.seeds) == 5
    for e in (mun, mvi):
        assert e.static.train.total_steps == 300_000 and e.static.agent.torso == "minatar_cnn"
