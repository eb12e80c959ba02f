"""Experiment configuration: TOML file + `--set` overrides -> one validated `Experiment`.

An experiment file has the sections

  [env]     name, backend (jax | pool), num_envs
  [agent]   name, network/loss/acting choices, the operator hyperparameters
            (alpha, tau, entropic_index, clip_min, lam, eta, ...)
  [train]   total_steps, chunk_steps, replay/optimizer settings, learning_rate, gamma,
            epsilon schedule, seeds (a count N -> seeds 0..N-1, or an explicit list)
  [sweep]   "section.key" = [values ...]   (nested tables `[sweep.agent] alpha = [...]`
            are the same thing). The product of the swept lists x seeds is ONE population.
  [output]  checkpoint_every (chunks), if_exists ("refuse" | "new_subdir")

Every field of `klrl.train.StaticConfig` and every entry of `klrl.train.HPARAMS` has exactly
one config key (`KEY_SECTIONS` says which section; fields the engine adds later land in
[train]). Unknown keys, wrong types and out-of-range values raise `ConfigError` with one
line naming the key, the value and what is allowed, before anything is compiled or written.

Only traced hyperparameters (HPARAMS) may be swept inside a population. The one exception
is `agent.name`: a sweep over it runs one compiled population per agent, one after the
other. Any other static field changes shapes or the compiled program and is rejected.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from klrl.errors import ConfigError

SECTIONS = ("env", "agent", "train", "sweep", "output")

# StaticConfig field / HPARAMS name -> (section, config key). Names not listed here are
# mapped to [train] under their own name (so a field the engine adds is never unreachable).
_KEY_OVERRIDES = {
    "env": ("env", "name"),
    "env_backend": ("env", "backend"),
    "agent": ("agent", "name"),
}
_AGENT_SECTION = {
    "torso", "obs_scale", "hidden", "loss", "acting", "num_atoms", "v_min", "v_max", "consistent_weight",
    "alpha", "tau", "entropic_index", "clip_min", "lam", "eta", "softmax_temperature",
    # qsharp: the fixed reference policy and Q♯'s critic training mode
    "reference", "reference_run", "reference_member", "reference_temperature", "reference_epsilon",
    "qsharp_mode", "qsharp_switch_horizon",
}
_ENV_SECTION = {"num_envs"}

# Keys that belong to the plumbing, not to the engine.
PLUMBING_KEYS: dict[str, Any] = {
    "train.seeds": 3,
    "output.checkpoint_every": 1,
    "output.if_exists": "refuse",
}
IF_EXISTS = ("refuse", "new_subdir")

# Allowed values of the engine's string-valued static fields (documented in the contract).
_CHOICES = {
    "loss": ("huber", "l2"),
    "target_update": ("hard", "polyak"),
    "acting": ("epsilon_greedy", "softmax"),
    "replay_mode": ("per-member", "shared"),
    "replay_store": ("frames", "transitions"),
    "eval_mode": ("episodes", "concurrent"),
    "torso": ("mlp", "minatar_cnn", "nature_cnn"),
    "env_backend": ("jax", "pool"),
}

# Ranges of the traced hyperparameters: name -> (low, high, low_inclusive, high_inclusive).
_HPARAM_RANGES = {
    "learning_rate": (0.0, math.inf, False, False),
    "gamma": (0.0, 1.0, True, True),
    "adam_eps": (0.0, math.inf, False, False),
    "alpha": (0.0, 1.0, True, True),
    "tau": (0.0, math.inf, False, False),
    "entropic_index": (1.0, math.inf, True, False),
    "clip_min": (-math.inf, 0.0, False, True),
    "lam": (0.0, math.inf, True, False),
    "eta": (0.0, math.inf, False, False),
    "epsilon_start": (0.0, 1.0, True, True),
    "epsilon_end": (0.0, 1.0, True, True),
    "epsilon_fraction": (0.0, 1.0, True, True),
    "polyak": (0.0, 1.0, False, True),
    "softmax_temperature": (0.0, math.inf, False, False),
}
# Positive-integer static fields (everything else integer-valued must be >= 0).
_POSITIVE_INTS = {
    "num_envs", "total_steps", "chunk_steps", "buffer_size", "batch_size", "update_every",
    "target_update_every", "eval_episodes", "eval_envs",
}


# --------------------------------------------------------------------------------------
# The schema: what the engine exposes (klrl.train, klrl.agents, klrl.envs).


@dataclass(frozen=True)
class Schema:
    """What can be configured: the engine's static fields, hparams, agents and envs."""

    static_defaults: Mapping[str, Any]          # StaticConfig field -> default
    hparam_defaults: Mapping[str, float]        # HPARAMS
    agents: Sequence[str]
    envs: Sequence[str]
    agent_hparams: Mapping[str, frozenset]      # agent -> names of HPARAMS it may use
    static_cls: Any = None                      # StaticConfig class (None in unit tests)
    hparams_used: Any = None                    # StaticConfig -> names it uses (engine's)
    validate_static: Any = None                 # the engine's own StaticConfig check

    def key_of(self, name: str) -> str:
        """Config key ("section.key") of a StaticConfig field or HPARAMS name."""
        if name in _KEY_OVERRIDES:
            sec, key = _KEY_OVERRIDES[name]
            return f"{sec}.{key}"
        if name in _AGENT_SECTION:
            return f"agent.{name}"
        if name in _ENV_SECTION:
            return f"env.{name}"
        return f"train.{name}"

    def defaults(self) -> dict[str, Any]:
        """Flat dict config key -> default value, for every configurable key."""
        out = {self.key_of(n): v for n, v in self.static_defaults.items()}
        out.update({self.key_of(n): float(v) for n, v in self.hparam_defaults.items()})
        out.update(PLUMBING_KEYS)
        return out

    def name_of(self, key: str) -> str | None:
        """Inverse of key_of (None for plumbing keys)."""
        for n in list(self.static_defaults) + list(self.hparam_defaults):
            if self.key_of(n) == key:
                return n
        return None


def _uses_of(agent_obj: Any, all_hparams: Sequence[str]) -> frozenset:
    """Names of HPARAMS an agent uses; all of them if the agent does not say."""
    for attr in ("hparams", "HPARAMS", "uses", "hparam_names"):
        val = getattr(agent_obj, attr, None)
        if val is None and isinstance(agent_obj, Mapping):
            val = agent_obj.get(attr)
        if val is not None:
            return frozenset(val)
    return frozenset(all_hparams)


def engine_schema() -> Schema:
    """The schema of the installed engine (imports klrl.train, klrl.agents, klrl.envs)."""
    from klrl import agents as agents_mod
    from klrl import envs as envs_mod
    from klrl import train as train_mod

    static_defaults = {}
    for f in dataclasses.fields(train_mod.StaticConfig):
        if f.default is not dataclasses.MISSING:
            static_defaults[f.name] = f.default
        else:
            static_defaults[f.name] = f.default_factory()  # type: ignore[misc]
    hparams = dict(train_mod.HPARAMS)
    common = frozenset(getattr(train_mod, "COMMON_HPARAMS", {}))
    agent_hparams = {name: common | _uses_of(obj, list(hparams)) for name, obj in agents_mod.AGENTS.items()}
    return Schema(
        static_defaults=static_defaults,
        hparam_defaults=hparams,
        agents=tuple(agents_mod.AGENTS),
        envs=tuple(envs_mod.ENVS),
        agent_hparams=agent_hparams,
        static_cls=train_mod.StaticConfig,
        hparams_used=getattr(train_mod, "hparams_used", None),
        validate_static=getattr(train_mod, "validate", None),
    )


# --------------------------------------------------------------------------------------
# Parsing.


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """`section.key=value` -> (key, value); the value is read as a TOML value, and taken as
    a plain string if it is not one (so `env.name=Breakout-MinAtar` needs no quotes)."""
    if "=" not in text:
        raise ConfigError(f"--set: got {text!r}; allowed SECTION.KEY=VALUE")
    key, _, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    parts = key.split(".")
    if len(parts) < 2 or not all(p.strip() for p in parts) or not raw:
        raise ConfigError(f"--set: got {text!r}; allowed SECTION.KEY=VALUE")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def _describe(value: Any) -> str:
    return repr(value) if not isinstance(value, str) else repr(value)


def _check_type(key: str, value: Any, default: Any) -> Any:
    """Coerce `value` to the type of `default` or raise ConfigError."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: got {_describe(value)}; allowed true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: got {_describe(value)}; allowed an integer")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: got {_describe(value)}; allowed a number")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{key}: got {value!r}; allowed a finite number")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{key}: got {_describe(value)}; allowed a string")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
        ):
            raise ConfigError(f"{key}: got {_describe(value)}; allowed a non-empty list of positive integers")
        return tuple(value)
    return value


def _check_range(key: str, name: str, value: float) -> None:
    lo, hi, lo_inc, hi_inc = _HPARAM_RANGES.get(name, (-math.inf, math.inf, False, False))
    ok_lo = value >= lo if lo_inc else value > lo
    ok_hi = value <= hi if hi_inc else value < hi
    if not (ok_lo and ok_hi):
        lb = "[" if lo_inc else "("
        rb = "]" if hi_inc else ")"
        raise ConfigError(f"{key}: got {value!r}; allowed {lb}{lo:g}, {hi:g}{rb}")


@dataclass(frozen=True)
class Experiment:
    """A validated experiment: base values of every key, the sweep, the seeds."""

    values: dict[str, Any]                 # flat "section.key" -> value (every key)
    sweep: dict[str, list]                 # flat "section.key" -> values (traced hparams only)
    agents: tuple[str, ...]                # one population per agent, in this order
    seeds: tuple[int, ...]
    schema: Schema = field(repr=False, compare=False)

    # --- views -------------------------------------------------------------------------
    def resolved(self) -> dict[str, Any]:
        """Fully resolved config as nested JSON-able dict (what config.json stores)."""
        out: dict[str, Any] = {s: {} for s in SECTIONS if s != "sweep"}
        for key, val in sorted(self.values.items()):
            sec, _, k = key.partition(".")
            out[sec][k] = list(val) if isinstance(val, tuple) else val
        out["train"]["seeds"] = list(self.seeds)
        out["agent"]["name"] = self.agents[0] if len(self.agents) == 1 else list(self.agents)
        out["sweep"] = {k: list(v) for k, v in sorted(self.sweep.items())}
        if len(self.agents) > 1:
            out["sweep"]["agent.name"] = list(self.agents)
        return out

    def config_hash(self) -> str:
        """sha256 of the resolved config, excluding [output] (where/how often to write)."""
        res = self.resolved()
        res.pop("output", None)
        blob = json.dumps(res, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def static_config(self, agent: str):
        """The engine's StaticConfig for one agent's population."""
        kwargs = {}
        for name in self.schema.static_defaults:
            kwargs[name] = self.values[self.schema.key_of(name)]
        kwargs["agent"] = agent
        if self.schema.static_cls is None:
            return kwargs
        return self.schema.static_cls(**kwargs)

    def hparams_used(self, agent: str) -> frozenset:
        """Names of the HPARAMS that influence this agent's population (the engine says,
        from the static config: e.g. ε-schedule values only with ε-greedy acting)."""
        if self.schema.hparams_used is not None and self.schema.static_cls is not None:
            return frozenset(self.schema.hparams_used(self.static_config(agent)))
        return frozenset(self.schema.agent_hparams.get(agent, self.schema.hparam_defaults))

    def hparam_base(self) -> dict[str, float]:
        """Base (unswept) value of every HPARAMS entry."""
        return {n: float(self.values[self.schema.key_of(n)]) for n in self.schema.hparam_defaults}

    def swept_hparams(self) -> dict[str, list[float]]:
        """HPARAMS name -> swept values (ordered as in the config)."""
        return {self.schema.name_of(k): list(v) for k, v in self.sweep.items()}

    @property
    def checkpoint_every(self) -> int:
        return int(self.values["output.checkpoint_every"])


def _validate_static(values: dict[str, Any], schema: Schema) -> None:
    """Ranges and cross-field rules for the static fields (agent/env checked separately)."""
    for name, default in schema.static_defaults.items():
        key = schema.key_of(name)
        val = values[key]
        if name in _CHOICES and val not in _CHOICES[name]:
            raise ConfigError(f"{key}: got {val!r}; allowed one of {', '.join(_CHOICES[name])}")
        if isinstance(default, int) and not isinstance(default, bool):
            if name in _POSITIVE_INTS and val <= 0:
                raise ConfigError(f"{key}: got {val!r}; allowed a positive integer")
            if val < 0:
                raise ConfigError(f"{key}: got {val!r}; allowed a non-negative integer")
    g = lambda n: values[schema.key_of(n)]  # noqa: E731
    if "num_atoms" in schema.static_defaults and g("num_atoms") < 2:
        raise ConfigError(f"agent.num_atoms: got {g('num_atoms')!r}; allowed an integer >= 2")
    if "v_min" in schema.static_defaults and not g("v_min") < g("v_max"):
        raise ConfigError(f"agent.v_min: got {g('v_min')!r}; allowed a value < agent.v_max ({g('v_max')!r})")
    if g("total_steps") % g("chunk_steps"):
        raise ConfigError(
            f"train.chunk_steps: got {g('chunk_steps')!r}; allowed a divisor of train.total_steps ({g('total_steps')})"
        )
    if g("chunk_steps") % g("num_envs"):
        raise ConfigError(
            f"train.chunk_steps: got {g('chunk_steps')!r}; allowed a multiple of env.num_envs ({g('num_envs')})"
        )
    if "batch_size" in schema.static_defaults and g("batch_size") > g("buffer_size"):
        raise ConfigError(
            f"train.batch_size: got {g('batch_size')!r}; allowed at most train.buffer_size ({g('buffer_size')})"
        )
    if "env.backend" not in values and values["env.name"] not in schema.envs:   # unit-test schemas
        raise ConfigError(f"env.name: got {values['env.name']!r}; allowed one of {', '.join(schema.envs)}")


def _check_agent(key: str, name: Any, schema: Schema) -> str:
    if not isinstance(name, str) or name not in schema.agents:
        raise ConfigError(f"{key}: got {_describe(name)}; allowed one of {', '.join(schema.agents)}")
    return name


def _check_seeds(value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ConfigError(f"train.seeds: got {value!r}; allowed a positive count or a non-empty list of seeds")
        return tuple(range(value))
    if (
        isinstance(value, list) and value
        and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**31 for s in value)
        and len(set(value)) == len(value)
    ):
        return tuple(value)
    raise ConfigError(
        f"train.seeds: got {_describe(value)}; allowed a positive count or a non-empty list of distinct seeds in [0, 2^31)"
    )


def build_experiment(raw: Mapping[str, Any], overrides: Sequence[str] = (), schema: Schema | None = None) -> Experiment:
    """Validate a parsed TOML document plus `--set` overrides into an `Experiment`."""
    schema = schema or engine_schema()
    raw = copy.deepcopy(dict(raw))
    for sec in raw:
        if sec not in SECTIONS:
            raise ConfigError(f"{sec}: got an unknown section; allowed {', '.join(SECTIONS)}")
        if not isinstance(raw[sec], dict):
            raise ConfigError(f"{sec}: got {_describe(raw[sec])}; allowed a table [{sec}]")
    base = {k: v for s, t in raw.items() if s != "sweep" for k, v in _flatten(t, s + ".").items()}
    sweep = _flatten(raw.get("sweep", {}))

    for text in overrides:
        key, value = parse_override(text)
        if key.startswith("sweep."):
            sweep[key[len("sweep."):]] = value
        else:
            base[key] = value
            sweep.pop(key, None)     # --set replaces a swept list with one value

    defaults = schema.defaults()
    for key in list(base) + [f"sweep.{k}" for k in sweep]:
        k = key[len("sweep."):] if key.startswith("sweep.") else key
        if k not in defaults:
            near = ", ".join(sorted(d for d in defaults if d.split(".")[0] == k.split(".")[0])) or ", ".join(sorted(defaults))
            raise ConfigError(f"{key}: got an unknown key; allowed {near}")

    values: dict[str, Any] = dict(defaults)
    for key, val in base.items():
        if key == "train.seeds":
            values[key] = val
            continue
        values[key] = _check_type(key, val, defaults[key])
    if values["output.if_exists"] not in IF_EXISTS:
        raise ConfigError(f"output.if_exists: got {values['output.if_exists']!r}; allowed one of {', '.join(IF_EXISTS)}")
    if values["output.checkpoint_every"] < 1:
        raise ConfigError(f"output.checkpoint_every: got {values['output.checkpoint_every']!r}; allowed a positive integer")
    seeds = _check_seeds(values["train.seeds"])
    values["train.seeds"] = list(seeds)

    # The sweep: agent.name (one population each) or traced hyperparameters only.
    agents = (_check_agent("agent.name", values["agent.name"], schema),)
    clean_sweep: dict[str, list] = {}
    hparam_keys = {schema.key_of(n): n for n in schema.hparam_defaults}
    for k, vals in sweep.items():
        skey = f"sweep.{k}"
        if not isinstance(vals, list):
            raise ConfigError(f"{skey}: got {_describe(vals)}; allowed a list of values")
        if not vals:
            raise ConfigError(f"{skey}: got []; allowed a non-empty list (an empty sweep makes an empty grid)")
        if k == "train.seeds":
            raise ConfigError(f"{skey}: got {_describe(vals)}; allowed train.seeds = N or [seeds] outside [sweep] "
                              "(the seeds always multiply the grid)")
        if k == "agent.name":
            agents = tuple(_check_agent(skey, a, schema) for a in vals)
            if len(set(agents)) != len(agents):
                raise ConfigError(f"{skey}: got {vals!r}; allowed distinct agent names")
            continue
        if k not in hparam_keys:
            traced = ", ".join(sorted(hparam_keys))
            raise ConfigError(
                f"{skey}: got a sweep over a static setting (it changes shapes or the compiled program); "
                f"allowed agent.name or a traced hyperparameter: {traced}"
            )
        checked = [_check_type(skey, v, 0.0) for v in vals]
        for v in checked:
            _check_range(skey, hparam_keys[k], v)
        if len(set(checked)) != len(checked):
            raise ConfigError(f"{skey}: got {vals!r}; allowed distinct values")
        clean_sweep[k] = checked

    for key, name in hparam_keys.items():
        _check_range(key, name, values[key])
    values["agent.name"] = agents[0]
    _validate_static(values, schema)
    exp = Experiment(values=values, sweep=clean_sweep, agents=agents, seeds=seeds, schema=schema)
    if schema.validate_static is not None:
        for agent in agents:       # the engine's own structural checks, still before compiling
            schema.validate_static(exp.static_config(agent))
    return exp


def load_experiment(path: str, overrides: Sequence[str] = (), schema: Schema | None = None) -> Experiment:
    """Read and validate an experiment TOML file (nothing is written)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config: got {path!r}; allowed an existing TOML file")
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config: got {path!r} ({str(err).splitlines()[0]}); allowed valid TOML") from None
    return build_experiment(raw, overrides, schema)
