"""The star-graph experiment's config: one TOML file with a table per section, `section.key=value`
overrides, every key checked against its section (a one-line ConfigError naming the field and
what is allowed), resolved to the NamedTuples the pieces take.

    [task]       StarGraphTask: degree, path_length, num_nodes
    [pretrain]   PretrainConfig's fields (π_ref; the task comes from [task])
    [critic]     CriticConfig's fields (the success classifier of the offline round and of Algorithm 1)
    [offline]    posttrain_size, tries, seed (the paper's one offline round)
    [rounds]     RoundsConfig's fields (Algorithm 1)
    [baselines]  methods, seeds, reinforce_lr, and BaselineConfig's other fields (REINFORCE / RPO / DPO)
    [eval]       test_size, top_k, eta (the comparison's η), etas (the frontier), seed
    [run]        parts: which parts to run, in order (PARTS)
"""

from __future__ import annotations

from typing import Any, NamedTuple

from klrl.config import parse_override, read_toml
from klrl.errors import ConfigError
from klrl.stargraph.baselines import METHODS, BaselineConfig
from klrl.stargraph.critic import HEADS, INITS, CriticConfig
from klrl.stargraph.graphs import StarGraphTask
from klrl.stargraph.guidance import GUIDANCES
from klrl.stargraph.pretrain import PretrainConfig
from klrl.stargraph.rounds import RoundsConfig, check_rounds

PARTS = ("pretrain", "oracle", "offline", "rounds", "baselines")


class OfflineSection(NamedTuple):
    posttrain_size: int = 5_000
    tries: int = 8
    seed: int = 0


class BaselinesSection(NamedTuple):
    methods: tuple = METHODS
    seeds: tuple = (0, 1, 2)
    reinforce_lr: float = 1e-5   # the paper's; `lr` (BaselineConfig's) is DPO's and RPO's


class EvalSection(NamedTuple):
    test_size: int = 2_000
    top_k: int = 10
    eta: float = 0.1
    etas: tuple = (0.03, 0.1, 0.3, 1.0)
    seed: int = 0


class RunSection(NamedTuple):
    parts: tuple = PARTS


class Experiment(NamedTuple):
    """The resolved config (`baselines` holds the shared BaselineConfig; method/seed vary)."""

    task: StarGraphTask
    pretrain: PretrainConfig
    critic: CriticConfig
    offline: OfflineSection
    rounds: RoundsConfig
    baselines: BaselinesSection
    baseline: BaselineConfig
    eval: EvalSection
    run: RunSection

    def record(self) -> dict:
        """JSON-ready, one table per section (as the TOML file has them)."""
        out = {name: dict(getattr(self, name)._asdict()) for name in ("task", "critic", "offline", "rounds", "eval",
                                                                       "run")}
        out["pretrain"] = {k: v for k, v in self.pretrain._asdict().items() if k != "task"}
        out["baselines"] = {**{k: v for k, v in self.baseline._asdict().items() if k not in ("method", "seed")},
                            **self.baselines._asdict()}
        return {k: {f: list(v) if isinstance(v, tuple) else v for f, v in t.items()} for k, t in out.items()}


_SECTIONS = {"task": (StarGraphTask(2, 5, 50),), "pretrain": (PretrainConfig(),), "critic": (CriticConfig(),),
             "offline": (OfflineSection(),), "rounds": (RoundsConfig(),),
             "baselines": (BaselinesSection(), BaselineConfig()), "eval": (EvalSection(),), "run": (RunSection(),)}
_HIDDEN = {"pretrain": ("task",), "baselines": ("method", "seed")}
_CHOICES = {("critic", "head"): HEADS, ("critic", "init"): INITS, ("rounds", "guidance"): GUIDANCES,
            ("baselines", "methods"): METHODS, ("run", "parts"): PARTS}


def _typed(section: str, key: str, default: Any, value: Any) -> Any:
    """`value` as the type of `default` (int -> float allowed; lists for tuples), or a ConfigError."""
    want = type(default)
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{section}.{key}: got {value!r}; allowed a list")
        value = tuple(value)
    elif want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise ConfigError(f"{section}.{key}: got {value!r}; allowed a value of type {want.__name__}")
    choices = _CHOICES.get((section, key))
    for v in (value if isinstance(value, tuple) else (value,)) if choices else ():
        if v not in choices:
            raise ConfigError(f"{section}.{key}: got {v!r}; allowed {', '.join(map(str, choices))}")
    return value


def resolve(tables: dict[str, Any]) -> Experiment:
    """An `Experiment` from TOML-like tables (missing keys take their defaults)."""
    for name in tables:
        if name not in _SECTIONS:
            raise ConfigError(f"stargraph config: got section [{name}]; allowed {', '.join(_SECTIONS)}")
    built = {}
    for name, bases in _SECTIONS.items():
        table = dict(tables.get(name, {}))
        fields = [dict(b._asdict()) for b in bases]
        for key, value in table.items():
            home = next((f for f in fields if key in f and key not in _HIDDEN.get(name, ())), None)
            if home is None:
                allowed = sorted(k for f in fields for k in f if k not in _HIDDEN.get(name, ()))
                raise ConfigError(f"{name}.{key}: unknown key; allowed {', '.join(allowed)}")
            home[key] = _typed(name, key, home[key], value)
        built[name] = [type(b)(**f) for b, f in zip(bases, fields)]
    task = built["task"][0]
    return Experiment(task, built["pretrain"][0]._replace(task=task), built["critic"][0], built["offline"][0],
                      built["rounds"][0], built["baselines"][0], built["baselines"][1], built["eval"][0],
                      built["run"][0])


def load_experiment(path: str | None, overrides: list[str] = ()) -> Experiment:
    """The TOML file at `path` (or the defaults), then `section.key=value` overrides."""
    tables = read_toml(path) if path else {}
    for text in overrides:
        key, value = parse_override(text)
        section, _, field = key.partition(".")
        tables.setdefault(section, {})[field] = value
    exp = resolve(tables)
    exp.task.check()
    try:
        check_rounds(exp.rounds, exp.offline.posttrain_size)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return exp


__all__ = ["BaselinesSection", "EvalSection", "Experiment", "OfflineSection", "PARTS", "RunSection",
           "load_experiment", "resolve"]
