"""Experiment configuration: TOML file + `--set` overrides -> one validated `Experiment`.

An experiment file has the sections

  [env]     name, backend (jax | pool), num_envs
  [agent]   name, network/loss/acting choices, the operator hyperparameters
            (alpha, tau, entropic_index, clip_min, lam, eta, ...)
  [train]   total_steps, chunk_steps, replay/optimizer settings, learning_rate, gamma,
            epsilon schedule, seeds (a count N -> seeds 0..N-1, or an explicit list)
  [eval]    the evaluation protocol (mode, episodes, envs, epsilon, final_episodes) and the
            score rule (score, score_k)
  [sweep]   "section.key" = [values ...]   (nested tables `[sweep.agent] alpha = [...]`
            are the same thing). The product of the swept lists x seeds is ONE population.
  [output]  checkpoint_every (chunks), if_exists ("refuse" | "new_subdir"), sinks (csv, tensorboard,
            wandb: klrl.tracking), wandb_project, wandb_entity

This module is a walker: it knows no key of its own. Every key, its section, type, default
and rule come from the declarations it walks (klrl.sections): the engine's sections
(`klrl.static.StaticConfig`), its traced hyperparameters (`klrl.static.HPARAM_TABLE`), the
plumbing's [output] section (`OutputConfig`) and `train.seeds` (a count or a list). Unknown
sections and keys, wrong types and out-of-range values raise `ConfigError` with one line
naming the key, the value and what is allowed, before anything is compiled or written.
`build_config` / `load_config` read any other `Sections` file (the tabular experiment's) by
the same code path.

Only traced hyperparameters may be swept inside a population. Two static keys may be swept
across populations: `agent.name` (one compiled population per agent, one after the other, in
one run directory) and `env.name` (one run directory per env, `<out>/<env>/`, each holding the
populations of every agent; klrl.runner). A game's run is exactly the run of the same file with
`--set env.name=<env>` (same resolved config and hash). Any other static field changes shapes
or the compiled program and is rejected.

Keys that moved keep working under their old names in files and `--set` (klrl.config_hash's
`RENAMED`, e.g. `train.eval_mode` -> `eval.mode`). `Experiment.config_hash` covers only the
values that differ from the defaults, plus the schema version (klrl.config_hash).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence

from klrl import config_hash as hashing
from klrl import placement
from klrl.errors import ConfigError
from klrl.output import OutputSection
from klrl.sections import Hparam, Section, Sections, choice, ranged, setting

SWEEP = "sweep"
SEEDS = "train.seeds"
# Keys that belong to the plumbing and are no section's field (their defaults): the seeds, and
# the device count (klrl.placement: a property of the machine, recorded but not hashed).
PLUMBING_KEYS: dict[str, Any] = {SEEDS: 3, placement.DEVICES: placement.AUTO}
# The static keys a sweep may list: one compiled population per agent, one run per env.
AGENT_NAME = "agent.name"
ENV_NAME = "env.name"


@dataclass(frozen=True)
class OutputConfig(OutputSection):
    """[output] of `klrl train`: the output-directory policy, the checkpoint period and the
    trackers the rows also go to (klrl.tracking; metrics.csv is always written)."""

    SECTION: ClassVar[str] = "output"
    checkpoint_every: int = ranged(1, lo=1, doc="chunks between checkpoints (and one at the end)")
    sinks: tuple[str, ...] = choice(("csv",), ("csv", "tensorboard", "wandb"),
                                    doc="where each chunk's rows go: csv (always) and any of tensorboard, wandb")
    wandb_project: str = setting("klrl", doc="the W&B project of the tracked runs")
    wandb_entity: str = setting("", doc="the W&B entity (user or team); empty: the account's default")

    def unused(self) -> tuple[str, ...]:
        """The tracker keys are recorded in config.json only when a tracker is chosen (runs
        recorded before they existed keep their config.json)."""
        keys = () if "wandb" in self.sinks else ("wandb_project", "wandb_entity")
        return keys if set(self.sinks) - {"csv"} else ("sinks", *keys)


# --------------------------------------------------------------------------------------
# The generic walker: TOML file, `--set` overrides, sections.


def read_toml(path: str) -> dict[str, Any]:
    """A TOML file's tables, or a one-line ConfigError."""
    if not os.path.isfile(path):
        raise ConfigError(f"config: got {path!r}; allowed an existing TOML file")
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config: got {path!r} ({str(err).splitlines()[0]}); allowed valid TOML") from None


_flatten = hashing.flatten


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


def split_document(raw: Mapping[str, Any], overrides: Sequence[str], sections: Sequence[str],
                   sweep: str | None = None, renamed: Mapping[str, str] | None = None
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(flat "section.key" -> value, flat swept key -> values) from a parsed TOML document and
    `--set` overrides (applied in order; `--set k=v` replaces a sweep over k by one value).
    `renamed` (old key -> new key) lets the document and the overrides use old names."""
    renamed = renamed or {}
    raw = copy.deepcopy(dict(raw))
    for sec in raw:
        if sec not in sections:
            raise ConfigError(f"{sec}: got an unknown section; allowed {', '.join(sections)}")
        if not isinstance(raw[sec], dict):
            raise ConfigError(f"{sec}: got {raw[sec]!r}; allowed a table [{sec}]")
    base = {k: v for s, t in raw.items() if s != sweep for k, v in _flatten(t, s + ".").items()}
    swept = _flatten(raw.get(sweep, {})) if sweep else {}
    base, swept = hashing.rename(base, renamed), hashing.rename(swept, renamed)
    for text in overrides:
        key, value = parse_override(text)
        if sweep and key.startswith(sweep + "."):
            name = key[len(sweep) + 1:]
            swept[renamed.get(name, name)] = value
        else:
            key = renamed.get(key, key)
            base[key] = value
            swept.pop(key, None)
    return base, swept


def check_known(key: str, known: Mapping[str, Any] | set, name: str | None = None) -> None:
    """ConfigError unless `name` (default: `key`) is a known key; the message lists the keys
    of its section (all keys if the section is unknown)."""
    name = key if name is None else name
    if name not in known:
        sec = name.split(".")[0]
        near = sorted(k for k in known if k.split(".")[0] == sec) or sorted(known)
        raise ConfigError(f"{key}: got an unknown key; allowed {', '.join(near)}")


def build_sections(classes: Mapping[str, type[Section]], values: Mapping[str, Any]) -> dict[str, Section]:
    """One checked section per class from flat "section.key" values (missing keys: defaults)."""
    tables: dict[str, dict[str, Any]] = {s: {} for s in classes}
    for key, value in values.items():
        sec, _, name = key.partition(".")
        tables[sec][name] = value
    return {s: cls.from_table(tables[s]) for s, cls in classes.items()}


def section_keys(classes: Mapping[str, type[Section]]) -> dict[str, Any]:
    """Flat "section.key" -> default of every field of `classes`."""
    return {f"{s}.{k}": v for s, cls in classes.items() for k, v in cls.defaults().items()}


def build_config(cls: type[Sections], raw: Mapping[str, Any], overrides: Sequence[str] = ()):
    """A `Sections` config (every table a section, no sweep) from a parsed TOML document."""
    classes = cls.section_classes()
    base, _ = split_document(raw, overrides, tuple(classes))
    known = section_keys(classes)
    for key in base:
        check_known(key, known)
    return cls.from_sections(build_sections(classes, base))


def load_config(cls: type[Sections], path: str, overrides: Sequence[str] = ()):
    """Read and check a `Sections` TOML file (nothing is written)."""
    return build_config(cls, read_toml(path), overrides)


# --------------------------------------------------------------------------------------
# The engine's document: its sections, its traced hyperparameters, the plumbing.


@dataclass(frozen=True)
class Schema:
    """What `klrl train` can be configured with (walked, never listed by hand)."""

    static_cls: Any                                # klrl.static.StaticConfig (a Sections)
    hparams: Mapping[str, Hparam]                  # traced hyperparameters: name -> declaration
    hparams_used: Callable[[Any], Sequence[str]]   # StaticConfig -> the names it uses
    validate_static: Callable[[Any], None]         # the engine's rules between sections
    output_cls: Any = OutputConfig

    @property
    def sections(self) -> dict[str, type[Section]]:
        return {**self.static_cls.section_classes(), "output": self.output_cls}

    @property
    def hparam_defaults(self) -> dict[str, float]:
        return {n: float(h.default) for n, h in self.hparams.items()}

    def key_of(self, name: str) -> str:
        """Config key ("section.name") of a traced hyperparameter."""
        return f"{self.hparams[name].section}.{name}"

    def name_of(self, key: str) -> str | None:
        """The traced hyperparameter set by `key` (None for other keys)."""
        sec, _, name = key.partition(".")
        h = self.hparams.get(name)
        return name if h is not None and h.section == sec else None

    def defaults(self) -> dict[str, Any]:
        """Flat dict config key -> default value, for every configurable key."""
        out = section_keys(self.sections)
        out.update({self.key_of(n): v for n, v in self.hparam_defaults.items()})
        out.update(PLUMBING_KEYS)
        return out

    def resolved_defaults(self) -> dict[str, Any]:
        """`defaults()` as a resolved config writes them (tuples as lists, seeds as a list)."""
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in self.defaults().items()}
        out[SEEDS] = list(_check_seeds(out[SEEDS]))
        return out

    def record_hash(self, record: Mapping[str, Any]) -> str | None:
        """Today's hash of the config of a run record (config.json), old records included."""
        return hashing.record_hash(record, self.resolved_defaults())


def engine_schema() -> Schema:
    """The schema of the installed engine (imports klrl.static, hence klrl.agents and klrl.envs)."""
    from klrl import static

    return Schema(static_cls=static.StaticConfig, hparams=dict(static.HPARAM_TABLE),
                  hparams_used=static.hparams_used, validate_static=static.validate)


def _check_seeds(value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ConfigError(f"{SEEDS}: got {value!r}; allowed a positive count or a non-empty list of seeds")
        return tuple(range(value))
    if (
        isinstance(value, list) and value
        and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**31 for s in value)
        and len(set(value)) == len(value)
    ):
        return tuple(value)
    raise ConfigError(
        f"{SEEDS}: got {value!r}; allowed a positive count or a non-empty list of distinct seeds in [0, 2^31)"
    )


@dataclass(frozen=True)
class Experiment:
    """A validated experiment: base values of every key, the sweep, the seeds."""

    values: dict[str, Any]                 # flat "section.key" -> value (every key)
    sweep: dict[str, list]                 # flat "section.key" -> values (traced hparams only)
    agents: tuple[str, ...]                # one population per agent, in this order
    seeds: tuple[int, ...]
    schema: Schema = field(repr=False, compare=False)
    static: Any = field(default=None, repr=False, compare=False)   # StaticConfig of agents[0]
    envs: tuple[str, ...] = ()             # a sweep over env.name: one run per env; () = none

    # --- views -------------------------------------------------------------------------
    def resolved(self) -> dict[str, Any]:
        """Fully resolved config as nested JSON-able dict (what config.json stores)."""
        out: dict[str, Any] = {s: {} for s in self.schema.sections}
        for key, val in sorted(self.values.items()):
            sec, _, k = key.partition(".")
            out[sec][k] = list(val) if isinstance(val, tuple) else val
        out["train"]["seeds"] = list(self.seeds)
        if out["train"].get("devices") == placement.AUTO:    # as in the records made before the key
            out["train"].pop("devices")
        out["agent"]["name"] = self.agents[0] if len(self.agents) == 1 else list(self.agents)
        for s in self.schema.static_cls.section_classes():
            for k in self.static.section(s).unused():
                out[s].pop(k, None)
        output = self.schema.output_cls(**{k: self.values[f"output.{k}"] for k in self.schema.output_cls.specs()})
        for k in output.unused():
            out["output"].pop(k, None)
        # An agent's own section is recorded only when one of the run's agents reads it.
        for s in set.intersection(*(set(self.static_config(a).unused_sections()) for a in self.agents)):
            out.pop(s, None)
        out[SWEEP] = {k: list(v) for k, v in sorted(self.sweep.items())}
        if len(self.agents) > 1:
            out[SWEEP][AGENT_NAME] = list(self.agents)
        if self.envs:
            out["env"]["name"] = list(self.envs)
            out[SWEEP][ENV_NAME] = list(self.envs)
        return out

    def config_hash(self) -> str:
        """sha256 of the resolved values that differ from the defaults and the schema version,
        excluding [output] (where/how often to write); klrl.config_hash."""
        return hashing.resolved_hash(self.resolved(), self.schema.resolved_defaults())

    def for_env(self, name: str) -> "Experiment":
        """One env's experiment of a sweep over env.name (what `--set env.name=<name>` gives)."""
        values = {**self.values, ENV_NAME: name}
        return dataclasses.replace(self, values=values, envs=(), static=self.static.replace(env={"name": name}))

    def static_config(self, agent: str):
        """The engine's StaticConfig for one agent's population."""
        if self.static.agent.name == agent:
            return self.static
        return self.static.replace(agent={"name": agent})

    def hparams_used(self, agent: str) -> frozenset:
        """Names of the traced hyperparameters that influence this agent's population (the
        engine says, from the static config: e.g. ε-schedule values only with ε-greedy acting)."""
        return frozenset(self.schema.hparams_used(self.static_config(agent)))

    def hparam_base(self) -> dict[str, float]:
        """Base (unswept) value of every traced hyperparameter."""
        return {n: float(self.values[self.schema.key_of(n)]) for n in self.schema.hparams}

    def swept_hparams(self) -> dict[str, list[float]]:
        """Traced hyperparameter name -> swept values (ordered as in the config)."""
        return {self.schema.name_of(k): list(v) for k, v in self.sweep.items()}

    def per_env(self) -> list["Experiment"]:
        """The experiment of each env of a sweep over env.name (itself when there is none)."""
        return [self.for_env(e) for e in self.envs] if self.envs else [self]

    @property
    def checkpoint_every(self) -> int:
        return int(self.values["output.checkpoint_every"])


def build_experiment(raw: Mapping[str, Any], overrides: Sequence[str] = (), schema: Schema | None = None) -> Experiment:
    """Validate a parsed TOML document plus `--set` overrides into an `Experiment`."""
    schema = schema or engine_schema()
    base, sweep = split_document(raw, overrides, (*schema.sections, SWEEP), sweep=SWEEP, renamed=hashing.RENAMED)
    defaults = schema.defaults()
    for key in base:
        check_known(key, defaults)
    for k in sweep:
        check_known(f"{SWEEP}.{k}", defaults, k)

    # A sweep over env.name: the base config is its first env's (a file need not name one).
    if isinstance(sweep.get(ENV_NAME), list) and sweep[ENV_NAME]:
        base[ENV_NAME] = sweep[ENV_NAME][0]
    # Every section checks itself; then the traced hyperparameters and the seeds.
    hparam_keys = {schema.key_of(n): n for n in schema.hparams}
    sections = build_sections(schema.sections, {k: v for k, v in base.items()
                                                if k not in hparam_keys and k not in PLUMBING_KEYS})
    values: dict[str, Any] = {f"{s}.{k}": getattr(sec, k) for s, sec in sections.items() for k in sec.specs()}
    for key, name in hparam_keys.items():
        h = schema.hparams[name]
        values[key] = h.check(key, base.get(key, h.default))
    seeds = _check_seeds(base.get(SEEDS, PLUMBING_KEYS[SEEDS]))
    values[SEEDS] = list(seeds)
    values[placement.DEVICES] = placement.check_devices(base.get(placement.DEVICES, placement.AUTO))

    # The sweep: agent.name (one population each), env.name (one run each), traced hyperparameters.
    agents = (sections["agent"].name,)
    envs: tuple[str, ...] = ()
    name_spec = schema.sections["agent"].specs()["name"]
    clean_sweep: dict[str, list] = {}
    for k, vals in sweep.items():
        skey = f"{SWEEP}.{k}"
        if not isinstance(vals, list):
            raise ConfigError(f"{skey}: got {vals!r}; allowed a list of values")
        if not vals:
            raise ConfigError(f"{skey}: got []; allowed a non-empty list (an empty sweep makes an empty grid)")
        if k == SEEDS:
            raise ConfigError(f"{skey}: got {vals!r}; allowed {SEEDS} = N or [seeds] outside [{SWEEP}] "
                              "(the seeds always multiply the grid)")
        if k == AGENT_NAME:
            agents = tuple(name_spec.check(skey, a) for a in vals)
            if len(set(agents)) != len(agents):
                raise ConfigError(f"{skey}: got {vals!r}; allowed distinct agent names")
            continue
        if k == ENV_NAME:
            envs = tuple(schema.sections["env"].specs()["name"].check(skey, e) for e in vals)
            if len(set(envs)) != len(envs):
                raise ConfigError(f"{skey}: got {vals!r}; allowed distinct env names")
            continue
        if k not in hparam_keys:
            traced = ", ".join(sorted(hparam_keys))
            raise ConfigError(
                f"{skey}: got a sweep over a static setting (it changes shapes or the compiled program); "
                f"allowed {AGENT_NAME}, {ENV_NAME} or a traced hyperparameter: {traced}"
            )
        checked = [schema.hparams[hparam_keys[k]].check(skey, v) for v in vals]
        if len(set(checked)) != len(checked):
            raise ConfigError(f"{skey}: got {vals!r}; allowed distinct values")
        clean_sweep[k] = checked

    values[AGENT_NAME] = agents[0]
    static_sections = {s: sections[s] for s in schema.static_cls.section_classes()}
    static = schema.static_cls.from_sections(static_sections)
    if static.agent.name != agents[0]:
        static = static.replace(agent={"name": agents[0]})
    exp = Experiment(values=values, sweep=clean_sweep, agents=agents, seeds=seeds, schema=schema, static=static,
                     envs=envs)
    for one in exp.per_env():  # the engine's rules between sections, still before compiling
        for agent in agents:
            schema.validate_static(one.static_config(agent))
    return exp


def load_experiment(path: str, overrides: Sequence[str] = (), schema: Schema | None = None) -> Experiment:
    """Read and validate an experiment TOML file (nothing is written)."""
    return build_experiment(read_toml(path), overrides, schema)
