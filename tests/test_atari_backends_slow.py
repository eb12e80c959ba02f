"""Slow Atari checks: the two backends (`ale`, `envpool`) play the same games, and the engine
trains end to end through the `ale` backend.

Backends agree. Preset `fast` (no sticky actions, minimal action set, up to 30 no-op frames and
FIRE at a game start), a uniform random policy (its own fixed key), Pong and Breakout. Each
backend runs a pool of 32 environments until every environment has finished K games (Pong
K = 2, Breakout K = 6: 64 and 192 games per backend); the first K games of every environment
are kept, so long games are not under-sampled. The test: a two-sample Kolmogorov–Smirnov test
of the game returns (raw scores) and one of the game lengths (agent steps), each at level
0.01, must not reject (and the action sets must agree). Everything is seeded, so the outcome
is reproducible, not a coin flip. Measured here: Pong -20.27 ± 0.83 (ale) vs -20.27 ± 0.87
(envpool), 923 vs 934 steps; Breakout 1.17 ± 1.34 vs 1.33 ± 1.43, 175 vs 186 steps. About 4
minutes on 2 loaded cores.

Why `fast` and not `dopamine`: with no-op starts "off", envpool still plays ONE no-op frame
at every game start (it cannot play none) and ale-py none, and that single frame shifts random
play in Breakout a lot: 0 / 1 / 2 start frames give mean game lengths 181 / 215 / 175 steps and
scores 1.2 / 1.9 / 1.0 (150 games each through gymnasium's ale-py env; envpool and ale-py give
identical rewards and lives step for step once their start frames agree). Under `dopamine`
the backends therefore differ in Breakout (178 vs 205 steps, KS p ≈ 1e-4) and agree in Pong;
with random no-op starts (`fast`) the offset washes out.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import klrl.envs.atari as atari
from klrl.envs import env_spec, make_env

pytestmark = pytest.mark.slow


def _keys(seed, lead):
    return jax.random.split(jax.random.PRNGKey(seed), int(np.prod(lead))).reshape(tuple(lead) + (2,))


def _random_play(game, backend, envs, per_env, preset="fast", seed=0, chunk=256, max_steps=200_000):
    """The first `per_env` games of each of `envs` environments under uniform random actions
    -> (returns, lengths) float arrays of envs × per_env games."""
    env = make_env(game, 1, envs, backend, preset=preset)
    A = env.spec.num_actions
    state, _ = env.reset(_keys(seed, (1, envs)))

    @jax.jit
    def run(state, key):
        def body(s, k):
            a = jnp.floor(jax.random.uniform(k, (1, envs)) * A).astype(jnp.int32)
            s, st = env.step(s, a, None)
            return s, (s.game_end, st.episode_return, st.episode_length)
        return jax.lax.scan(body, state, jax.random.split(key, chunk))

    games = [[] for _ in range(envs)]
    key = jax.random.PRNGKey(seed + 1)
    steps = 0
    while min(len(g) for g in games) < per_env:
        assert steps < max_steps, f"{game} {backend}: fewer than {per_env} games per env in {steps} steps"
        key, sub = jax.random.split(key)
        state, (end, ret, length) = jax.tree.map(np.asarray, run(state, sub))
        for t, _, e in np.argwhere(end):
            games[e].append((float(ret[t, 0, e]), float(length[t, 0, e])))
        steps += chunk
    kept = np.array([g[:per_env] for g in games]).reshape(-1, 2)
    return kept[:, 0], kept[:, 1]


@pytest.mark.skipif(bool(atari.missing_packages("ale") or atari.missing_packages("envpool")),
                    reason="needs both extras: pip install -e '.[atari,envpool]'")
@pytest.mark.parametrize("game,per_env", [("Pong", 2), ("Breakout", 6)])
def test_ale_and_envpool_play_the_same_game_distributions(game, per_env):
    assert env_spec(game, "ale").num_actions == env_spec(game, "envpool").num_actions
    ale_ret, ale_len = _random_play(game, "ale", 32, per_env)
    ep_ret, ep_len = _random_play(game, "envpool", 32, per_env)
    assert len(ale_ret) == len(ep_ret) == 32 * per_env
    summary = (f"{game}: ale return {ale_ret.mean():.2f} ± {ale_ret.std():.2f}, length {ale_len.mean():.0f}; "
               f"envpool return {ep_ret.mean():.2f} ± {ep_ret.std():.2f}, length {ep_len.mean():.0f}")
    print(summary)
    assert stats.ks_2samp(ale_ret, ep_ret).pvalue > 0.01, summary
    assert stats.ks_2samp(ale_len, ep_len).pvalue > 0.01, summary
    if game == "Pong":          # random play loses Pong: -21 .. about -18
        assert ale_ret.max() < -15 and ep_ret.max() < -15, summary
    else:                       # and scores a point or two in Breakout
        assert 0.5 < ale_ret.mean() < 4 and 0.5 < ep_ret.mean() < 4, summary


# ---- the engine, end to end, on an Atari game -----------------------------------------------------

@pytest.mark.skipif(bool(atari.missing_packages("ale")), reason="ale-py is not installed")
def test_the_engine_trains_mdqn_on_breakout_through_the_ale_backend():
    """Nature CNN, obs_scale 1/255, concurrent evaluation (2 test envs in the pool), two members.
    The trainer's host recipe (as klrl.runner): init with the pool's start state, then
    run_chunk in a host loop (`train` needs an in-graph reset, which a pool has not)."""
    from klrl.envs.atari import AtariState
    from klrl.train import StaticConfig, make_train

    cfg = StaticConfig(env={"name": "Breakout", "backend": "ale", "num_envs": 2},
                       agent={"name": "mdqn", "torso": "nature_cnn", "obs_scale": 1 / 255},
                       train={"total_steps": 800, "chunk_steps": 400,
                              "buffer_size": 1000, "batch_size": 8, "learning_starts": 50, "update_every": 8,
                              "target_update_every": 100},
                       eval={"mode": "concurrent", "envs": 2})
    tr = make_train(cfg)
    assert not tr.traits.in_graph_reset and not tr.traits.checkpointable
    keys = jnp.stack([jax.random.PRNGKey(0), jax.random.PRNGKey(1)])
    state0 = tr.init(keys, {}, (), tr.env_start(keys, 0))
    assert isinstance(state0.env, AtariState) and state0.env.game_end.shape == (2, 4)
    assert state0.actor.obs.shape == (2, 4, 84, 84, 4) and state0.actor.obs.dtype == jnp.uint8
    run_chunk = jax.jit(tr.run_chunk)
    state, rows = state0, []
    for _ in range(tr.num_chunks):
        state, m = run_chunk(state, {})
        rows.append(jax.tree.map(np.asarray, m))
    np.testing.assert_array_equal([r["step"] for r in rows], [[400, 400], [800, 800]])
    for r in rows:
        assert np.all(np.isfinite(r["loss"])) and not np.any(r["diverged"])
    # 400 steps per env: random-ish play ends Breakout games (about 180 steps each)
    train_ret = np.array([r["train_return"] for r in rows])
    assert np.isfinite(train_ret).any() and np.nanmax(train_ret) < 50, train_ret
    assert state.replay.data["frame"].shape == (2, 500, 2, 84, 84, 1)
    assert any(not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(state.learner.params), jax.tree.leaves(state0.learner.params)))
