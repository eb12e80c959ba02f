"""Reference policies π_ref for KL-regularized RL toward a FIXED policy (Q♯, soft Q with prior).

A reference is a pure function `log_probs(params, obs [..., *obs]) -> ln π_ref [..., A]` used
inside the compiled training program, and a host loader `load() -> params` (orbax restore of
the reference run's checkpoint). The parameters are an ARGUMENT of the program (the trainer's
`init` stores them in the TrainState), never constants baked into it.
Kinds (config key `agent.reference`, `klrl.static.AgentConfig`):

- `none`: no reference (agents that need one reject this; no `kl_ref` metric);
- `uniform`: π_ref(a|s) = 1/A;
- `softmax`: π_ref = softmax(Q_ref(s, ·)/T), T = `reference_temperature`;
- `epsilon_greedy`: π_ref = (1 − ε)·1[a = argmax Q_ref(s, ·)] + ε/A, ε = `reference_epsilon`
  (ε > 0, so that KL(π‖π_ref) stays finite).

Q_ref comes from the checkpoint of a run written by `klrl train` (`reference_run`: the run
directory; `reference_member`: which member of its population, numbered as in the run's
config.json `members` table and metrics.csv). The run's env must be this run's env; its
network is rebuilt from its own resolved config (agent, hidden sizes, atoms), and its latest
checkpoint's parameters are read with orbax, without needing the current TrainState layout
(only `state.params` is used). Any problem is a one-line `ConfigError`, raised by `check`
before anything is compiled or written.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from klrl.errors import ConfigError

REFERENCES = ("none", "uniform", "softmax", "epsilon_greedy")


class Reference(NamedTuple):
    kind: str
    log_probs: Callable[[Any, jax.Array], jax.Array]   # (params, obs [..., *obs]) -> ln π_ref [..., A]
    load: Callable[[], Any]                            # host: the parameters (() for uniform)


class _RunInfo(NamedTuple):
    env: str
    agent: str
    local_index: int          # the member's position in its agent's population
    population_size: int
    checkpoint: str           # .../checkpoints/<agent>/<latest step>/state
    static: Any               # the reference run's config (klrl.static.StaticConfig), as recorded


def _fail(field: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{field}: got {value!r}; allowed {allowed}")


def _run_info(run: str, member: int, env: str) -> _RunInfo:
    """Read and check a reference run directory (config.json + checkpoints); no arrays loaded."""
    cfg_path = os.path.join(run, "config.json")
    if not run or not os.path.isfile(cfg_path):
        _fail("agent.reference_run", run, "the directory of a `klrl train` run (holding config.json and "
              "checkpoints/; e.g. `klrl train experiments/qsharp_reference.toml --out DIR`)")
    try:
        with open(cfg_path) as fh:
            record = json.load(fh)
        config, members = record["config"], record["members"]
    except (OSError, ValueError, KeyError):
        _fail("agent.reference_run", run, "a run directory whose config.json was written by `klrl train`")
    ref_env = config["env"]["name"]
    if ref_env != env:
        _fail("agent.reference_run", run, f"a run on env {env!r} (this one was trained on {ref_env!r})")
    if not (isinstance(member, int) and 0 <= member < len(members)):
        _fail("agent.reference_member", member, f"a member index in [0, {len(members)}) of {run!r}")
    # An array task (klrl.tasks) records the whole run's table but trained only `task_members`.
    ran = set(record.get("task_members", [m["member"] for m in members]))
    if member not in ran:
        _fail("agent.reference_member", member, f"a member that {run!r} trained (this array task trained "
              f"{sorted(ran)})")
    agent = members[member]["agent"]
    same = [m for m in members if m["agent"] == agent and m["member"] in ran]
    local = [m["member"] for m in same].index(members[member]["member"])
    ckpt_root = os.path.join(run, "checkpoints", agent)
    steps = sorted(int(d) for d in os.listdir(ckpt_root) if d.isdigit()) if os.path.isdir(ckpt_root) else []
    state_dir = os.path.join(ckpt_root, str(steps[-1]), "state") if steps else ""
    if not steps or not os.path.isdir(state_dir):
        _fail("agent.reference_run", run, f"a run with a saved checkpoint under {ckpt_root!r}")

    return _RunInfo(ref_env, agent, local, len(same), state_dir, _recorded_config(config, agent, ref_env, run))


def _recorded_config(config: dict, agent: str, env: str, run: str):
    """The reference member's StaticConfig, rebuilt from its run's config.json by the schema
    itself: keys the record omits take their defaults, keys this version does not know are
    ignored (only the network's keys matter here)."""
    from klrl.static import StaticConfig

    tables = {}
    for sec, cls in StaticConfig.section_classes().items():
        known = cls.specs()
        tables[sec] = {k: tuple(v) if isinstance(v, list) else v for k, v in config.get(sec, {}).items()
                       if k in known and not isinstance(v, dict)}
    tables["agent"]["name"], tables["env"]["name"] = agent, env
    try:
        return StaticConfig.from_sections(tables)
    except ConfigError as err:
        _fail("agent.reference_run", run, f"a run whose recorded config is valid here ({err})")


def check(cfg) -> None:
    """Check the reference run of a StaticConfig against its env (ConfigError, one line);
    reads only the run's config.json and directory listing. The kind, temperature and ε are
    checked by their section (klrl.static.AgentConfig)."""
    a = cfg.agent
    if a.reference in ("softmax", "epsilon_greedy"):
        info = _run_info(a.reference_run, a.reference_member, cfg.env.name)
        from klrl.agents import AGENTS

        if info.agent not in AGENTS:
            _fail("agent.reference_run", a.reference_run, f"a run of a known agent (its agent is {info.agent!r})")


def _q_network(run: str, member: int, env: str, backend: str, preset: str):
    """(pure Q_ref(params, obs), host loader of the params) of one member of a `klrl train` run."""
    from klrl.agents import AGENTS
    from klrl.envs import env_spec, stacked_shape

    info = _run_info(run, member, env)
    agent = AGENTS[info.agent]
    spec = env_spec(env, backend, preset)
    net = agent.network(info.static, spec.num_actions)

    def load():
        import orbax.checkpoint as ocp

        expected = net.init(jax.random.PRNGKey(0), jnp.zeros(stacked_shape(spec), spec.obs_dtype))
        try:
            restored = ocp.StandardCheckpointer().restore(os.path.abspath(info.checkpoint))
            params_all = restored["learner"]["params"] if "learner" in restored else restored["params"]
        except Exception as err:  # orbax raises many types; all mean "not a readable checkpoint"
            _fail("agent.reference_run", run, f"a readable orbax checkpoint ({type(err).__name__} at {info.checkpoint})")
        params = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)[info.local_index]), params_all)
        shapes = lambda t: jax.tree.map(lambda x: tuple(np.shape(x)), t)  # noqa: E731
        if jax.tree.structure(params) != jax.tree.structure(expected) or shapes(params) != shapes(expected):
            _fail("agent.reference_run", run, f"a checkpoint whose parameters match its config's network "
                  f"(agent {info.agent!r}, hidden {info.static.agent.hidden})")
        return params

    static = info.static
    from klrl.agents.base import bind

    # Agents whose forward pass samples (IQN's quantile fractions) get one fixed key: π_ref is
    # a fixed policy, the same at every call.
    key = jax.random.PRNGKey(0)
    return (lambda params, obs: agent.q_values(agent.forward(bind(net, params), obs, key, static), static)), load


def for_config(cfg) -> Reference | None:
    """The reference policy of a StaticConfig, or None (checks first; loads nothing yet)."""
    a = cfg.agent
    if a.reference == "none":
        return None
    check(cfg)
    from klrl.envs import env_spec

    spec = env_spec(cfg.env.name, cfg.env.backend, cfg.env.preset)
    num_actions = spec.num_actions
    if a.reference == "uniform":
        def log_uniform(params, obs):
            lead = obs.shape[: obs.ndim - len(spec.obs_shape)]
            return jnp.full(lead + (num_actions,), -jnp.log(num_actions), jnp.float32)
        return Reference("uniform", log_uniform, lambda: ())
    q_ref, load = _q_network(a.reference_run, a.reference_member, cfg.env.name, cfg.env.backend, cfg.env.preset)
    cached = functools.lru_cache(maxsize=1)(load)
    if a.reference == "softmax":
        temperature = float(a.reference_temperature)
        return Reference("softmax", lambda p, obs: jax.nn.log_softmax(q_ref(p, obs) / temperature, axis=-1), cached)
    eps = float(a.reference_epsilon)

    def log_eps_greedy(params, obs):
        q = q_ref(params, obs)
        greedy = jax.nn.one_hot(jnp.argmax(q, axis=-1), num_actions, dtype=q.dtype)
        return jnp.log((1.0 - eps) * greedy + eps / num_actions)
    return Reference("epsilon_greedy", log_eps_greedy, cached)


__all__ = ["REFERENCES", "Reference", "check", "for_config"]
