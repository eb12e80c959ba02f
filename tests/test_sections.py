"""klrl.sections: self-checking config sections (one rule kind per test) and the composite."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

import pytest

from klrl.errors import ConfigError
from klrl.sections import Hparam, Section, Sections, choice, ranged, section_field

REGISTRY = {"x": 1, "y": 2}


@dataclass(frozen=True)
class Demo(Section):
    SECTION: ClassVar[str] = "demo"
    mode: Literal["fast", "slow"] = "fast"
    kind: str = choice("a", ("a", "b"))
    registered: str = choice("x", lambda: REGISTRY)
    rate: float = ranged(0.5, lo=0.0, hi=1.0, lo_open=True)
    scale: float = ranged(1.0, lo=0.0, lo_open=True)
    count: int = ranged(3, lo=1)
    offset: int = 0
    flag: bool = False
    label: str = ""
    widths: tuple[int, ...] = ranged((4,), lo=1)
    lo: float = -1.0
    hi: float = 1.0

    def check(self) -> None:
        if not self.lo < self.hi:
            self.fail("lo", self.lo, f"< demo.hi ({self.hi!r})")


@dataclass(frozen=True)
class Other(Section):
    SECTION: ClassVar[str] = "other"
    gammas: tuple[float, ...] = ranged((0.9,), lo=0.0, hi=1.0, lo_open=True, hi_open=True)


@dataclass(frozen=True)
class Whole(Sections):
    demo: Demo = section_field(Demo)
    other: Other = section_field(Other)


def _error(**kw) -> str:
    with pytest.raises(ConfigError) as info:
        Demo(**kw)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("demo.") and "; allowed " in msg
    return msg


def test_defaults_are_valid_and_typed():
    d = Demo()
    assert d.widths == (4,) and isinstance(d.rate, float)
    assert Demo.defaults()["count"] == 3


def test_literal_refusal_names_the_allowed_values():
    assert _error(mode="medium") == "demo.mode: got 'medium'; allowed one of fast, slow"
    assert Demo(mode="slow").mode == "slow"


def test_choices_tuple_and_registry_read_at_check_time(monkeypatch):
    assert _error(kind="c") == "demo.kind: got 'c'; allowed one of a, b"
    assert _error(registered="z") == "demo.registered: got 'z'; allowed one of x, y"
    monkeypatch.setitem(REGISTRY, "z", 3)           # a registry filled later (e.g. a new backend)
    assert Demo(registered="z").registered == "z"


def test_range_refusal():
    assert _error(rate=0.0) == "demo.rate: got 0.0; allowed (0, 1]"
    assert _error(rate=1.5) == "demo.rate: got 1.5; allowed (0, 1]"
    assert _error(scale=-2) == "demo.scale: got -2.0; allowed (0, inf)"
    assert _error(count=0) == "demo.count: got 0; allowed an integer >= 1"
    assert Demo(rate=1.0).rate == 1.0                 # closed end


def test_int_accepted_for_float_and_stored_as_float():
    d = Demo(rate=1, scale=3)
    assert d.rate == 1.0 and type(d.rate) is float and type(d.scale) is float
    assert Demo(rate=1) == Demo(rate=1.0) and hash(Demo(rate=1)) == hash(Demo(rate=1.0))


def test_bool_refused_for_int_and_float_and_types_checked():
    assert _error(count=True) == "demo.count: got True; allowed an integer"
    assert _error(offset=1.0) == "demo.offset: got 1.0; allowed an integer"
    assert _error(scale=False) == "demo.scale: got False; allowed a number"
    assert _error(flag=1) == "demo.flag: got 1; allowed true or false"
    assert _error(label=3) == "demo.label: got 3; allowed a string"
    assert _error(scale=float("nan")).startswith("demo.scale: got nan; allowed a finite number")


def test_tuples_from_lists_non_empty_and_ranged_per_element():
    assert Demo(widths=[8, 8]).widths == (8, 8)
    assert _error(widths=[]) == "demo.widths: got []; allowed a non-empty list of integers >= 1"
    assert _error(widths=[8, 0]) == "demo.widths: got [8, 0]; allowed a non-empty list of integers >= 1"
    assert _error(widths=8).startswith("demo.widths: got 8")
    with pytest.raises(ConfigError,
                       match=r"^other.gammas: got \[0.9, 1.0\]; allowed a non-empty list of numbers in \(0, 1\)$"):
        Other(gammas=[0.9, 1.0])


def test_check_hook_runs_after_the_field_rules():
    assert _error(lo=2) == "demo.lo: got 2.0; allowed < demo.hi (1.0)"
    # a field error comes first (the hook only sees valid fields)
    assert _error(lo="x", hi=0.0) == "demo.lo: got 'x'; allowed a number"


def test_frozen_and_hashable():
    d = Demo()
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.count = 5
    assert hash(d) == hash(Demo()) and {d: 1}[Demo(widths=[4])] == 1
    assert hash(Whole()) == hash(Whole(demo={}, other={}))


def test_from_table_lists_the_allowed_keys():
    assert Demo.from_table({"count": 2}).count == 2
    with pytest.raises(ConfigError,
                       match=r"^demo.cnt: got an unknown key; allowed demo.count, demo.flag, .*demo.widths$"):
        Demo.from_table({"cnt": 2})


def test_sections_composite():
    w = Whole(demo={"count": 7})
    assert isinstance(w.demo, Demo) and w.demo.count == 7 and w.other == Other()
    r = w.replace(demo={"rate": 0.25}, other={"gammas": [0.5]})
    assert (r.demo.count, r.demo.rate, r.other.gammas) == (7, 0.25, (0.5,))
    with pytest.raises(ConfigError, match="^demo.rate: got 2.0"):
        w.replace(demo={"rate": 2})                   # a replaced section is checked again
    assert w.to_dict()["other"] == {"gammas": [0.9]}
    assert list(Whole.section_classes()) == ["demo", "other"]
    with pytest.raises(TypeError):
        Whole(demo=Other())


def test_hparam_declaration():
    h = Hparam("agent", 0.9, lo=0.0, hi=1.0)
    assert h.check("agent.alpha", 1) == 1.0
    with pytest.raises(ConfigError, match=r"^sweep.agent.alpha: got -1.0; allowed \[0, 1\]$"):
        h.check("sweep.agent.alpha", -1)
    with pytest.raises(ConfigError, match=r"^agent.clip_min: got 0.5; allowed \(-inf, 0\]$"):
        Hparam("agent", -1.0, hi=0.0).check("agent.clip_min", 0.5)


def test_bad_declarations_are_type_errors():
    @dataclass(frozen=True)
    class NoDefault(Section):
        SECTION: ClassVar[str] = "x"
        n: int

    @dataclass(frozen=True)
    class Unsupported(Section):
        SECTION: ClassVar[str] = "x"
        d: dict = None

    with pytest.raises(TypeError, match="needs a default"):
        NoDefault(1)
    with pytest.raises(TypeError, match="unsupported"):
        Unsupported()


def test_engine_sections_declare_every_rule_once():
    """The engine's sections (klrl.static) are Sections like any other: defaults valid,
    TOML keys as field names, choices from the registries."""
    from klrl import envs
    from klrl.agents import AGENTS
    from klrl.static import AgentConfig, EnvConfig, StaticConfig, TrainConfig

    cfg = StaticConfig()
    assert (cfg.env, cfg.agent, cfg.train) == (EnvConfig(), AgentConfig(), TrainConfig())
    assert set(EnvConfig.specs()) == {"name", "backend", "num_envs", "preset"}
    assert EnvConfig.specs()["preset"].rule.allowed_choices() == tuple(envs.PRESETS)
    assert EnvConfig.specs()["backend"].rule.allowed_choices() == tuple(envs.BACKENDS)
    assert AgentConfig.specs()["name"].rule.allowed_choices() == tuple(AGENTS)
    with pytest.raises(ConfigError, match=r"^train.batch_size: got 256; allowed at most train.buffer_size \(100\)$"):
        StaticConfig(train={"buffer_size": 100, "batch_size": 256})
