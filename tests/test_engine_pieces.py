"""The trainer's pieces alone: klrl.learner's schedule and target step, klrl.acting's vector step,
klrl.evaluation's evaluators (hand-made steps, a deterministic chain MDP)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klrl import actors as act_lib
from klrl import evaluation as ev
from klrl.acting import make_acting
from klrl.envs import make_env, env_spec
from klrl.envs.base import EnvStep
from klrl.learner import Learner, grads_finite, init_learner, target_step, updates_due, target_due


@pytest.mark.parametrize("E,period,starts", [(10, 10, 0), (4, 10, 20), (3, 2, 5), (1, 1, 0)])
def test_schedule_counts_every_period_crossed(E, period, starts):
    """Over a run, the updates due sum to the number of multiples of `period` env steps reached
    at or after learning_starts (each counted in the vector step that reaches it)."""
    vsteps = jnp.arange(1, 41)
    due = np.asarray(jax.vmap(lambda v: updates_due(v, E, period, starts))(vsteps))
    for v in range(1, 41):
        expected = sum(1 for s in range((v - 1) * E + 1, v * E + 1) if s % period == 0) if v * E >= starts else 0
        assert due[v - 1] == expected
    crossed = np.asarray(jax.vmap(lambda v: target_due(v, E, period))(vsteps))
    np.testing.assert_array_equal(crossed, [any(s % period == 0 for s in range((v - 1) * E + 1, v * E + 1))
                                            for v in range(1, 41)])


def test_target_step_hard_polyak_and_previous():
    lr = Learner(params=jnp.ones(2), target_params=2 * jnp.ones(2), prev_target_params=3 * jnp.ones(2),
                 opt_state=(), diverged=jnp.zeros((), bool))
    hard = target_step(lr, hard=True, keep_prev=True)
    np.testing.assert_array_equal(hard.target_params, [1, 1])
    np.testing.assert_array_equal(hard.prev_target_params, [2, 2])
    soft = target_step(lr, hard=False, keep_prev=False)
    np.testing.assert_array_equal(soft.target_params, [2, 2])
    np.testing.assert_array_equal(soft.prev_target_params, [3, 3])


@pytest.mark.parametrize("clipped", [False, True])
def test_grads_finite_refuses_a_non_finite_entry_or_norm_per_member(clipped):
    # both forms (one reduction over the concatenated leaves; optax's per-leaf norm, shared
    # with the clip) give the guard the same verdict, per member under vmap
    g = {"w": jnp.ones((3, 2)), "b": (jnp.zeros(4), jnp.full((2,), 2.0))}
    check = jax.jit(lambda t: grads_finite(t, clipped))
    assert bool(check(g))
    for bad in (jnp.nan, jnp.inf, -jnp.inf, 3e19):                 # (3e19)² overflows float32
        assert not bool(check({"w": g["w"].at[1, 0].set(bad), "b": g["b"]}))
        assert not bool(check({"w": g["w"], "b": (g["b"][0], g["b"][1].at[0].set(bad))}))
    members = jax.tree.map(lambda x: jnp.stack([x, x.at[0].set(jnp.nan), x]), g)
    np.testing.assert_array_equal(jax.vmap(check)(members), [True, False, True])


def test_init_learner_members_differ_and_padding_is_frozen():
    from klrl.networks import make_network

    net = make_network("mlp", (4,), 2)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    lr = init_learner(net, keys, jnp.zeros((3,)), 0.0, keep_prev=False, active=jnp.array([True, True, False]))
    k = lr.params["params"]["Dense_0"]["kernel"]
    assert k.shape == (3, 3, 4) and not np.allclose(k[0], k[1])
    np.testing.assert_array_equal(lr.diverged, [False, False, True])
    assert lr.prev_target_params == ()


def _step(ret, end, valid=None):
    ret, end = jnp.asarray(ret, jnp.float32), jnp.asarray(end, bool)
    valid = jnp.ones_like(end) if valid is None else jnp.asarray(valid, bool)
    z = jnp.zeros_like(ret)
    return EnvStep(obs=z[..., None], reward=z, raw_reward=z, terminated=end, truncated=jnp.zeros_like(end),
                   valid=valid, episode_return=ret, episode_length=z.astype(jnp.int32), episode_end=end)


def test_concurrent_evaluator_means_test_episodes_only_and_nan_without_any():
    from klrl.acting import Acted
    from klrl.agents import Context

    e = ev.concurrent(test_envs=2, num_envs=1)
    acc = e.init(2, False)
    # member 0: train env ends with 100 (ignored), test envs end with 3 and 5; member 1: none end.
    acted = Acted(obs=jnp.zeros((2, 3, 1)), first=jnp.zeros((2, 3), bool), actions=jnp.zeros((2, 1), jnp.int32),
                  step=_step([[100, 3, 5], [1, 2, 2]], [[1, 1, 1], [1, 0, 0]]), test_log_probs=None)
    acc = e.observe(acc, acted, Context())
    acc = e.observe(acc, acted._replace(step=_step([[0, 7, 0], [0, 0, 0]], [[0, 1, 0], [0, 0, 0]])), Context())
    out = e.end_of_chunk(acc, None, None, None, Context())
    np.testing.assert_allclose(out["eval_return"][0], (3 + 5 + 7) / 3)
    assert np.isnan(out["eval_return"][1]) and set(out) == {"eval_return"}


def test_acting_steps_pushes_frames_and_marks_episode_starts():
    """A greedy actor on the deterministic tabular chain: one forward over train + test envs,
    observations advance, `first` marks the reset."""
    spec = env_spec("QSharpChain-v0")
    env = make_env("QSharpChain-v0", 2, 3)
    q = lambda out: out  # noqa: E731
    greedy = act_lib.evaluation(q, 0.0)
    calls = []

    def forward(params, obs, key):
        calls.append(obs.shape)
        return jnp.zeros(obs.shape[:2] + (spec.num_actions,))

    acting = make_acting(forward, greedy, greedy, lambda members: env, num_envs=2, test_envs=1, frame_stack=1,
                         in_graph_reset=True)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    env_state, frame = env.reset(jax.vmap(lambda k: jax.random.split(k, 3))(keys))
    a = acting.init(frame, keys, keys, spec.obs_dtype)
    assert bool(jnp.all(a.first))
    a2, env_state, acted = acting.step(a, env_state, None, {}, jnp.int32(0), None)
    assert calls == [(2, 3) + spec.obs_shape]                      # one forward over all 3 envs
    np.testing.assert_array_equal(acted.obs, a.obs)                 # what was acted on
    assert acted.actions.shape == (2, 2) and acted.test_log_probs.shape == (2, 1, spec.num_actions)
    np.testing.assert_array_equal(a2.obs, acted.step.obs)           # k = 1: the stack is the frame
    np.testing.assert_array_equal(a2.first, ~acted.step.valid)
    assert not bool(jnp.all(a2.key == a.key))
