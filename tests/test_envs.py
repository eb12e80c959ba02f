"""klrl.envs: gymnax 1.0 six-value step, truncation vs termination, auto-reset, returns."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klrl.envs import ENVS, make_env
from klrl.errors import ConfigError


def _keys(seed, shape):
    n = int(np.prod(shape))
    return jax.random.split(jax.random.PRNGKey(seed), n).reshape(shape + (2,))


def _rollout(env, actions_fn, steps, shape, seed=0):
    step = jax.jit(env.step)
    state, obs = env.reset(_keys(seed, shape))
    out = []
    for t in range(steps):
        state, st = step(state, actions_fn(t, shape), _keys(seed + 1000 + t, shape))
        out.append((obs, st))
        obs = st.obs
    return out


def test_every_listed_env_builds_with_consistent_spec():
    for name in ENVS:
        env = make_env(name)
        assert env.spec.num_actions >= 2 and env.spec.max_episode_steps > 0
        assert env.spec.pixels == name.endswith("MinAtar")
        state, obs = env.reset(_keys(0, (2, 3)))
        assert obs.shape == (2, 3) + env.spec.obs_shape and obs.dtype == env.spec.obs_dtype


def test_unknown_env_is_a_config_error():
    with pytest.raises(ConfigError, match="env: got 'Pong-v5'"):
        make_env("Pong-v5")


def test_termination_cartpole_constant_push():
    """Pushing right forever ends the episode by the pole falling: terminated, not truncated."""
    env = make_env("CartPole-v1")
    roll = _rollout(env, lambda t, s: jnp.ones(s, jnp.int32), 40, (2, 2))
    first_done = None
    for t, (obs, st) in enumerate(roll):
        assert st.obs.shape == (2, 2, 4) and st.reward.dtype == jnp.float32
        assert not bool(jnp.any(st.truncated))
        if first_done is None and bool(st.terminated[0, 0]):
            first_done = t
            # episode return = number of steps (reward 1 per step), tracked by the adapter
            assert float(st.episode_return[0, 0]) == t + 1 == int(st.episode_length[0, 0])
            # auto-reset: next obs is a fresh start, next_obs is the terminal observation
            assert not np.allclose(st.obs[0, 0], st.next_obs[0, 0])
            assert abs(float(st.next_obs[0, 0, 2])) > 0.2  # pole angle past the limit (~0.21 rad)
        elif not bool(st.done[0, 0]):
            np.testing.assert_array_equal(st.obs[0, 0], st.next_obs[0, 0])
    assert first_done is not None and first_done < 40


def test_truncation_mountaincar_time_limit():
    """MountainCar never reaches the flag with a constant action: the 200-step limit truncates."""
    env = make_env("MountainCar-v0")
    assert env.spec.max_episode_steps == 200
    roll = _rollout(env, lambda t, s: jnp.ones(s, jnp.int32), 201, (3,))
    for t, (obs, st) in enumerate(roll[:199]):
        assert not bool(jnp.any(st.done))
        np.testing.assert_array_equal(st.obs, st.next_obs)
    _, last = roll[199]
    assert bool(jnp.all(last.truncated)) and not bool(jnp.any(last.terminated))
    np.testing.assert_allclose(last.episode_return, -200.0)
    np.testing.assert_array_equal(last.episode_length, 200)
    # the bootstrap observation is the pre-reset one, the acting observation the reset one
    assert not np.allclose(last.next_obs, last.obs)
    assert float(jnp.max(jnp.abs(last.obs[:, 1]))) == 0.0  # reset velocity is 0
    # running totals restart after the reset
    _, after = roll[200]
    np.testing.assert_allclose(after.episode_return, -1.0)
    np.testing.assert_array_equal(after.episode_length, 1)


def test_minatar_obs_stored_as_uint8_planes():
    env = make_env("Breakout-MinAtar")
    roll = _rollout(env, lambda t, s: jnp.zeros(s, jnp.int32), 3, (2,))
    obs = roll[-1][1].obs
    assert obs.dtype == jnp.uint8 and obs.shape == (2, 10, 10, 4)
    assert set(np.unique(np.asarray(obs))) <= {0, 1}
