"""klrl.agents: each loss is finite on a tiny batch, its target is the operator's, and the
batch's `weight` masks rows exactly (weight-0 rows change neither the loss nor its gradient)."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klrl import operators as ops
from klrl.agents import AGENTS, Context, Nets
from klrl.agents.base import per_example, regression_loss, weighted_mean
from klrl.agents.c51 import atoms
from klrl.replay import Batch
from klrl.train import HPARAMS, StaticConfig

B = 6
A = 2           # CartPole's actions
OBS = 4
HP = {k: jnp.float32(v) for k, v in HPARAMS.items()} | {"tau": jnp.float32(0.3), "clip_min": jnp.float32(-0.5)}
CTX = Context()  # no reference policy: the engine's agents do not use one


def _batch(key, weight=None, n=B):
    k = jax.random.split(key, 4)
    return Batch(
        obs=jax.random.normal(k[0], (n, OBS)), action=jax.random.randint(k[1], (n,), 0, A),
        reward=jax.random.normal(k[2], (n,)),
        terminated=jnp.array([0, 1, 0, 0, 1, 0] * (n // 6 + 1), jnp.float32)[:n],
        next_obs=jax.random.normal(k[3], (n, OBS)),
        weight=jnp.ones((n,), jnp.float32) if weight is None else jnp.asarray(weight, jnp.float32))


def _nets(net, p_online, p_target, p_prev):
    return Nets(online=lambda o: net.apply(p_online, o),
                online_frozen=lambda o: net.apply(jax.lax.stop_gradient(p_online), o),
                target=lambda o: net.apply(p_target, o), prev_target=lambda o: net.apply(p_prev, o))


def _setup(agent_name, loss="huber"):
    cfg = StaticConfig(agent={"name": agent_name, "hidden": (8,), "num_atoms": 11, "v_min": -3.0, "v_max": 3.0,
                              "loss": loss})
    agent = AGENTS[agent_name]
    net = agent.network(cfg, A)
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    dummy = jnp.zeros((OBS,))
    p_online, p_target, p_prev = (net.init(k[i], dummy) for i in range(3))
    return cfg, agent, _nets(net, p_online, p_target, p_prev), _batch(k[3]), net, (p_online, p_target, p_prev)


def _expected_value_target(name, nets, b, hp, cfg):
    d = hp["gamma"] * (1.0 - b.terminated)
    qt_s, qt_n = nets.target(b.obs), nets.target(b.next_obs)
    kw = dict(alpha=hp["alpha"])
    n = b.reward.shape[0]
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
            tau=hp["tau"], clip_min=hp["clip_min"], consistent_weight=cfg.agent.consistent_weight),
        "mdkl": lambda: ops.mirror_descent_target(
            qt_n, ops.mirror_descent_log_policy(nets.prev_target(b.next_obs),
                                                jnp.full((n, A), -jnp.log(2.0)), lam=hp["lam"], tau=hp["tau"]),
            b.reward, d, lam=hp["lam"], tau=hp["tau"]),
    }[name]()


def _huber(pred, target):
    """Huber with δ = 1, written out."""
    err = jnp.abs(pred - target)
    return jnp.where(err <= 1.0, 0.5 * err ** 2, err - 0.5)


# The engine's agents; the Q♯ family (klrl.agents.qsharp) has its own tests.
ENGINE_AGENTS = ["dqn", "double_dqn", "soft_dqn", "al", "pal", "mdqn", "mvi", "mdkl", "c51"]
VALUE_AGENTS = [n for n in ENGINE_AGENTS if n != "c51"]


def test_agent_table():
    # IQN and M-IQN: tests/test_iqn.py (their loss draws from its own key)
    assert set(ENGINE_AGENTS) | {"iqn", "miqn"} | {"qsharp", "qsharp_cd", "kl_prior"} == set(AGENTS)
    for name, agent in AGENTS.items():
        assert agent.name == name
        assert agent.needs_reference == (name in ("qsharp", "qsharp_cd", "kl_prior"))
        assert agent.extra_nets == (("prev_target",) if name == "mdkl" else ())
        if name in ENGINE_AGENTS:      # the trainer's configured actors and the run's replay
            assert agent.actor is None and agent.eval_actor is None and agent.data is None


@pytest.mark.parametrize("name", VALUE_AGENTS)
@pytest.mark.parametrize("loss", ["huber", "l2"])
def test_value_agent_loss_is_regression_onto_operator_target(name, loss):
    cfg, agent, nets, b, *_ = _setup(name, loss)
    value, aux = agent.loss(nets, b, HP, cfg, CTX)
    assert np.isfinite(float(value)) and value.shape == ()
    y = _expected_value_target(name, nets, b, per_example(HP, agent.hparams, b), cfg)
    q_sa = ops.select_action(nets.online(b.obs), b.action)
    np.testing.assert_allclose(value, regression_loss(q_sa, y, loss, b.weight), rtol=1e-6, atol=1e-7)
    # with unit weights, the weighted loss is the plain mean
    per_row = _huber(q_sa, y) if loss == "huber" else 0.5 * (q_sa - y) ** 2
    np.testing.assert_allclose(value, jnp.mean(per_row), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(aux["target_mean"], jnp.mean(y), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(aux["q_mean"], jnp.mean(q_sa), rtol=1e-6, atol=1e-7)


def test_terminal_cuts_bootstrap_but_truncation_does_not():
    """d = γ(1 − terminated): a truncated transition is stored with terminated = 0."""
    cfg, agent, nets, b, *_ = _setup("dqn", "l2")
    y = _expected_value_target("dqn", nets, b, HP, cfg)
    v_next = jnp.max(nets.target(b.next_obs), -1)
    np.testing.assert_allclose(y, b.reward + HP["gamma"] * (1 - b.terminated) * v_next, rtol=1e-6)
    np.testing.assert_allclose(y[1], b.reward[1], rtol=1e-6)


def test_mvi_with_index_one_matches_mdqn_loss():
    cfg, _, nets, b, *_ = _setup("mvi", "l2")
    mvi, _ = AGENTS["mvi"].loss(nets, b, HP | {"entropic_index": jnp.float32(1.0)}, cfg, CTX)
    mdqn, _ = AGENTS["mdqn"].loss(nets, b, HP, cfg, CTX)
    np.testing.assert_allclose(mvi, mdqn, rtol=1e-4)


def test_consistent_weight_flag_reaches_the_operator():
    cfg, agent, nets, b, *_ = _setup("mvi", "l2")
    lit, _ = agent.loss(nets, b, HP, cfg, CTX)
    con, _ = agent.loss(nets, b, HP, cfg.replace(agent={"consistent_weight": True}), CTX)
    assert not np.isclose(float(lit), float(con))


def test_c51_loss_is_cross_entropy_to_projected_greedy_target():
    cfg, agent, nets, b, *_ = _setup("c51")
    value, aux = agent.loss(nets, b, HP, cfg, CTX)
    assert np.isfinite(float(value))
    z = atoms(cfg.agent)
    logits_next = nets.target(b.next_obs)
    assert logits_next.shape == (B, A, cfg.agent.num_atoms)
    a_star = jnp.argmax(ops.categorical_mean(logits_next, z), -1)
    y = ops.categorical_td_target(z, jax.nn.softmax(logits_next, -1), jax.nn.one_hot(a_star, A), b.reward,
                                  HP["gamma"] * (1 - b.terminated))
    np.testing.assert_allclose(jnp.sum(y, -1), 1.0, rtol=1e-5)
    logp = jax.nn.log_softmax(nets.online(b.obs)[jnp.arange(B), b.action], -1)
    np.testing.assert_allclose(value, jnp.mean(-jnp.sum(y * logp, -1)), rtol=1e-6)
    np.testing.assert_allclose(aux["target_mean"], jnp.mean(y @ z), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux["q_mean"], jnp.mean(jnp.exp(logp) @ z), rtol=1e-5, atol=1e-6)
    q = agent.q_values(nets.online(b.obs), cfg)
    assert q.shape == (B, A)


@pytest.mark.parametrize("name", ENGINE_AGENTS)
def test_gradient_is_finite_and_nonzero(name):
    cfg, agent, nets, b, net, _ = _setup(name)
    params = net.init(jax.random.PRNGKey(9), jnp.zeros(OBS))

    def f(p):
        return agent.loss(nets._replace(online=lambda o: net.apply(p, o)), b, HP, cfg, CTX)[0]

    grads = jax.grad(f)(params)
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and sum(norms) > 0


# ---- weights ----------------------------------------------------------------------------------

def test_weighted_mean_and_regression_loss():
    x = jnp.array([1.0, 2.0, 3.0, 100.0])
    np.testing.assert_allclose(weighted_mean(x, jnp.array([1.0, 1.0, 1.0, 0.0])), 2.0, rtol=1e-7)
    np.testing.assert_allclose(weighted_mean(x, jnp.array([2.0, 0.0, 1.0, 0.0])), 5.0 / 3.0, rtol=1e-7)
    # no real row at all: 0, not 0/0
    assert float(weighted_mean(x, jnp.zeros(4))) == 0.0
    pred, target = jnp.array([0.0, 0.0, 0.0]), jnp.array([0.5, 3.0, 50.0])
    w = jnp.array([1.0, 1.0, 0.0])
    np.testing.assert_allclose(regression_loss(pred, target, "l2", w), (0.125 + 4.5) / 2, rtol=1e-6)
    np.testing.assert_allclose(regression_loss(pred, target, "huber", w), (0.125 + 2.5) / 2, rtol=1e-6)
    with pytest.raises(ValueError, match="loss: got 'l1'"):
        regression_loss(pred, target, "l1", w)


WEIGHT = np.array([1, 1, 0, 1, 0, 1], np.float32)
KEEP = np.flatnonzero(WEIGHT)


def _scramble_masked_rows(b: Batch, key) -> Batch:
    """The same batch with wild (finite) contents in its weight-0 rows."""
    k = jax.random.split(key, 4)
    off = jnp.asarray(WEIGHT == 0)
    pick = lambda new, old: jnp.where(off.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)  # noqa: E731
    return b._replace(
        obs=pick(50.0 * jax.random.normal(k[0], b.obs.shape), b.obs),
        action=pick(1 - b.action, b.action),
        reward=pick(jnp.full(b.reward.shape, 1e3), b.reward),
        terminated=pick(1.0 - b.terminated, b.terminated),
        next_obs=pick(-50.0 * jax.random.normal(k[1], b.next_obs.shape), b.next_obs))


@pytest.mark.parametrize("name", ENGINE_AGENTS)
def test_weight_zero_rows_affect_neither_loss_nor_gradient(name):
    """loss(batch with weights w) == loss(the w = 1 rows alone), whatever the w = 0 rows hold;
    the same for the gradient w.r.t. the online parameters and for the aux metrics."""
    cfg, agent, _, b_full, net, (p_online, p_target, p_prev) = _setup(name)
    weighted = b_full._replace(weight=jnp.asarray(WEIGHT))
    scrambled = _scramble_masked_rows(weighted, jax.random.PRNGKey(5))
    kept = jax.tree.map(lambda x: x[KEEP], b_full)

    @jax.jit
    def loss_and_grad(b):
        def f(p):
            return agent.loss(_nets(net, p, p_target, p_prev), b, HP, cfg, CTX)
        return jax.value_and_grad(f, has_aux=True)(p_online)

    (ref, ref_aux), ref_grad = loss_and_grad(kept)
    assert np.isfinite(float(ref)) and float(ref) > 0
    for b in (weighted, scrambled):
        (value, aux), grad = loss_and_grad(b)
        np.testing.assert_allclose(value, ref, rtol=1e-5, atol=1e-7)
        for key in ref_aux:
            np.testing.assert_allclose(aux[key], ref_aux[key], rtol=1e-5, atol=1e-6)
        for g, g_ref in zip(jax.tree.leaves(grad), jax.tree.leaves(ref_grad)):
            np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-6)
    # the scrambled rows do matter once they are given weight
    (unmasked, _), _ = loss_and_grad(scrambled._replace(weight=jnp.ones(B)))
    assert not np.isclose(float(unmasked), float(ref), rtol=1e-3)
    # a batch with no real row: loss 0 and a zero (finite) gradient
    (empty, _), grad0 = loss_and_grad(scrambled._replace(weight=jnp.zeros(B)))
    assert float(empty) == 0.0
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grad0))
