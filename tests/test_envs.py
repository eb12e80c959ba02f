"""klrl.envs (in-graph backends) and klrl.networks' torsos.

The in-graph backends (gymnax classic control and MinAtar, the tabular MDPs) under the ONE
step semantics of klrl.envs.base, next-step autoreset: the step that ends an episode
returns the final observation with the episode's totals; the next step ignores its action
and returns the new episode's first observation with reward 0, terminated = truncated =
False and valid = False. Every env is built for [members, envs]. The host pool backend has
its own tests (tests/test_pool_env.py); here only its declared traits and name checks.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klrl.envs import (BACKEND_ENVS, BACKENDS, MINATAR, TABULAR, TRAITS, EnvStep, check_env, env_spec,
                       make_env)
from klrl.envs.tabular_env import tabular_env, tabular_mdp
from klrl.errors import ConfigError
from klrl.networks import TORSOS, make_network


def _keys(seed, shape):
    n = int(np.prod(shape))
    return jax.random.split(jax.random.PRNGKey(seed), n).reshape(tuple(shape) + (2,))


def _scan_steps(env, state, actions, keys):
    return jax.lax.scan(lambda s, x: env.step(s, *x), state, (actions, keys))


_scan = jax.jit(_scan_steps, static_argnums=0)   # one compile per env instance


def _rollout(env, actions, seed=0):
    """reset + scan of env.step over actions [T, M, E] -> (first obs [M, E, ...], EnvStep [T, M, E, ...])."""
    actions = jnp.asarray(actions, jnp.int32)
    T, M, E = actions.shape
    assert (M, E) == (env.members, env.envs)
    state, obs0 = env.reset(_keys(seed, (M, E)))
    _, out = _scan(env, state, actions, _keys(seed + 1, (T, M, E)))
    return np.asarray(obs0), jax.tree.map(np.asarray, out)


def _check_autoreset(out: EnvStep):
    """Next-step autoreset invariants of a [T, M, E] trajectory that starts right after reset."""
    done = out.terminated | out.truncated
    assert out.valid.dtype == bool and out.terminated.dtype == bool and out.truncated.dtype == bool
    assert out.reward.dtype == np.float32 and out.raw_reward.dtype == np.float32
    assert out.episode_return.dtype == np.float32 and out.episode_length.dtype == np.int32
    assert out.valid[0].all()
    np.testing.assert_array_equal(out.valid[1:], ~done[:-1])   # exactly the step after a done step is invalid
    inv = ~out.valid
    assert (out.reward[inv] == 0).all() and (out.raw_reward[inv] == 0).all()
    assert not out.terminated[inv].any() and not out.truncated[inv].any()
    assert (out.episode_length[inv] == 0).all() and (out.episode_return[inv] == 0).all()
    assert not (out.terminated & out.truncated).any()
    np.testing.assert_array_equal(out.reward, out.raw_reward)
    # Running totals: the valid steps since the last autoreset, summed.
    T = out.reward.shape[0]
    ret = np.zeros(out.reward.shape[1:], np.float64)
    length = np.zeros(out.reward.shape[1:], np.int64)
    for t in range(T):
        v = out.valid[t]
        ret = np.where(v, ret + out.raw_reward[t], 0.0)
        length = np.where(v, length + 1, 0)
        np.testing.assert_array_equal(out.episode_length[t], length)
        np.testing.assert_allclose(out.episode_return[t], ret, rtol=1e-5, atol=1e-5)


# ---- names, specs, shapes, traits ------------------------------------------------------------

def test_every_listed_env_builds_for_members_and_envs_with_consistent_spec():
    assert set(TABULAR) <= set(BACKEND_ENVS["pool"])
    M, E = 2, 3
    for name in BACKEND_ENVS["jax"]:
        env = make_env(name, M, E)
        spec = env.spec
        assert spec == env_spec(name) and spec.name == name and spec.frame_stack == 1
        assert (env.members, env.envs) == (M, E)
        assert spec.num_actions >= 2 and spec.max_episode_steps > 0
        assert spec.obs_dtype == (jnp.uint8 if name in MINATAR else jnp.float32)
        state, obs = jax.jit(env.reset)(_keys(0, (M, E)))     # one compile, not one per eager op
        assert obs.shape == (M, E) + spec.obs_shape and obs.dtype == spec.obs_dtype
        # the step's shapes and dtypes, abstractly (no compile)
        _, st = jax.eval_shape(env.step, state, jnp.zeros((M, E), jnp.int32), _keys(1, (M, E)))
        assert isinstance(st, EnvStep) and st.obs.shape == obs.shape and st.obs.dtype == spec.obs_dtype
        dtypes = dict(reward=jnp.float32, raw_reward=jnp.float32, terminated=bool, truncated=bool, valid=bool,
                      episode_return=jnp.float32, episode_length=jnp.int32)
        for field, dtype in dtypes.items():
            leaf = getattr(st, field)
            assert leaf.shape == (M, E) and leaf.dtype == dtype, (name, field, leaf)


def test_members_and_envs_get_distinct_streams():
    """[M, E] keys -> M·E independent environments (CartPole's start state is random)."""
    env = make_env("CartPole-v1", 2, 3)
    _, obs = env.reset(_keys(0, (2, 3)))
    flat = np.asarray(obs).reshape(6, 4)
    assert len({tuple(r) for r in flat}) == 6
    assert float(np.max(np.abs(flat))) <= 0.05      # gymnax: uniform(−0.05, 0.05)
    _, again = env.reset(_keys(0, (2, 3)))
    np.testing.assert_array_equal(obs, again)


def test_declared_traits_for_each_backend():
    assert set(BACKENDS) == {"jax", "pool", "ale", "envpool", "tokens"} == set(TRAITS)   # Atari: tests/test_atari_env.py
    assert TRAITS["jax"].in_graph_reset and TRAITS["jax"].checkpointable
    assert not TRAITS["pool"].in_graph_reset and not TRAITS["pool"].checkpointable
    for backend in ("jax", "pool"):
        for name in ("CartPole-v1", "QSharpTree-v0"):
            env = make_env(name, 1, 2, backend)
            assert env.traits == TRAITS[backend], (backend, name)
            assert env.spec == env_spec(name, backend), (backend, name)
    # the pool serves the tabular MDPs with the in-graph spec
    for name in TABULAR:
        assert env_spec(name, "pool") == env_spec(name, "jax")


def test_unknown_env_or_backend_is_a_one_line_config_error():
    cases = [
        (lambda: make_env("Pong-v5", 1, 1),
         r"^env\.name: got 'Pong-v5'; allowed one of .*CartPole-v1.*\(backend jax\)"),
        (lambda: check_env("Pong-v5"), r"^env\.name: got 'Pong-v5'"),
        (lambda: env_spec("Pong-v5"), r"^env\.name: got 'Pong-v5'"),
        (lambda: check_env("CartPole-v1", "gym"), r"^env\.backend: got 'gym'; allowed jax, pool, ale, envpool, tokens"),
        (lambda: make_env("CartPole-v1", 1, 1, "gym"), r"^env\.backend: got 'gym'"),
        # an env one backend serves and the other does not
        (lambda: check_env("Acrobot-v1", "pool"), r"^env\.name: got 'Acrobot-v1'; allowed one of .*\(backend pool\)"),
        (lambda: make_env("Breakout-MinAtar", 1, 1, "pool"), r"^env\.name: got 'Breakout-MinAtar'"),
    ]
    for fn, pattern in cases:
        with pytest.raises(ConfigError, match=pattern) as err:
            fn()
        assert "\n" not in str(err.value)
    for backend in BACKENDS:
        for name in BACKEND_ENVS[backend]:
            check_env(name, backend)   # every listed pair is accepted


# ---- gymnax classic control -----------------------------------------------------------------

def test_termination_cartpole_constant_push():
    """Pushing right forever ends every episode by the pole falling: terminated, not truncated;
    the done step shows the final observation, the next one a fresh start (valid False)."""
    T, M, E = 40, 2, 2
    env = make_env("CartPole-v1", M, E)
    ones = np.ones((T, M, E), np.int32)
    obs0, out = _rollout(env, ones)
    _check_autoreset(out)
    assert out.obs.shape == (T, M, E, 4) and out.obs.dtype == np.float32
    assert not out.truncated.any()
    for m in range(M):
        for e in range(E):
            done_t = np.flatnonzero(out.terminated[:, m, e])
            assert len(done_t) >= 2, (m, e)       # two full episodes at least, in 40 steps
            t = done_t[0]
            assert out.valid[t, m, e] and not out.terminated[:t, m, e].any()
            # the episode's totals on its done step: reward 1 per step
            assert float(out.episode_return[t, m, e]) == t + 1 == int(out.episode_length[t, m, e])
            np.testing.assert_array_equal(out.reward[: t + 1, m, e], 1.0)
            # the done step returns the terminal observation: pole past the ~0.21 rad limit
            # (or the cart out of the track)
            final = out.obs[t, m, e]
            assert abs(final[2]) > 0.2094 or abs(final[0]) > 2.4
            # the next step: not a transition, reward 0, a new episode's first observation
            nxt = out.obs[t + 1, m, e]
            assert not out.valid[t + 1, m, e] and out.reward[t + 1, m, e] == 0.0
            assert not out.terminated[t + 1, m, e] and not out.truncated[t + 1, m, e]
            assert float(np.max(np.abs(nxt))) <= 0.05 and not np.allclose(nxt, final)
            # totals restart: the step after the autoreset is step 1 of the new episode
            assert out.episode_length[t + 2, m, e] == 1 and out.episode_return[t + 2, m, e] == 1.0
            # the second episode ends by termination too, with its own totals
            t2 = done_t[1]
            assert out.episode_length[t2, m, e] == t2 - t - 1


def test_autoreset_step_ignores_its_action():
    """Changing the action of every autoreset step changes nothing, anywhere after it."""
    T, M, E = 40, 1, 3
    env = make_env("CartPole-v1", M, E)
    ones = np.ones((T, M, E), np.int32)
    _, out = _rollout(env, ones)
    assert (~out.valid).sum() >= 3
    flipped = np.where(~out.valid, 0, ones)        # push left on the steps that reset
    _, out2 = _rollout(env, flipped)
    for a, b in zip(out, out2):
        np.testing.assert_array_equal(a, b)
    # ...while a changed action on a valid step does change the trajectory
    other = ones.copy()
    other[2] = 0
    _, out3 = _rollout(env, other)
    assert not np.array_equal(out3.obs[2], out.obs[2])


def test_truncation_mountaincar_time_limit():
    """MountainCar never reaches the flag without pushing: the 200-step limit truncates."""
    M, E = 1, 3
    env = make_env("MountainCar-v0", M, E)
    assert env.spec.max_episode_steps == 200
    T = 202
    obs0, out = _rollout(env, np.ones((T, M, E), np.int32))
    _check_autoreset(out)
    np.testing.assert_array_equal(obs0[..., 1], 0.0)                   # reset velocity is 0
    assert not out.terminated.any()
    assert not out.truncated[:199].any() and out.valid[:200].all()
    last = jax.tree.map(lambda x: x[199], out)
    assert last.truncated.all() and not last.terminated.any()
    np.testing.assert_allclose(last.episode_return, -200.0)
    np.testing.assert_array_equal(last.episode_length, 200)
    np.testing.assert_array_equal(out.reward[:200], -1.0)
    # the done step's obs is the pre-reset one (the car is moving), the next step's a reset
    assert np.all(np.abs(last.obs[..., 1]) > 0)
    after = jax.tree.map(lambda x: x[200], out)
    assert not after.valid.any() and not after.truncated.any() and (after.reward == 0).all()
    np.testing.assert_array_equal(after.obs[..., 1], 0.0)
    assert np.all((after.obs[..., 0] >= -0.6) & (after.obs[..., 0] <= -0.4))
    assert not np.allclose(after.obs, last.obs)
    np.testing.assert_array_equal(after.episode_length, 0)
    # running totals restart after the reset
    nxt = jax.tree.map(lambda x: x[201], out)
    assert nxt.valid.all()
    np.testing.assert_allclose(nxt.episode_return, -1.0)
    np.testing.assert_array_equal(nxt.episode_length, 1)


# ---- MinAtar ---------------------------------------------------------------------------------

def test_minatar_obs_uint8_planes_and_autoreset():
    M, E, T = 1, 2, 60
    env = make_env("Breakout-MinAtar", M, E)
    assert env.spec.obs_shape == (10, 10, 4) and env.spec.obs_dtype == jnp.uint8
    obs0, out = _rollout(env, np.zeros((T, M, E), np.int32))   # no-op: the ball is lost
    for obs in (obs0, out.obs):
        assert obs.dtype == np.uint8 and set(np.unique(obs)) <= {0, 1}
    assert obs0.shape == (M, E, 10, 10, 4) and out.obs.shape == (T, M, E, 10, 10, 4)
    _check_autoreset(out)
    assert out.terminated.any() and not out.truncated.any()
    # the step after a termination shows a new episode's first frame (gymnax Breakout's reset:
    # full brick rows 1-3, paddle at column 4, ball and its trail at row 3, column 0 or 9);
    # the done step showed the final frame, which is not one.
    def is_start_frame(f):
        bricks = np.zeros((10, 10), np.uint8)
        bricks[1:4] = 1
        ball = np.argwhere(f[..., 1]).tolist()
        return (np.array_equal(f[..., 3], bricks) and np.argwhere(f[..., 0]).tolist() == [[9, 4]]
                and ball in ([[3, 0]], [[3, 9]]) and np.array_equal(f[..., 2], f[..., 1]))

    for m in range(M):
        assert is_start_frame(obs0[m, 0]) and is_start_frame(obs0[m, 1])
    for t, m, e in zip(*np.nonzero(out.terminated)):
        assert is_start_frame(out.obs[t + 1, m, e]) and not is_start_frame(out.obs[t, m, e])


# ---- tabular MDPs ----------------------------------------------------------------------------

def test_tabular_tree_terminates_at_depth_with_leaf_reward():
    M, E, T = 2, 4, 12
    env = make_env("QSharpTree-v0", M, E)
    mdp = tabular_mdp("QSharpTree-v0")
    S, A = mdp.r.shape
    assert env.spec.obs_shape == (S,) and env.spec.num_actions == A == 3 and env.spec.max_episode_steps == 3
    actions = np.asarray(jax.random.randint(jax.random.PRNGKey(3), (T, M, E), 0, A))
    obs0, out = _rollout(env, actions)
    _check_autoreset(out)
    np.testing.assert_array_equal(obs0, np.broadcast_to(np.eye(S, dtype=np.float32)[0], (M, E, S)))
    # 3 valid steps then an autoreset, repeating: done at t = 2, 6, 10, invalid at 3, 7, 11
    for t in range(T):
        assert out.terminated[t].all() == (t % 4 == 2) and out.terminated[t].any() == (t % 4 == 2)
        assert out.valid[t].all() == (t % 4 != 3) and out.valid[t].any() == (t % 4 != 3)
    assert not out.truncated.any()
    # replay the MDP by hand: the obs is one-hot of the state reached, reward r(s, a)
    succ = np.argmax(mdp.P, axis=-1)
    for m in range(M):
        for e in range(E):
            s, ret = 0, 0.0
            for t in range(T):
                if not out.valid[t, m, e]:
                    s, ret = 0, 0.0
                    np.testing.assert_array_equal(out.obs[t, m, e], np.eye(S)[0])   # new episode's first obs
                    continue
                a = actions[t, m, e]
                np.testing.assert_allclose(out.reward[t, m, e], mdp.r[s, a], rtol=1e-6)
                ret += mdp.r[s, a]
                s = succ[s, a]
                np.testing.assert_array_equal(out.obs[t, m, e], np.eye(S)[s])          # final obs on the done step
                if out.terminated[t, m, e]:
                    assert mdp.terminal[s]
                    np.testing.assert_allclose(out.episode_return[t, m, e], ret, rtol=1e-6)
                    assert out.episode_length[t, m, e] == 3


def test_tabular_truncation_at_a_short_time_limit():
    """A cap below the tree's depth truncates (not terminates) at a non-terminal state."""
    M, E, T = 1, 3, 7
    env = tabular_env("QSharpTree-v0", M, E, max_episode_steps=2)
    assert env.spec.max_episode_steps == 2
    _, out = _rollout(env, np.ones((T, M, E), np.int32))
    _check_autoreset(out)
    assert not out.terminated.any()
    for t in range(T):       # done at 1, 4; autoreset at 2, 5
        assert out.truncated[t].all() == (t % 3 == 1) and out.truncated[t].any() == (t % 3 == 1)
    np.testing.assert_array_equal(out.episode_length[1], 2)
    np.testing.assert_array_equal(np.argmax(out.obs[1], -1), 8)    # root -a1-> 2 -a1-> 8, not terminal
    np.testing.assert_array_equal(np.argmax(out.obs[2], -1), 0)


def test_tabular_chain_terminal_wins_over_the_time_limit():
    """QSharpChain-v0: walking (action 0) reaches the terminal in exactly `length` = cap steps;
    that step is terminated, not truncated. Jumping (action 1) terminates at once."""
    M, E = 1, 2
    env = make_env("QSharpChain-v0", M, E)
    cap = env.spec.max_episode_steps
    mdp = tabular_mdp("QSharpChain-v0")
    T = cap + 3
    actions = np.zeros((T, M, E), np.int32)
    actions[:, :, 1] = 1
    _, out = _rollout(env, actions)
    _check_autoreset(out)
    assert not out.truncated.any()
    walk = out.terminated[:, 0, 0]
    assert np.flatnonzero(walk).tolist() == [cap - 1]
    np.testing.assert_allclose(out.episode_return[cap - 1, 0, 0], mdp.r[np.arange(cap), 0].sum(), rtol=1e-6)
    jump = out.terminated[:, 0, 1]
    assert np.flatnonzero(jump).tolist() == list(range(0, T, 2))
    np.testing.assert_allclose(out.episode_return[0, 0, 1], mdp.r[0, 1], rtol=1e-6)


# ---- torsos (klrl.networks) ------------------------------------------------------------------

def _param_shapes(params):
    return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(x.shape)
            for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def test_torso_output_and_parameter_shapes():
    """Parameter and output shapes of each torso (abstractly: no compile), for scalar and
    distributional heads, unbatched / batched / extra leading axes."""
    key = jax.random.PRNGKey(0)
    B = 3
    cases = [  # torso, obs shape, dtype, hidden, expected kernel shapes (in order)
        ("mlp", (4,), jnp.float32, (8,), [(4, 8), (8, 2 * 5)]),
        ("minatar_cnn", (10, 10, 4), jnp.uint8, (16,), [(3, 3, 4, 16), (8 * 8 * 16, 16), (16, 2 * 5)]),
        ("nature_cnn", (84, 84, 4), jnp.uint8, (512,),
         [(8, 8, 4, 32), (4, 4, 32, 64), (3, 3, 64, 64), (7 * 7 * 64, 512), (512, 2 * 5)]),
    ]
    assert {c[0] for c in cases} == set(TORSOS)
    for torso, shape, dtype, hidden, kernels in cases:
        for num_outputs in (1, 5):
            net = make_network(torso, hidden, 2, num_outputs, obs_scale=1 / 255 if dtype == jnp.uint8 else 1.0)
            params = jax.eval_shape(net.init, key, jnp.zeros(shape, dtype))   # unbatched init (the trainer's)
            got = [s for name, s in _param_shapes(params).items() if name.endswith("kernel")]
            want = kernels if num_outputs == 5 else kernels[:-1] + [kernels[-1][:-1] + (2,)]
            assert got == want, (torso, num_outputs, got)
            out_shape = (2,) if num_outputs == 1 else (2, num_outputs)
            for lead in ((), (B,), (2, B)):
                out = jax.eval_shape(net.apply, params, jax.ShapeDtypeStruct(lead + shape, dtype))
                assert out.shape == lead + out_shape and out.dtype == jnp.float32, (torso, lead, out)


def test_small_torsos_treat_leading_axes_as_batch():
    """Numerically: applying to [1, B, ...] or one row is applying to [B, ...] (mlp, minatar_cnn)."""
    for torso, shape, dtype in (("mlp", (4,), jnp.float32), ("minatar_cnn", (10, 10, 4), jnp.uint8)):
        net = make_network(torso, (8,), 3, 2)

        @jax.jit
        def apply_three_ways(key):
            params = net.init(key, jnp.zeros(shape, dtype))
            x = jax.random.randint(key, (3,) + shape, 0, 2).astype(dtype)
            return net.apply(params, x), net.apply(params, x[None])[0], net.apply(params, x[1])

        out, lead, row = apply_three_ways(jax.random.PRNGKey(0))
        assert out.shape == (3, 3, 2)
        np.testing.assert_allclose(lead, out, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(row, out[1], rtol=1e-5, atol=1e-6)


def test_obs_scale_is_applied_inside_the_network():
    """uint8 frames with obs_scale 1/255 == the same float frames already divided by 255."""
    shape = (84, 84, 4)
    scaled = make_network("nature_cnn", (32,), 6, obs_scale=1 / 255)
    plain = make_network("nature_cnn", (32,), 6)

    @jax.jit
    def outputs(key):
        params = scaled.init(key, jnp.zeros(shape, jnp.uint8))
        frames = jax.random.randint(key, (2,) + shape, 0, 256).astype(jnp.uint8)
        return (scaled.apply(params, frames), plain.apply(params, frames.astype(jnp.float32) / 255.0),
                plain.apply(params, frames))

    out, by_hand, unscaled = outputs(jax.random.PRNGKey(1))
    assert out.shape == (2, 6) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, by_hand, rtol=1e-4, atol=1e-5)
    assert not np.allclose(out, unscaled)      # the scale matters


def test_unknown_torso_is_rejected():
    with pytest.raises(ValueError, match=r"^torso: got 'resnet'; allowed mlp, minatar_cnn, nature_cnn"):
        make_network("resnet", (8,), 2)



def test_tabular_env_trains_through_the_runners_ahead_of_time_program():
    """The runner compiles a chunk with `lower(...).compile()` and calls the compiled program
    with (state, hparams) alone: an env closing over jax.Arrays made them hoisted program
    arguments, and the call failed ("compiled for 60 inputs but called with 54")."""
    from klrl.config import load_experiment
    from klrl.runner import initial_state, prepare
    from klrl.sharding import ShardedTrainer

    sets = ["env.name=QSharpTree-v0", "agent.name=dqn", "train.total_steps=200", "train.chunk_steps=100",
            "train.learning_starts=50", "train.seeds=1", "agent.hidden=[8]", "train.batch_size=8",
            "train.buffer_size=200"]
    (pop,), (trainer,), *_ = prepare(load_experiment("experiments/quickstart.toml", sets).per_env()[0])
    sharded = ShardedTrainer(trainer, pop.size)
    keys = sharded.put_members(pop.keys)
    hparams = {k: sharded.put_members(v) for k, v in pop.hparams.items()}
    state = initial_state(pop, trainer, sharded, keys, hparams)
    _, metrics = sharded.run_chunk().lower(state, hparams).compile()(state, hparams)
    assert np.isfinite(np.asarray(metrics["loss"])).all()
