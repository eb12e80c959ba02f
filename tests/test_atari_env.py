"""The Atari backend `ale` (klrl.envs.atari: ale-py's vector env through its XLA interface):
specs per preset, next-step autoreset, reward clipping, the life-loss flag per preset, per-game
episode statistics, seeding and determinism, the vmap refusal and early, one-line errors.

Small pools (2-4 envs) and a few hundred steps each: the suite must stay fast. Random play in
Breakout loses a game (5 balls) in about 150-250 agent steps; SpaceInvaders scores 5-30 points
per invader, so its raw rewards exceed the clipped ones early.
"""

import dataclasses
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import klrl.envs.atari as atari
from klrl.envs import (ATARI_BACKENDS, BACKEND_ENVS, PRESETS, TRAITS, EnvStep, check_env, env_spec,
                       make_env, register_backend, takes_preset, unregister_backend)
from klrl.envs.atari import AtariEnv, AtariOptions, AtariState
from klrl.envs.base import Traits
from klrl.envs.host_pool import PoolVmapError
from klrl.errors import ConfigError

pytestmark = pytest.mark.skipif(bool(atari.missing_packages("ale")),
                                reason="ale-py is not installed (pip install -e '.[atari]')")


def _keys(seed, lead):
    n = int(np.prod(lead))
    return jax.random.split(jax.random.PRNGKey(seed), n).reshape(tuple(lead) + (2,))


def _actions(seed, T, lead, num_actions):
    return np.asarray(jax.random.randint(jax.random.PRNGKey(seed), (T,) + tuple(lead), 0, num_actions,
                                         dtype=jnp.int32))


_RUNS = {}  # env -> its jitted rollout (one compile per env and number of steps)


def _rollout(env, keys, actions):
    """Reset with `keys`, then step `actions` [T, M, E] in one jitted scan -> (first obs, EnvStep
    [T, M, E, ...], game_end [T, M, E], lives [T, M, E]) as numpy arrays."""
    state, obs0 = env.reset(keys)
    if env not in _RUNS:
        def run(state, actions):
            def body(s, a):
                s, st = env.step(s, a, None)
                return s, (st, s.game_end, s.lives)
            return jax.lax.scan(body, state, actions)
        _RUNS[env] = jax.jit(run)
    _, (st, game_end, lives) = _RUNS[env](state, jnp.asarray(actions))
    return np.asarray(obs0), jax.tree.map(np.asarray, st), np.asarray(game_end), np.asarray(lives)


def _check_game_stats(st, game_end):
    """episode_return / episode_length are the running raw score and valid-step count of the
    current GAME (reset on the autoreset step only, never at a life loss); the autoreset step
    follows exactly the steps that end a game."""
    T = st.reward.shape[0]
    ret = np.zeros(st.reward.shape[1:])
    length = np.zeros(st.reward.shape[1:], np.int64)
    prev_end = np.zeros(st.reward.shape[1:], bool)
    for t in range(T):
        v = st.valid[t]
        np.testing.assert_array_equal(v, ~prev_end)
        ret = np.where(v, ret + st.raw_reward[t], 0.0)
        length = np.where(v, length + 1, 0)
        np.testing.assert_allclose(st.episode_return[t], ret, rtol=0, atol=1e-3)
        np.testing.assert_array_equal(st.episode_length[t], length)
        # a game ends by game over (terminated) or the cap (truncated); never both
        assert not np.any(st.terminated[t] & st.truncated[t])
        assert np.all(~game_end[t] | st.done[t])
        prev_end = game_end[t]
    invalid = ~st.valid
    assert np.all(st.reward[invalid] == 0) and np.all(st.raw_reward[invalid] == 0)
    assert not np.any(st.terminated[invalid] | st.truncated[invalid])


# ---- presets, specs, registry ---------------------------------------------------------------------

def test_presets_are_data_with_their_sources():
    expected = {  # sticky, full action set, life loss terminal, noop_max, fire reset, cap
        "dopamine": (0.25, False, False, 1, False, 27_000),
        "machado": (0.25, True, False, 1, False, 27_000),
        "atari100k": (0.0, False, True, 1, False, 27_000),
        "fast": (0.0, False, True, 30, True, 27_000),
    }
    assert tuple(PRESETS) == tuple(expected) == tuple(atari.PRESETS)
    for name, p in atari.PRESETS.items():
        assert p.name == name and p.source
        assert (p.repeat_action_probability, p.full_action_space, p.life_loss_terminal, p.noop_max,
                p.fire_reset, p.max_episode_steps) == expected[name]
        assert (p.frame_skip, p.frame_stack) == (4, 4) and p.noop_max >= 1   # envpool needs >= 1


@pytest.mark.parametrize("preset", list(atari.PRESETS))
def test_spec_shapes_and_dtypes_per_preset(preset):
    M, E = 1, 2
    env = make_env("Breakout", M, E, "ale", preset=preset)
    spec = env.spec
    full = atari.PRESETS[preset].full_action_space
    assert spec == env_spec("Breakout", "ale", preset)
    assert (spec.name, spec.obs_shape, spec.obs_dtype, spec.frame_stack) == ("Breakout", (84, 84, 1), jnp.uint8, 4)
    assert spec.num_actions == (18 if full else 4) and spec.max_episode_steps == 27_000
    assert (env.members, env.envs, env.traits) == (M, E, Traits(False, False))
    state, obs = env.reset(_keys(0, (M, E)))
    assert isinstance(state, AtariState) and state.handle.shape == (8,) and state.handle.dtype == jnp.uint8
    assert obs.shape == (M, E, 84, 84, 1) and obs.dtype == jnp.uint8 and int(obs.max()) > 0
    new, st = jax.eval_shape(env.step, state, jnp.zeros((M, E), jnp.int32), None)
    assert isinstance(st, EnvStep) and st.obs.shape == obs.shape and st.obs.dtype == jnp.uint8
    dtypes = dict(reward=jnp.float32, raw_reward=jnp.float32, terminated=bool, truncated=bool, valid=bool,
                  episode_return=jnp.float32, episode_length=jnp.int32)
    for field, dtype in dtypes.items():
        leaf = getattr(st, field)
        assert leaf.shape == (M, E) and leaf.dtype == dtype, (field, leaf)
    assert new.game_end.shape == (M, E) and new.game_end.dtype == bool


def test_registry_lists_installed_games_lazily_and_declares_traits():
    assert {"ale", "envpool"} == set(ATARI_BACKENDS) <= set(BACKEND_ENVS) and set(BACKEND_ENVS) == set(TRAITS)
    for b in ATARI_BACKENDS:
        assert tuple(TRAITS[b]) == (False, False)
    games = BACKEND_ENVS["ale"]
    assert {"Pong", "Breakout", "MsPacman", "SpaceInvaders", "Qbert"} <= set(games) and len(games) >= 100
    for name in ("Pong", "MsPacman", "Atlantis2"):
        check_env(name, "ale")
    # importing klrl (and its registry) imports neither emulator package
    code = ("import sys, klrl, klrl.envs, klrl.train; "
            "assert 'ale_py' not in sys.modules and 'envpool' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- step semantics -------------------------------------------------------------------------------

def test_next_step_autoreset_at_the_cap_and_at_game_over():
    """A cap of 25 steps: step 25 is truncated (not terminated), step 26 is the autoreset step
    (action ignored, reward 0, valid False) and shows the new game's first frame, which under
    `dopamine` (no no-ops) is the frame a reset shows. Random Breakout also ends games by game
    over within 600 steps when the cap is the preset's."""
    M, E, cap = 1, 2, 25
    env = AtariEnv("Breakout", M, E, backend="ale", options=AtariOptions(preset="dopamine", max_episode_steps=cap))
    assert env.spec.max_episode_steps == cap
    obs0, st, game_end, _ = _rollout(env, _keys(0, (M, E)), _actions(1, 3 * (cap + 1), (M, E), 4))
    _check_game_stats(st, game_end)
    for k in range(3):
        end, nxt = k * (cap + 1) + cap - 1, (k + 1) * (cap + 1) - 1
        assert st.truncated[end].all() and not st.terminated[end].any() and st.valid[end].all()
        np.testing.assert_array_equal(st.episode_length[end], cap)
        assert not st.valid[nxt].any() and (st.episode_length[nxt] == 0).all()
        np.testing.assert_array_equal(st.obs[nxt], obs0)          # the new game's first frame
    assert st.valid.sum() == 3 * cap * M * E

    M, E = 1, 3
    env = make_env("Breakout", M, E, "ale")
    obs0, st, game_end, lives = _rollout(env, _keys(2, (M, E)), _actions(3, 600, (M, E), 4))
    _check_game_stats(st, game_end)
    assert not st.truncated.any()
    ends = np.argwhere(st.terminated)
    assert len(ends) >= 3, "random Breakout should lose a game in 600 steps"
    for t, m, e in ends:
        assert game_end[t, m, e] and lives[t, m, e] == 0                 # dopamine: only game over
        if t + 1 < len(st.valid):
            assert not st.valid[t + 1, m, e] and st.raw_reward[t + 1, m, e] == 0
            assert lives[t + 1, m, e] == 5                               # a new game
            np.testing.assert_array_equal(st.obs[t + 1, m, e], obs0[m, e])


def test_reward_is_the_sign_of_the_raw_score():
    M, E = 1, 3
    env = make_env("SpaceInvaders", M, E, "ale")
    _, st, game_end, _ = _rollout(env, _keys(0, (M, E)), _actions(1, 300, (M, E), env.spec.num_actions))
    _check_game_stats(st, game_end)
    np.testing.assert_array_equal(st.reward, np.sign(st.raw_reward))
    assert np.abs(st.raw_reward).max() > 1, "SpaceInvaders invaders are worth 5-30 points"
    assert set(np.unique(st.reward)) <= {-1.0, 0.0, 1.0} and (st.reward == 1).any()


def test_life_loss_is_terminal_only_for_the_life_loss_presets_and_stats_are_per_game():
    """Same seeds and actions in Breakout under `dopamine` and under `atari100k`/`fast`: in the
    first, `terminated` marks game overs only; in the others also every lost life, after which
    the SAME game goes on (the next step is valid, lives do not reset, episode_return keeps
    counting); `game_end` and the episode totals are per game in both."""
    M, E, T = 1, 2, 500
    for preset in atari.PRESETS:
        env = make_env("Breakout", M, E, "ale", preset=preset)
        _, st, game_end, lives = _rollout(env, _keys(0, (M, E)), _actions(1, T, (M, E), 4))
        _check_game_stats(st, game_end)
        prev_lives = np.concatenate([np.full((1, M, E), 5), lives[:-1]])
        life_lost = st.valid & (lives < prev_lives) & (lives > 0)
        assert life_lost.sum() >= 4, preset                           # random play loses balls
        np.testing.assert_array_equal(game_end, st.valid & (lives == 0) & st.terminated | st.truncated)
        if atari.PRESETS[preset].life_loss_terminal:
            np.testing.assert_array_equal(st.terminated, life_lost | (game_end & ~st.truncated))
            t, m, e = np.argwhere(life_lost)[0]
            assert st.valid[t + 1, m, e] and not game_end[t, m, e]      # the game goes on
            assert st.episode_length[t + 1, m, e] == st.episode_length[t, m, e] + 1
        else:
            assert not (st.terminated & life_lost).any()
            np.testing.assert_array_equal(st.terminated, game_end & ~st.truncated)
        # one game = 5 balls: four life-loss steps and a game over between autoresets
        for m in range(M):
            for e in range(E):
                ends = np.flatnonzero(game_end[:, m, e])
                if len(ends):
                    assert life_lost[:ends[0] + 1, m, e].sum() == 4, (preset, m, e)


def test_same_seeds_replay_and_envs_are_seeded_by_their_own_keys():
    """Sticky actions on (dopamine): 200 random-action steps. The same keys replay the same
    frames and rewards, in a fresh pool and after re-resetting the same pool; other keys differ.
    Environment (m, e) depends on its own key only: a one-env pool seeded with keys[1, 0]
    replays env (1, 0) of the [2, 2] pool (row-major env ids)."""
    M, E, T = 2, 2, 200
    keys = _keys(0, (M, E))
    acts = _actions(1, T, (M, E), 4)
    env = make_env("Breakout", M, E, "ale")
    a = _rollout(env, keys, acts)
    b = _rollout(make_env("Breakout", M, E, "ale"), keys, acts)
    c = _rollout(env, keys, acts)                                   # the same pool, re-reset
    for x, y, z in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(c)):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)
    d = _rollout(env, _keys(5, (M, E)), acts)
    assert not np.array_equal(a[1].obs, d[1].obs)
    # members/envs with distinct keys play distinct games under the same actions
    same_acts = np.broadcast_to(acts[:, :1, :1], acts.shape)
    s = _rollout(env, keys, same_acts)[1]
    flat = s.obs.reshape(T, M * E, -1)
    assert all(not np.array_equal(flat[:, i], flat[:, j]) for i in range(4) for j in range(i))
    single = _rollout(make_env("Breakout", 1, 1, "ale"), keys[1:, :1], acts[:, 1:, :1])
    np.testing.assert_array_equal(single[1].obs[:, 0, 0], a[1].obs[:, 1, 0])
    np.testing.assert_array_equal(single[1].raw_reward[:, 0, 0], a[1].raw_reward[:, 1, 0])


def test_vmap_is_refused_with_a_one_line_error():
    M, E = 1, 2
    env = make_env("Pong", M, E, "ale")
    state, _ = env.reset(_keys(0, (M, E)))
    acts = jnp.zeros((M, E), jnp.int32)
    cases = [
        lambda: jax.vmap(env.step, in_axes=(None, 0, None))(state, jnp.zeros((3, M, E), jnp.int32), None),
        lambda: jax.jit(jax.vmap(lambda a: env.step(state, a, None)))(jnp.zeros((2, M, E), jnp.int32)),
        lambda: jax.vmap(lambda s: env.step(s, acts, None))(jax.tree.map(lambda x: jnp.stack([x, x]), state)),
    ]
    for fn in cases:
        with pytest.raises(PoolVmapError, match=r"AtariEnv\('Pong', backend ale\) cannot be vmapped") as err:
            fn()
        assert "\n" not in str(err.value)
    with pytest.raises(TypeError, match="host call"):
        jax.jit(env.reset)(_keys(0, (M, E)))
    with pytest.raises(ValueError, match=r"batch shape \[1, 2\]"):
        env.reset(_keys(0, (2, 2)))


# ---- bad input ------------------------------------------------------------------------------------

def _no_pool(*args, **kwargs):
    raise AssertionError("a pool was built for bad input")


def _probe(name, **fields):
    """The `ale` backend's declaration under another name, with some fields replaced, registered
    for the duration of a test (klrl.envs.register_backend: injected, nothing patched)."""
    b = dataclasses.replace(atari.ALE, name=name, **fields)
    register_backend(b)
    return b


@pytest.fixture
def probes():
    names = []
    yield lambda name, **fields: names.append(name) or _probe(name, **fields)
    for name in names:
        unregister_backend(name)


def test_bad_input_is_a_one_line_config_error_before_any_pool_is_built(probes):
    # `ale` with an emulator pool factory that fails: every case must fail before it is called.
    probes("ale_nopool", build=lambda game, members, envs, options: AtariEnv(
        game, members, envs, backend="ale", options=options, pool_factory=_no_pool))
    cases = [
        (lambda: make_env("Pongg", 1, 1, "ale_nopool"), r"^env\.name: got 'Pongg'; did you mean Pong\? \(backend ale: \d+ installed"),
        (lambda: make_env("ms_pacman", 1, 1, "ale_nopool"), r"^env\.name: got 'ms_pacman'; did you mean MsPacman\?"),
        (lambda: env_spec("Breakout-v5", "ale_nopool"), r"^env\.name: got 'Breakout-v5'; did you mean Breakout\?"),
        (lambda: check_env("Zork", "ale_nopool"), r"^env\.name: got 'Zork'; no close match \(backend ale"),
        (lambda: make_env("Pong", 1, 1, "ale_nopool", preset="nature"),
         r"^env\.preset: got 'nature'; allowed dopamine, machado, atari100k, fast$"),
        (lambda: env_spec("Pong", "ale_nopool", "v5"), r"^env\.preset: got 'v5'; allowed dopamine"),
        (lambda: make_env("Pong", 0, 1, "ale_nopool"), r"^members: got 0; allowed an integer >= 1"),
        (lambda: make_env("Pong", 1, 1, "atari"), r"^env\.backend: got 'atari'; allowed jax, pool, ale, envpool, tokens, ale_nopool$"),
    ]
    for fn, pattern in cases:
        with pytest.raises(ConfigError, match=pattern) as err:
            fn()
        assert "\n" not in str(err.value)
    with pytest.raises(AssertionError, match="a pool was built"):   # the probe does reach its factory
        make_env("Pong", 1, 1, "ale_nopool")


def test_registered_backends_come_and_go_and_built_ins_stay(probes):
    probes("ale_extra")
    assert "ale_extra" in TRAITS and "ale_extra" in BACKEND_ENVS and takes_preset("ale_extra")
    with pytest.raises(ConfigError, match=r"^env\.backend: got 'ale_extra', already registered; allowed a new name$"):
        register_backend(dataclasses.replace(atari.ALE, name="ale_extra"))
    unregister_backend("ale_extra")
    assert "ale_extra" not in TRAITS and "ale_extra" not in BACKEND_ENVS and not takes_preset("ale_extra")
    unregister_backend("ale")
    assert "ale" in TRAITS and takes_preset("ale") and not takes_preset("jax")


def test_a_missing_extra_names_the_install_command(probes):
    # Both extras reported missing (ale-py is installed here: its check is told otherwise).
    for backend in ATARI_BACKENDS:
        probes(f"{backend}_missing", build=_no_pool, check_name=lambda game, options, backend=backend: atari.check(
            game, backend, options, missing=atari.EXTRAS[backend][1][:1]))
    for backend, extra in (("ale", "atari"), ("envpool", "envpool")):
        for fn in (lambda: make_env("Pong", 1, 1, f"{backend}_missing"), lambda: check_env("Pong", f"{backend}_missing")):
            with pytest.raises(ConfigError, match=rf"^env\.backend: got '{backend}', which needs \w+ \(not installed\); "
                                                  rf"install with pip install -e '\.\[{extra}\]'$"):
                fn()


def test_seeds_are_31_bit_ints_derived_from_each_key():
    from klrl.envs.host_pool import seeds_from_keys

    keys = _keys(0, (4, 8))
    seeds = seeds_from_keys(keys, bits=31)
    assert seeds.shape == (4, 8) and all(0 <= s < 2 ** 31 for s in seeds.flat)
    assert len(set(seeds.flat)) == 32                                   # distinct here (p(collision) ~ 2**-22)
    assert seeds_from_keys(keys, bits=31).tolist() == seeds.tolist()   # a function of the keys
    assert seeds_from_keys(keys[1:2, 3:4], bits=31)[0, 0] == seeds[1, 3]
    wide = seeds_from_keys(keys)                                        # the pool's 64-bit default is unchanged
    assert int(wide[0, 0]) == (int(keys[0, 0, 0]) << 32) | int(keys[0, 0, 1])
