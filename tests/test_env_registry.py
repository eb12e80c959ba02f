"""The backend registry (klrl.envs.BACKENDS, klrl.envs.base.Backend) and the host-pool base
(klrl.envs.host_pool.HostPoolEnv): lookup, traits declared once, options, specs computed
without building an env and cached, and the glue every host pool shares (seeds, [M, E]
layout, the vmap refusal, the wait before a reset)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import klrl.envs.atari as atari
from klrl.envs import BACKENDS, TRAITS, backend, env_spec, make_env, options_from
from klrl.envs.atari import AtariEnv, AtariOptions
from klrl.envs.base import Backend, EnvSpec, Traits
from klrl.envs.host_pool import HostPoolEnv, PoolVmapError, seeds_from_keys
from klrl.envs.in_graph import InGraphEnv
from klrl.envs.pool import PoolEnv
from klrl.errors import ConfigError

needs_ale = pytest.mark.skipif(bool(atari.missing_packages("ale")), reason="ale-py is not installed")


def _keys(seed, shape):
    return jax.random.split(jax.random.PRNGKey(seed), int(np.prod(shape))).reshape(shape + (2,))


# ---- the registry ---------------------------------------------------------------------------------

def test_lookup_and_traits_declared_once_by_the_env_classes():
    assert tuple(BACKENDS) == ("jax", "pool", "ale", "envpool", "tokens")
    for name, b in BACKENDS.items():
        assert backend(name) is b and b.name == name and TRAITS[name] is b.traits
    assert backend("jax").traits is backend("tokens").traits is InGraphEnv.traits == Traits(in_graph_reset=True, checkpointable=True)
    for name in ("pool", "ale", "envpool"):
        assert backend(name).traits is HostPoolEnv.traits == Traits(in_graph_reset=False, checkpointable=False)
    assert PoolEnv.traits is AtariEnv.traits is HostPoolEnv.traits
    with pytest.raises(ConfigError, match=r"^env\.backend: got 'gym'; allowed jax, pool, ale, envpool, tokens$"):
        backend("gym")


def test_options_belong_to_the_backend_that_declares_them():
    for name in ("jax", "pool"):
        b = backend(name)
        assert b.options is None and b.resolve(None) is None
        with pytest.raises(TypeError, match=f"backend {name} takes no options"):
            b.spec("CartPole-v1", AtariOptions())
    for name in ("ale", "envpool"):
        b = backend(name)
        assert b.options is AtariOptions and b.resolve(None) == AtariOptions()
        with pytest.raises(TypeError, match="options must be a AtariOptions, got str"):
            b.resolve("fast")
    o = AtariOptions(preset="atari100k", max_episode_steps=25)
    assert hash(o) == hash(AtariOptions(preset="atari100k", max_episode_steps=25))   # a cache key
    assert o.protocol == atari.PRESETS["atari100k"]._replace(max_episode_steps=25)
    assert AtariOptions(preset="fast").protocol is atari.PRESETS["fast"]
    for kwargs, pattern in (
            (dict(preset="nope"), r"^env\.atari\.preset: got 'nope'; allowed one of dopamine, machado, atari100k, fast$"),
            (dict(max_episode_steps=-1), r"^env\.atari\.max_episode_steps: got -1; allowed an integer >= 0$"),
            (dict(num_threads=1.5), r"^env\.atari\.num_threads: got 1\.5; allowed an integer$")):
        with pytest.raises(ConfigError, match=pattern):
            AtariOptions(**kwargs)


def test_options_from_an_env_section():
    from klrl.static import EnvConfig

    assert options_from(EnvConfig()) is None
    assert options_from(EnvConfig(name="CartPole-v1", backend="pool")) is None
    if not atari.missing_packages("ale"):
        cfg = EnvConfig(name="Pong", backend="ale", preset="fast")
        assert options_from(cfg) == AtariOptions(preset="fast")
        assert backend("ale").spec("Pong", options_from(cfg)) == env_spec("Pong", "ale", "fast")


def test_a_declared_backend_checks_names_caches_specs_and_builds_only_in_make():
    calls = {"spec": 0, "build": 0}

    def spec(name, options):
        calls["spec"] += 1
        return EnvSpec(name, (1,), jnp.float32, 2, 5)

    def build(name, members, envs, options):
        calls["build"] += 1
        return (name, members, envs)

    toy = Backend("toy", Traits(True, True), lambda: ("A", "B"), spec, build)
    assert toy.spec("A") is toy.spec("A") and calls == {"spec": 1, "build": 0}
    assert toy.make("B", 2, 3) == ("B", 2, 3) and calls == {"spec": 1, "build": 1}
    for fn in (lambda: toy.check("C"), lambda: toy.spec("C"), lambda: toy.make("C", 1, 1)):
        with pytest.raises(ConfigError, match=r"^env\.name: got 'C'; allowed one of A, B \(backend toy\)$"):
            fn()
    assert calls == {"spec": 1, "build": 1}                 # bad input builds nothing


def test_specs_are_computed_without_building_an_env_and_match_the_built_env():
    cases = [("jax", "CartPole-v1", None), ("jax", "Breakout-MinAtar", None), ("jax", "QSharpTree-v0", None),
             ("pool", "CartPole-v1", None), ("pool", "QSharpChain-v0", None)]
    if not atari.missing_packages("ale"):
        cases += [("ale", "Pong", AtariOptions()), ("ale", "Breakout", AtariOptions(preset="machado")),
                  ("ale", "Breakout", AtariOptions(preset="atari100k", max_episode_steps=25))]
    first = PoolEnv("CartPole-v1", 1, 1).instance
    specs = [backend(b).spec(name, o) for b, name, o in cases]
    assert PoolEnv("CartPole-v1", 1, 1).instance == first + 1       # no pool was built in between
    for (b, name, o), spec in zip(cases, specs):
        assert backend(b).spec(name, o) is spec                       # cached
        env = backend(b).make(name, 1, 2, o)
        assert env.spec == spec and env.traits == backend(b).traits and (env.members, env.envs) == (1, 2), (b, name)
    assert backend("pool").spec("QSharpChain-v0") == backend("jax").spec("QSharpChain-v0")


@needs_ale
def test_an_atari_rom_is_read_once_per_game_whatever_the_options():
    ale = backend("ale")
    before = atari._minimal_actions.cache_info().misses
    specs = [ale.spec("Seaquest", AtariOptions(preset=p, max_episode_steps=c))
             for p in ("dopamine", "atari100k", "fast") for c in (0, 25)]
    assert atari._minimal_actions.cache_info().misses - before <= 1
    assert {s.num_actions for s in specs} == {18} and {s.max_episode_steps for s in specs} == {27_000, 25}
    assert ale.spec("Seaquest", AtariOptions(preset="machado")).num_actions == 18


def test_the_string_functions_are_the_registry():
    for b in ("jax", "pool"):
        assert env_spec("CartPole-v1", b) is backend(b).spec("CartPole-v1")
        assert type(make_env("CartPole-v1", 1, 1, b)) is type(backend(b).make("CartPole-v1", 1, 1))
    if not atari.missing_packages("ale"):
        assert env_spec("Pong", "ale", "fast") is backend("ale").spec("Pong", AtariOptions(preset="fast"))


# ---- the host-pool base ---------------------------------------------------------------------------

class _Ids(HostPoolEnv):
    """A toy host pool: environment i observes its env id i; a step returns the actions + 1."""

    def __init__(self, members, envs):
        super().__init__(EnvSpec("Ids", (1,), jnp.float32, 2, 10), members, envs, label="Ids()",
                         factory="Ids(members, envs)")
        self.barriers = 0

    def barrier(self):
        self.barriers += 1
        super().barrier()

    def reset(self, keys):
        self.seeds = self.host_seeds(keys)
        return None, jnp.asarray(self.unflatten(np.arange(self.members * self.envs, dtype=np.float32), (1,)))

    def step(self, state, actions, keys):
        state, actions = self.guard(state, actions, keys)
        return state, self.unflatten(actions.reshape(-1) + 1)


class _Ids31(_Ids):
    seed_bits = 31


def test_host_pool_seeds_layout_and_barrier():
    M, E = 2, 3
    env = _Ids(M, E)
    keys = _keys(0, (M, E))
    _, obs = env.reset(keys)
    assert env.barriers == 1 and env.seeds.shape == (M * E,)
    np.testing.assert_array_equal(obs[..., 0], np.arange(M * E).reshape(M, E))   # env (m, e) is id m·E + e
    wide, narrow = seeds_from_keys(keys), seeds_from_keys(keys, bits=31)
    for m in range(M):
        for e in range(E):
            assert env.seeds[m * E + e] == wide[m, e]
    env31 = _Ids31(M, E)
    env31.reset(keys)
    assert env31.seeds.tolist() == narrow.reshape(-1).tolist()
    with pytest.raises(ValueError, match=r"^_Ids\.reset: keys must have batch shape \[2, 3\], got \[3, 2\]$"):
        env.reset(_keys(0, (E, M)))
    with pytest.raises(TypeError, match=r"^_Ids\.reset is a host call"):
        jax.jit(env.reset)(keys)
    assert env.barriers == 1                                  # refused before waiting


def test_host_pool_guard_refuses_vmap_and_bad_actions():
    M, E = 2, 3
    env = _Ids(M, E)
    acts = jnp.zeros((M, E), jnp.int32)
    _, out = jax.jit(env.step)(None, acts, None)
    np.testing.assert_array_equal(out, np.ones((M, E)))
    with pytest.raises(PoolVmapError, match=r"^Ids\(\) cannot be vmapped: a host pool steps all its environments "
                                            r"in one call; build one Ids\(members, envs\) for the whole") as err:
        jax.vmap(lambda a: env.step(None, a, None))(jnp.zeros((4, M, E), jnp.int32))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"^_Ids\.step: actions must have shape \[2, 3\], got \[6\]$"):
        env.step(None, jnp.zeros((M * E,), jnp.int32), None)
    for field, members, envs in (("members", 0, 1), ("envs", 1, True), ("envs", 1, 2.0)):
        with pytest.raises(ConfigError, match=rf"^{field}: got .*; allowed an integer >= 1$"):
            _Ids(members, envs)
