"""Population grid and member keys (klrl.population): no training here."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from klrl.config import build_experiment, engine_schema
from klrl.population import agent_grid, build_population, build_populations, member_keys


@pytest.fixture(scope="module")
def schema():
    return engine_schema()


def test_grid_times_seeds_is_one_population(schema):
    exp = build_experiment(
        {"agent": {"name": "mvi"}, "train": {"seeds": 3},
         "sweep": {"agent.alpha": [0.5, 0.9], "agent.entropic_index": [1.0, 2.0, 3.0]}},
        schema=schema,
    )
    pop = build_population(exp, "mvi")
    assert pop.size == 2 * 3 * 3
    assert pop.columns == ("alpha", "entropic_index")
    for name, arr in pop.hparams.items():
        assert arr.dtype == np.float32 and arr.shape == (pop.size,)
    # product in config order (grid outer, seeds inner) and the arrays follow the table
    assert [m.seed for m in pop.members[:3]] == [0, 1, 2]
    assert pop.members[0].swept == {"alpha": 0.5, "entropic_index": 1.0}
    assert pop.members[3].swept == {"alpha": 0.5, "entropic_index": 2.0}
    for i, m in enumerate(pop.members):
        assert pop.hparams["alpha"][i] == np.float32(m.swept["alpha"])
        assert pop.hparams["entropic_index"][i] == np.float32(m.swept["entropic_index"])
        assert pop.hparams["tau"][i] == np.float32(exp.values["agent.tau"])
    combos = {(m.seed, m.swept["alpha"], m.swept["entropic_index"]) for m in pop.members}
    assert len(combos) == pop.size


def test_unused_swept_hparams_collapse_per_agent(schema):
    exp = build_experiment(
        {"train": {"seeds": 2}, "sweep": {"agent.name": ["dqn", "mdqn"], "agent.alpha": [0.5, 0.9]}},
        schema=schema,
    )
    dqn, mdqn = build_populations(exp)
    assert dqn.size == 2 and mdqn.size == 4      # DQN does not use alpha: no duplicate members
    assert all(m.swept == {"alpha": None} for m in dqn.members)
    assert [m.member for m in dqn.members + mdqn.members] == list(range(6))
    assert agent_grid(exp, "mdqn") == [{"alpha": 0.5}, {"alpha": 0.9}]


def test_member_keys_are_distinct_and_reproducible(schema):
    exp = build_experiment({"train": {"seeds": 4}, "sweep": {"agent.tau": [0.01, 0.03, 0.1]}}, schema=schema)
    pop = build_population(exp, "mdqn")
    keys = pop.keys
    assert keys.dtype == np.uint32 and keys.shape == (12, 2)
    assert len({tuple(k) for k in keys}) == 12            # no two members share a key
    again = build_population(exp, "mdqn").keys
    np.testing.assert_array_equal(keys, again)            # same config -> same keys
    m = pop.members[5]
    want = jax.random.fold_in(jax.random.PRNGKey(m.seed), m.grid_index)
    np.testing.assert_array_equal(keys[5], np.asarray(want))
    # changing the seed list changes the keys of the members whose seed changed
    other = build_population(build_experiment({"train": {"seeds": [10, 11, 12, 13]},
                                               "sweep": {"agent.tau": [0.01, 0.03, 0.1]}}, schema=schema), "mdqn")
    assert not np.any(np.all(other.keys == keys, axis=1))


def test_member_keys_formula():
    k = member_keys([0, 0, 1], [0, 1, 0])
    assert len({tuple(r) for r in k}) == 3


def test_engine_fields_reach_the_static_config(schema):
    """The redesign's config keys (env.backend, train.update_every, ...) land in the engine's
    StaticConfig; the old vector-step `train.train_every` is gone; the engine's own checks run
    when the experiment is built (a pool evaluates concurrently)."""
    from klrl.errors import ConfigError

    raw = {"env": {"backend": "pool", "num_envs": 4},
           "agent": {"name": "dqn", "torso": "mlp", "obs_scale": 2.0},
           "train": {"seeds": 2, "update_every": 8, "max_grad_norm": 10.0, "replay_store": "transitions",
                     "total_steps": 40, "chunk_steps": 20, "learning_starts": 8, "buffer_size": 40, "batch_size": 4},
           "eval": {"mode": "concurrent", "envs": 3, "epsilon": 0.05}}
    exp = build_experiment(raw, schema=schema)
    cfg = exp.static_config("dqn")
    t = cfg.train
    assert (cfg.env.backend, cfg.env.num_envs, t.update_every, t.max_grad_norm) == ("pool", 4, 8, 10.0)
    assert (t.replay_store, cfg.eval.mode, cfg.eval.envs, cfg.eval.epsilon) == ("transitions", "concurrent", 3, 0.05)
    assert (cfg.agent.torso, cfg.agent.obs_scale) == ("mlp", 2.0)
    with pytest.raises(ConfigError, match="train.train_every: got an unknown key"):
        build_experiment({"train": {"train_every": 1}}, schema=schema)
    with pytest.raises(ConfigError, match="^eval.mode: got 'episodes'"):
        build_experiment({"env": {"backend": "pool"}}, schema=schema)


def test_member_keys_seed_every_pool_env_differently(schema):
    """Distinct member keys -> distinct seeds for every env of the host pool (train and test
    envs), so no two members or envs replay the same CartPole episode."""
    from klrl.train import make_train

    exp = build_experiment({"env": {"backend": "pool", "num_envs": 4},
                            "train": {"seeds": 2}, "eval": {"mode": "concurrent", "envs": 2},
                            "sweep": {"train.learning_rate": [1e-4, 1e-3]}}, schema=schema)
    pop = build_population(exp, "dqn")
    assert pop.size == 4
    tr = make_train(exp.static_config("dqn"))
    _, obs = tr.env_start(pop.keys, 0)
    obs = np.asarray(obs)
    assert obs.shape == (4, 4 + 2, 4)
    rows = obs.reshape(-1, 4)
    assert len({r.tobytes() for r in rows}) == rows.shape[0]
    np.testing.assert_array_equal(np.asarray(tr.env_start(pop.keys, 0)[1]), obs)   # reproducible
