"""klrl.bench.harness: the update program is the trainer's update (per member, previous target
kept iff the agent asks, the agent's conv), the time guard, the timing helpers and the keys."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klrl.bench import harness


def _cartpole():
    from klrl.bench.train import preset_config

    return preset_config("cartpole", quick=True)[0]


def _minatar(conv: str):
    from klrl.bench.train import preset_config

    return preset_config("minatar", quick=True)[0].replace(agent={"conv": conv})


def _member(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


@pytest.mark.parametrize("member_map", ["vmap", "map"])
def test_update_program_is_the_per_member_update(member_map):
    from klrl.agents import AGENTS, Context
    from klrl.learner import make_update

    cfg = _cartpole().replace(train={"member_map": member_map})
    prog = harness.update_program(cfg, 3, {"learning_rate": 1e-3})
    new, loss, _ = jax.jit(prog.update)(prog.learner, prog.batch, prog.hparams, prog.keys)
    assert loss.shape == (3,) and bool(jnp.all(jnp.isfinite(loss))) and not bool(jnp.any(new.diverged))
    assert float(prog.hparams["learning_rate"][0]) == pytest.approx(1e-3)   # defaults, then the given ones
    agent = AGENTS["mdqn"]
    one = make_update(cfg, agent.network(cfg, 2), agent)
    for i in range(3):
        ref, ref_loss, _ = one(_member(prog.learner, i), _member(prog.batch, i), _member(prog.hparams, i),
                               prog.keys[i], Context())
        assert float(loss[i]) == pytest.approx(float(ref_loss), rel=1e-5)
        for a, b in zip(jax.tree.leaves(_member(new.params, i)), jax.tree.leaves(ref.params)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(prog.learner.params))]
    assert any(moved)


def test_update_program_keeps_the_previous_target_only_for_agents_that_ask():
    cfg = _cartpole()
    assert harness.update_program(cfg, 2).learner.prev_target_params == ()
    mdkl = harness.update_program(cfg.replace(agent={"name": "mdkl"}), 2)
    assert jax.tree.structure(mdkl.learner.prev_target_params) == jax.tree.structure(mdkl.learner.params)
    _, loss, _ = mdkl.update(mdkl.learner, mdkl.batch, mdkl.hparams, mdkl.keys)
    assert bool(jnp.all(jnp.isfinite(loss)))


def test_update_program_computes_the_agents_conv():
    def convolutions(conv: str) -> int:
        prog = harness.update_program(_minatar(conv), 1)
        text = jax.jit(prog.update).lower(prog.learner, prog.batch, prog.hparams, prog.keys).as_text()
        return text.count("convolution")

    assert convolutions("lax") > 0 and convolutions("patches") == 0


def test_update_flops_grow_with_members():
    one, four = harness.update_flops(_cartpole(), 1), harness.update_flops(_cartpole(), 4)
    assert one > 0 and four == pytest.approx(4 * one, rel=0.2)


def test_budget_counts_from_its_start():
    assert harness.Budget(None).allows(1e12)
    now = time.perf_counter()
    b = harness.Budget(10.0, start=now - 9.0)
    assert b.elapsed() >= 9.0 and b.allows(0.5) and not b.allows(2.0) and b.allows(None)
    assert not harness.Budget(1.0, start=now - 2.0).allows(None)


def test_timing_helpers():
    compiled, seconds = harness.compile_timed(lambda x: x * 2, jnp.ones(3))
    assert seconds > 0
    runs, cpu, out = harness.best_of(lambda: compiled(jnp.ones(3)), 3)
    assert len(runs) == len(cpu) == 3 and min(runs) > 0 and out.tolist() == [2.0, 2.0, 2.0]
    _, wall, _ = harness.timed(lambda: jnp.zeros(2))
    assert wall > 0


def test_population_keys_and_hparams():
    from klrl.population import member_keys

    keys = harness.fold_in_keys(3, seed=5)
    assert keys.shape == (3, 2) and len({tuple(map(int, k)) for k in keys}) == 3
    assert np.array_equal(keys[1], jax.random.fold_in(jax.random.PRNGKey(5), 1))
    assert np.array_equal(harness.seed_keys(2), member_keys([0, 1], [0, 0]))
    hp = harness.population_hparams({"tau": 0.03}, 4)
    assert hp["tau"].shape == (4,) and hp["tau"].dtype == jnp.float32


def test_header_and_json(tmp_path):
    import json

    h = harness.header("x", quick=True)
    assert h["benchmark"] == "x" and h["quick"] is True and h["platform"] == jax.devices()[0].platform
    path = tmp_path / "a" / "b.json"
    harness.write_json(str(path), {**h, "v": np.float32(1.5)})
    assert json.loads(path.read_text())["v"] == 1.5
