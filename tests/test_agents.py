"""klrl.agents: each loss is finite on a tiny batch and its target is the operator's."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klrl import operators as ops
from klrl.agents import AGENTS, Nets, Transition
from klrl.agents.base import per_example, regression_loss
from klrl.agents.c51 import atoms
from klrl.envs import make_env
from klrl.networks import make_network
from klrl.train import HPARAMS, StaticConfig

B = 6
HP = {k: jnp.float32(v) for k, v in HPARAMS.items()} | {"tau": jnp.float32(0.3), "clip_min": jnp.float32(-0.5)}


def _setup(agent_name, loss="huber"):
    cfg = StaticConfig(agent=agent_name, hidden=(8,), num_atoms=11, v_min=-3.0, v_max=3.0, loss=loss)
    agent = AGENTS[agent_name]
    spec = make_env("CartPole-v1").spec
    net = make_network(spec, cfg.hidden, agent.num_outputs(cfg))
    k = jax.random.split(jax.random.PRNGKey(0), 8)
    dummy = jnp.zeros(spec.obs_shape)
    p_online, p_target, p_prev = (net.init(k[i], dummy) for i in range(3))
    batch = Transition(
        obs=jax.random.normal(k[3], (B, 4)), action=jax.random.randint(k[4], (B,), 0, 2),
        reward=jax.random.normal(k[5], (B,)),
        terminated=jnp.array([0, 1, 0, 0, 1, 0], jnp.float32),
        next_obs=jax.random.normal(k[6], (B, 4)))
    nets = Nets(online=lambda o: net.apply(p_online, o),
                online_frozen=lambda o: net.apply(jax.lax.stop_gradient(p_online), o),
                target=lambda o: net.apply(p_target, o), prev_target=lambda o: net.apply(p_prev, o))
    return cfg, agent, nets, batch


def _expected_value_target(name, nets, b, hp, cfg):
    d = hp["gamma"] * (1.0 - b.terminated)
    qt_s, qt_n = nets.target(b.obs), nets.target(b.next_obs)
    kw = dict(alpha=hp["alpha"])
    return {
        "dqn": lambda: ops.q_learning_target(qt_n, b.reward, d),
        "double_dqn": lambda: ops.double_q_target(nets.online(b.next_obs), qt_n, b.reward, d),
        "soft_dqn": lambda: ops.soft_q_target(qt_n, b.reward, d, tau=hp["tau"]),
        "al": lambda: ops.advantage_learning_target(qt_s, qt_n, b.action, b.reward, d, **kw),
        "pal": lambda: ops.persistent_advantage_learning_target(qt_s, qt_n, b.action, b.reward, d, **kw),
        "mdqn": lambda: ops.munchausen_target(qt_s, qt_n, b.action, b.reward, d, alpha=hp["alpha"],
                                              tau=hp["tau"], clip_min=hp["clip_min"]),
        "mvi": lambda: ops.tsallis_munchausen_target(
            qt_s, qt_n, b.action, b.reward, d, entropic_index=hp["entropic_index"], alpha=hp["alpha"],
            tau=hp["tau"], clip_min=hp["clip_min"], consistent_weight=cfg.consistent_weight),
        "mdkl": lambda: ops.mirror_descent_target(
            qt_n, ops.mirror_descent_log_policy(nets.prev_target(b.next_obs),
                                                jnp.full((B, 2), -jnp.log(2.0)), lam=hp["lam"], tau=hp["tau"]),
            b.reward, d, lam=hp["lam"], tau=hp["tau"]),
    }[name]()


# The engine's agents; the Q♯ family (klrl.agents.qsharp) has its own tests.
ENGINE_AGENTS = ["dqn", "double_dqn", "soft_dqn", "al", "pal", "mdqn", "mvi", "mdkl", "c51"]
VALUE_AGENTS = [n for n in ENGINE_AGENTS if n != "c51"]


@pytest.mark.parametrize("name", VALUE_AGENTS)
@pytest.mark.parametrize("loss", ["huber", "l2"])
def test_value_agent_loss_is_regression_onto_operator_target(name, loss):
    cfg, agent, nets, b = _setup(name, loss)
    value, aux = agent.loss(nets, b, HP, cfg)
    assert np.isfinite(float(value)) and value.shape == ()
    y = _expected_value_target(name, nets, b, per_example(HP, agent.hparams, b), cfg)
    q_sa = ops.select_action(nets.online(b.obs), b.action)
    np.testing.assert_allclose(value, regression_loss(q_sa, y, loss), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(aux["target_mean"], jnp.mean(y), rtol=1e-6, atol=1e-7)


def test_terminal_cuts_bootstrap_but_truncation_does_not():
    """d = γ(1 − terminated): a truncated transition is stored with terminated = 0."""
    cfg, agent, nets, b = _setup("dqn", "l2")
    y = _expected_value_target("dqn", nets, b, HP, cfg)
    v_next = jnp.max(nets.target(b.next_obs), -1)
    np.testing.assert_allclose(y, b.reward + HP["gamma"] * (1 - b.terminated) * v_next, rtol=1e-6)
    np.testing.assert_allclose(y[1], b.reward[1], rtol=1e-6)


def test_mvi_with_index_one_matches_mdqn_loss():
    cfg, _, nets, b = _setup("mvi", "l2")
    mvi, _ = AGENTS["mvi"].loss(nets, b, HP | {"entropic_index": jnp.float32(1.0)}, cfg)
    mdqn, _ = AGENTS["mdqn"].loss(nets, b, HP, cfg)
    np.testing.assert_allclose(mvi, mdqn, rtol=1e-4)


def test_consistent_weight_flag_reaches_the_operator():
    cfg, agent, nets, b = _setup("mvi", "l2")
    lit, _ = agent.loss(nets, b, HP, cfg)
    con, _ = agent.loss(nets, b, HP, dataclasses.replace(cfg, consistent_weight=True))
    assert not np.isclose(float(lit), float(con))


def test_c51_loss_is_cross_entropy_to_projected_greedy_target():
    cfg, agent, nets, b = _setup("c51")
    value, _ = agent.loss(nets, b, HP, cfg)
    assert np.isfinite(float(value))
    z = atoms(cfg)
    logits_next = nets.target(b.next_obs)
    assert logits_next.shape == (B, 2, cfg.num_atoms)
    a_star = jnp.argmax(ops.categorical_mean(logits_next, z), -1)
    y = ops.categorical_td_target(z, jax.nn.softmax(logits_next, -1), jax.nn.one_hot(a_star, 2), b.reward,
                                  HP["gamma"] * (1 - b.terminated))
    np.testing.assert_allclose(jnp.sum(y, -1), 1.0, rtol=1e-5)
    logp = jax.nn.log_softmax(nets.online(b.obs)[jnp.arange(B), b.action], -1)
    np.testing.assert_allclose(value, jnp.mean(-jnp.sum(y * logp, -1)), rtol=1e-6)
    q = agent.q_values(nets.online(b.obs), cfg)
    assert q.shape == (B, 2)


@pytest.mark.parametrize("name", ENGINE_AGENTS)
def test_gradient_is_finite_and_nonzero(name):
    cfg, agent, nets, b = _setup(name)
    spec = make_env("CartPole-v1").spec
    net = make_network(spec, cfg.hidden, agent.num_outputs(cfg))
    params = net.init(jax.random.PRNGKey(9), jnp.zeros(4))

    def f(p):
        return agent.loss(nets._replace(online=lambda o: net.apply(p, o)), b, HP, cfg)[0]

    grads = jax.grad(f)(params)
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and sum(norms) > 0
