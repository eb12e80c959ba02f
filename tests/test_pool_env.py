"""The numpy envpool stand-in (`klrl.envs.pool`): dynamics, next-step autoreset, seeding,
vmap refusal and the finite MDPs behind it."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klrl.envs.base import EnvStep
from klrl.envs.base import Traits
from klrl.envs.host_pool import PoolVmapError, seeds_from_keys
from klrl.envs.pool import POOL_ENVS, THETA_THRESHOLD, X_THRESHOLD, NumpyPool, PoolEnv, PoolState, cartpole_step
from klrl.envs.tabular_env import TABULAR_ENVS, _episode_cap, tabular_mdp

BALANCE = np.array([1.0, 1.0, 10.0, 2.0])  # push right iff BALANCE . obs > 0: keeps the pole up for 500 steps


def _keys(seed: int, members: int, envs: int) -> jax.Array:
    return jax.random.split(jax.random.PRNGKey(seed), members * envs).reshape(members, envs, 2)


def _rollout(env: PoolEnv, state, actions):
    """jit + scan of env.step over a fixed action sequence [T, M, E] -> (state, EnvStep [T, M, E])."""
    dummy = jnp.zeros((env.members, env.envs, 2), jnp.uint32)

    def body(s, a):
        return env.step(s, a, dummy)

    out = jax.jit(lambda s, acts: jax.lax.scan(body, s, acts))(state, jnp.asarray(actions, jnp.int32))
    return jax.tree.map(np.asarray, out)


def _balance_rollout(env: PoolEnv, state, obs, steps: int):
    """jit + scan with the in-graph balancing policy (action from the previous obs)."""
    dummy = jnp.zeros((env.members, env.envs, 2), jnp.uint32)
    k = jnp.asarray(BALANCE, jnp.float32)

    def body(carry, _):
        s, o = carry
        s, out = env.step(s, (o @ k > 0).astype(jnp.int32), dummy)
        return (s, out.obs), out

    (state, _), outs = jax.jit(lambda s, o: jax.lax.scan(body, (s, o), None, length=steps))(state, obs)
    return state, jax.tree.map(np.asarray, outs)


def _check_autoreset(out: EnvStep, first_valid: np.ndarray | None = None):
    """Next-step autoreset invariants on a [T, ...] trajectory that starts right after reset."""
    done = out.terminated | out.truncated
    assert out.valid[0].all()
    np.testing.assert_array_equal(out.valid[1:], ~done[:-1])
    inv = ~out.valid
    assert (out.reward[inv] == 0).all() and (out.raw_reward[inv] == 0).all()
    assert not out.terminated[inv].any() and not out.truncated[inv].any()
    assert (out.episode_length[inv] == 0).all() and (out.episode_return[inv] == 0).all()
    assert not (out.terminated & out.truncated).any()
    np.testing.assert_array_equal(out.reward, out.raw_reward)
    assert out.reward.dtype == np.float32 and out.episode_return.dtype == np.float32
    assert out.episode_length.dtype == np.int32 and out.valid.dtype == bool


def _episode_totals(out: EnvStep):
    """Recompute each episode's raw return / valid-step count from the per-step fields and
    compare with what the pool reports on the done step; returns the list of lengths."""
    T = out.reward.shape[0]
    flat = jax.tree.map(lambda x: x.reshape((T, -1) + x.shape[3:]), out)
    lengths = []
    for j in range(flat.reward.shape[1]):
        ret, n = 0.0, 0
        for t in range(T):
            if not flat.valid[t, j]:
                ret, n = 0.0, 0
                continue
            ret += float(flat.raw_reward[t, j])
            n += 1
            assert flat.episode_length[t, j] == n
            np.testing.assert_allclose(flat.episode_return[t, j], ret, rtol=1e-6)
            if flat.terminated[t, j] or flat.truncated[t, j]:
                lengths.append(n)
    return lengths


# -- dynamics ---------------------------------------------------------------------------------

def test_cartpole_step_matches_gymnax():
    import gymnax
    from gymnax.environments.classic_control.cartpole import EnvState

    genv, params = gymnax.make("CartPole-v1")
    rng = np.random.default_rng(0)
    n = 512
    states = rng.uniform([-2.39, -3.0, -0.2, -3.0], [2.39, 3.0, 0.2, 3.0], size=(n, 4)).astype(np.float32)
    actions = rng.integers(0, 2, size=n)

    gstate = EnvState(x=jnp.asarray(states[:, 0]), x_dot=jnp.asarray(states[:, 1]),
                      theta=jnp.asarray(states[:, 2]), theta_dot=jnp.asarray(states[:, 3]),
                      time=jnp.zeros(n, jnp.int32))
    step = jax.vmap(lambda s, a: genv.step_env(jax.random.PRNGKey(0), s, a, params))
    gobs, gnext, greward, gdone, _ = step(gstate, jnp.asarray(actions, jnp.int32))
    gobs, gdone = np.asarray(gobs), np.asarray(gdone)

    # The pure function and the pool (physical state set directly) agree with gymnax.
    nxt, term = cartpole_step(states, actions)
    pool = NumpyPool("CartPole-v1", n)
    pool.reset(range(n))
    pool.state[:] = states
    out = pool.step(actions)
    np.testing.assert_allclose(nxt, gobs, atol=1e-5)
    np.testing.assert_allclose(out.obs, gobs, atol=1e-5)
    # termination flags (skip the measure-zero band where float32/float64 may disagree)
    margin = np.minimum(np.abs(np.abs(nxt[:, 0]) - X_THRESHOLD), np.abs(np.abs(nxt[:, 2]) - THETA_THRESHOLD))
    ok = margin > 1e-5
    assert ok.mean() > 0.99 and gdone.any() and (~gdone).any()
    np.testing.assert_array_equal(term[ok], gdone[ok])
    np.testing.assert_array_equal(out.terminated[ok], gdone[ok])
    assert not out.truncated.any() and out.valid.all()
    np.testing.assert_array_equal(out.reward, np.ones(n, np.float32))
    np.testing.assert_array_equal(np.asarray(greward), np.ones(n))


# -- semantics inside jit + scan -------------------------------------------------------------

def test_autoreset_semantics_in_jit_scan():
    M, E, T = 2, 4, 240
    env = PoolEnv("CartPole-v1", M, E)
    assert env.spec.obs_shape == (4,) and env.spec.num_actions == 2
    assert env.spec.max_episode_steps == 500 and env.spec.frame_stack == 1
    assert env.traits == Traits(in_graph_reset=False, checkpointable=False)
    keys = _keys(0, M, E)
    state, obs0 = env.reset(keys)
    assert obs0.shape == (M, E, 4) and obs0.dtype == jnp.float32
    assert (np.abs(np.asarray(obs0)) <= 0.05).all()
    actions = np.random.default_rng(1).integers(0, 2, size=(T, M, E))
    token, out = _rollout(env, state, actions)
    assert int(token.steps) == T
    assert out.obs.shape == (T, M, E, 4) and out.reward.shape == (T, M, E)
    _check_autoreset(out)
    done = out.terminated | out.truncated
    assert done.sum() >= 20 and not out.truncated.any()

    # An autoreset step returns a fresh start state; a valid step is one cart-pole step of
    # the previous observation and its action (its termination flag included).
    inv = ~out.valid
    assert (np.abs(out.obs[inv]) <= 0.05).all()
    prev = np.concatenate([np.asarray(obs0)[None], out.obs[:-1]])
    nxt, term = cartpole_step(prev[out.valid], actions[out.valid])
    np.testing.assert_allclose(nxt, out.obs[out.valid], atol=1e-5)
    np.testing.assert_array_equal(term, out.terminated[out.valid])
    # terminated observations are outside the bounds, live ones inside
    ended = out.obs[out.terminated]
    assert ((np.abs(ended[:, 0]) > X_THRESHOLD) | (np.abs(ended[:, 2]) > THETA_THRESHOLD)).all()

    lengths = _episode_totals(out)
    assert len(lengths) == done.sum()
    np.testing.assert_array_equal(out.episode_return[done], out.episode_length[done].astype(np.float32))

    # The action of an autoreset step has no effect: flipping all of them changes nothing.
    state, _ = env.reset(keys)
    flipped = np.where(inv, 1 - actions, actions)
    _, out2 = _rollout(env, state, flipped)
    jax.tree.map(np.testing.assert_array_equal, out, out2)


def test_cartpole_truncates_at_500():
    env = PoolEnv("CartPole-v1", 1, 3)
    state, obs = env.reset(_keys(3, 1, 3))
    token, out = _balance_rollout(env, state, obs, 1003)
    assert int(token.steps) == 1003
    _check_autoreset(out)
    assert not out.terminated.any()
    t_idx = np.nonzero(out.truncated)[0]
    np.testing.assert_array_equal(np.unique(t_idx), [499, 1000])  # 500 valid steps, 1 reset step, 500 more
    assert (out.episode_length[out.truncated] == 500).all()
    assert (out.episode_return[out.truncated] == 500.0).all()
    assert not out.valid[[500, 1001]].any() and out.valid[1002].all()
    assert (np.abs(out.obs[500]) <= 0.05).all()


def test_tabular_truncation_short_cap():
    mdp = tabular_mdp("QSharpChain-v0")
    env = PoolEnv("QSharpChain-v0", 1, 2, max_episode_steps=3)
    state, obs = env.reset(_keys(0, 1, 2))
    np.testing.assert_array_equal(np.asarray(obs)[0, :, 0], 1.0)  # one-hot state 0
    token, out = _rollout(env, state, np.zeros((8, 1, 2), np.int32))  # always "forward"
    _check_autoreset(out)
    assert not out.terminated.any()
    np.testing.assert_array_equal(np.nonzero(out.truncated[:, 0, 0])[0], [2, 6])
    np.testing.assert_allclose(out.episode_return[2], mdp.r[0, 0] + mdp.r[1, 0] + mdp.r[2, 0], rtol=1e-6)
    np.testing.assert_array_equal(out.obs[2, 0, 0], np.eye(6, dtype=np.float32)[3])
    np.testing.assert_array_equal(out.obs[3, 0, 0], np.eye(6, dtype=np.float32)[0])
    _episode_totals(out)


# -- seeding ---------------------------------------------------------------------------------

def test_same_keys_same_trajectories_different_keys_differ():
    M, E, T = 2, 3, 120
    actions = np.random.default_rng(2).integers(0, 2, size=(T, M, E))
    outs = []
    for seed in (5, 5, 6):
        env = PoolEnv("CartPole-v1", M, E)  # a fresh pool each time
        state, obs = env.reset(_keys(seed, M, E))
        outs.append((np.asarray(obs), _rollout(env, state, actions)[1]))
    jax.tree.map(np.testing.assert_array_equal, outs[0], outs[1])
    obs_a, obs_c = outs[0][0], outs[2][0]
    assert not np.isclose(obs_a, obs_c).any()
    # every environment of one pool starts differently, and later episodes too
    assert len({tuple(o) for o in obs_a.reshape(-1, 4)}) == M * E
    starts = outs[0][1].obs[~outs[0][1].valid]
    assert len({tuple(o) for o in starts}) == len(starts) > 0

    # re-resetting the same env with the same keys repeats the trajectory exactly
    env = PoolEnv("CartPole-v1", M, E)
    state, _ = env.reset(_keys(5, M, E))
    _rollout(env, state, actions)
    state, _ = env.reset(_keys(5, M, E))
    jax.tree.map(np.testing.assert_array_equal, outs[0][1], _rollout(env, state, actions)[1])


def test_seeds_from_keys():
    keys = np.array([[[0, 1], [1, 0]], [[2**32 - 1, 2**32 - 1], [7, 9]]], np.uint32)
    seeds = seeds_from_keys(keys)
    assert seeds.shape == (2, 2)
    assert seeds.tolist() == [[1, 2**32], [2**64 - 1, (7 << 32) | 9]]
    typed = jax.random.split(jax.random.key(0), 4).reshape(2, 2)
    assert seeds_from_keys(typed).tolist() == seeds_from_keys(jax.random.key_data(typed)).tolist()
    env = PoolEnv("CartPole-v1", 2, 2)
    _, o1 = env.reset(typed)
    _, o2 = env.reset(jax.random.key_data(typed))
    np.testing.assert_array_equal(o1, o2)
    with pytest.raises(ValueError, match="batch shape"):
        env.reset(_keys(0, 1, 4))
    with pytest.raises(TypeError, match="host call"):
        jax.jit(env.reset)(_keys(0, 2, 2))


def test_stale_state_token_is_refused():
    env = PoolEnv("CartPole-v1", 1, 2)
    state, _ = env.reset(_keys(0, 1, 2))
    acts = np.zeros((4, 1, 2), np.int32)
    _rollout(env, state, acts)
    with pytest.raises(Exception, match="stale state token"):
        _rollout(env, state, acts)  # replaying from the reset token: impossible for a pool


# -- vmap ------------------------------------------------------------------------------------

def test_vmap_is_refused_with_a_clear_message():
    M, E = 2, 3
    env = PoolEnv("CartPole-v1", M, E)
    state, _ = env.reset(_keys(0, M, E))
    keys = _keys(1, M, E)
    acts = jnp.zeros((M, E), jnp.int32)
    msg = "cannot be vmapped.*one PoolEnv"
    cases = [
        lambda: jax.vmap(env.step, in_axes=(None, 0, None))(state, jnp.zeros((4, M, E), jnp.int32), keys),
        # vmapping over members: the per-example actions have the wrong shape, still the vmap message
        lambda: jax.vmap(env.step, in_axes=(None, 0, 0))(state, acts, keys),
        lambda: jax.vmap(env.step, in_axes=(None, None, 0))(state, acts, jnp.stack([keys, keys])),
        lambda: jax.vmap(env.step, in_axes=(0, None, None))(PoolState(jnp.zeros(2, jnp.int32), jnp.zeros(2, jnp.int32)),
                                                             acts, keys),
        lambda: jax.vmap(jax.jit(lambda a: jax.lax.scan(
            lambda s, x: env.step(s, x, keys), state, a)))(jnp.zeros((2, 5, M, E), jnp.int32)),
        lambda: jax.jit(jax.vmap(lambda a: env.step(state, a, keys)))(jnp.zeros((2, M, E), jnp.int32)),
    ]
    for case in cases:
        with pytest.raises(PoolVmapError, match=msg):
            case()
    assert env.pool.steps == 0  # nothing ran
    # still usable afterwards
    s, out = env.step(state, acts, keys)
    assert int(s.steps) == 1 and out.valid.all()


def test_bad_actions_rejected():
    env = PoolEnv("CartPole-v1", 1, 2)
    state, _ = env.reset(_keys(0, 1, 2))
    with pytest.raises(ValueError, match="shape"):
        env.step(state, jnp.zeros((2,), jnp.int32), None)
    pool = NumpyPool("CartPole-v1", 2)
    with pytest.raises(RuntimeError, match="before reset"):
        pool.step(np.zeros(2, np.int64))
    pool.reset([0, 1])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        pool.step(np.array([0, 2]))
    with pytest.raises(ValueError, match="allowed"):
        NumpyPool("Pong-v5", 1)


# -- finite MDPs -----------------------------------------------------------------------------

def test_pool_env_names():
    assert POOL_ENVS == ("CartPole-v1",) + tuple(TABULAR_ENVS)
    for name in TABULAR_ENVS:
        env = PoolEnv(name, 1, 1)
        mdp = tabular_mdp(name)
        assert env.spec.obs_shape == (mdp.r.shape[0],) and env.spec.num_actions == mdp.r.shape[1]
        assert env.spec.max_episode_steps == _episode_cap(name)


def test_tree_every_path_return_is_the_sum_of_rewards():
    mdp = tabular_mdp("QSharpTree-v0")
    S, A = mdp.r.shape
    nxt = np.argmax(mdp.P, -1)
    assert (mdp.P.max(-1) == 1).all()  # deterministic tree
    env = PoolEnv("QSharpTree-v0", 3, 9)  # 27 envs: env m*9+e plays path digits base 3
    paths = np.array([[(i // 9) % 3, (i // 3) % 3, i % 3] for i in range(27)])
    # each env plays its path, then one ignored action on the autoreset step, twice over
    seq = np.concatenate([paths.T, np.full((1, 27), 2)] * 2).reshape(8, 3, 9)
    state, _ = env.reset(_keys(0, 3, 9))
    _, out = _rollout(env, state, seq)
    _check_autoreset(out)
    _episode_totals(out)
    eye = np.eye(S, dtype=np.float32)
    for i, path in enumerate(paths):
        m, e = divmod(i, 9)
        s, ret, visited = 0, 0.0, []
        for a in path:
            ret += mdp.r[s, a]
            s = nxt[s, a]
            visited.append(s)
        for base in (0, 4):
            np.testing.assert_array_equal(out.terminated[base:base + 4, m, e], [False, False, True, False])
            np.testing.assert_array_equal(out.obs[base:base + 3, m, e], eye[visited])
            np.testing.assert_array_equal(out.obs[base + 3, m, e], eye[0])
            np.testing.assert_allclose(out.episode_return[base + 2, m, e], ret, rtol=1e-6)
            assert out.episode_length[base + 2, m, e] == 3
    assert not out.truncated.any()


def test_chain_jump_and_walk():
    mdp = tabular_mdp("QSharpChain-v0")
    env = PoolEnv("QSharpChain-v0", 1, 2)
    state, _ = env.reset(_keys(0, 1, 2))
    # env 0 walks forward to the end (terminates at step 5), env 1 jumps (terminates each step)
    seq = np.stack([np.zeros(12, np.int32), np.ones(12, np.int32)], -1)[:, None]
    _, out = _rollout(env, state, seq)
    _check_autoreset(out)
    _episode_totals(out)
    np.testing.assert_array_equal(np.nonzero(out.terminated[:, 0, 0])[0], [4, 10])
    np.testing.assert_allclose(out.episode_return[4, 0, 0], mdp.r[:5, 0].sum(), rtol=1e-6)
    np.testing.assert_array_equal(out.terminated[:, 0, 1], np.arange(12) % 2 == 0)
    np.testing.assert_allclose(out.episode_return[out.terminated[:, 0, 1], 0, 1], mdp.r[0, 1], rtol=1e-6)
    assert not out.truncated.any()


class _MDP(NamedTuple):
    P: np.ndarray
    r: np.ndarray
    terminal: np.ndarray


def test_stochastic_transitions_follow_p():
    # state 0 -> {1: .2, 2: .5, 3: .3}, all terminal; one episode = 1 valid + 1 reset step
    P = np.zeros((4, 1, 4), np.float32)
    P[0, 0, 1:] = [0.2, 0.5, 0.3]
    P[1:, 0, 1:] = np.eye(3)
    mdp = _MDP(P, np.array([[1.0], [0.0], [0.0], [0.0]], np.float32), np.array([0, 1, 1, 1], bool))
    pool = NumpyPool("QSharpChain-v0", 200, mdp=mdp)
    pool.reset(range(200))
    counts = np.zeros(4)
    for _ in range(25):
        out = pool.step(np.zeros(200, np.int64))
        assert out.terminated.all() and (out.reward == 1).all()
        counts += np.bincount(out.obs.argmax(-1), minlength=4)
        out = pool.step(np.zeros(200, np.int64))
        assert not out.valid.any() and (out.obs.argmax(-1) == 0).all()
    freq = counts / counts.sum()  # 5000 draws: std <= 0.0071
    np.testing.assert_allclose(freq, [0, 0.2, 0.5, 0.3], atol=0.03)


# -- statistics ------------------------------------------------------------------------------

def test_random_policy_episode_lengths_match_gymnax():
    import gymnax

    N, T = 100, 480
    pool = NumpyPool("CartPole-v1", N)
    pool.reset(range(N))
    rng = np.random.default_rng(0)
    lengths = []
    for _ in range(T):
        out = pool.step(rng.integers(0, 2, size=N))
        lengths += out.episode_length[out.terminated | out.truncated].tolist()

    genv, params = gymnax.make("CartPole-v1")

    def run(key):
        k0, k1 = jax.random.split(key)
        _, s = jax.vmap(genv.reset, in_axes=(0, None))(jax.random.split(k0, N), params)

        def body(carry, key):
            s, n = carry
            ka, ks = jax.random.split(key)
            a = jax.random.randint(ka, (N,), 0, 2)
            _, s, _, term, trunc, _ = jax.vmap(genv.step, in_axes=(0, 0, 0, None))(
                jax.random.split(ks, N), s, a, params)
            done = term | trunc
            return (s, jnp.where(done, 0, n + 1)), (done, n + 1)

        _, (done, n) = jax.lax.scan(body, (s, jnp.zeros(N, jnp.int32)), jax.random.split(k1, T))
        return done, n

    done, n = jax.jit(run)(jax.random.PRNGKey(0))
    glengths = np.asarray(n)[np.asarray(done)]
    assert len(lengths) > 1800 and len(glengths) > 1800
    mean, gmean = np.mean(lengths), np.mean(glengths)
    assert abs(mean - gmean) / gmean < 0.05, (mean, gmean)
    assert abs(np.median(lengths) - np.median(glengths)) <= 2
    assert 15 < mean < 30


def test_one_program_steps_the_pool_its_state_names():
    """The state names its pool (as an emulator's handle does): a program traced with one
    PoolEnv steps whichever pool of the same shape the state comes from, so one SPMD program
    can drive one pool per device shard (klrl.sharding)."""
    a, b = PoolEnv("CartPole-v1", 1, 2), PoolEnv("CartPole-v1", 1, 2)
    sa, _ = a.reset(_keys(0, 1, 2))
    sb, ob = b.reset(_keys(1, 1, 2))
    acts = np.ones((3, 1, 2), np.int32)
    state, out = _rollout(a, sb, acts)             # traced with a, stepping b
    assert (a.pool.steps, b.pool.steps) == (0, 3) and int(state.instance) == b.instance
    ref = PoolEnv("CartPole-v1", 1, 2)
    sr, _ = ref.reset(_keys(1, 1, 2))
    np.testing.assert_array_equal(out.obs, _rollout(ref, sr, acts)[1].obs)   # b's own trajectory
