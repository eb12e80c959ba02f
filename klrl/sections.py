"""Declaring a config section: a frozen dataclass, one per TOML table, that validates itself.

A section's fields carry their rules next to them:

- the annotation gives the type: `bool`, `int`, `float` (an int is accepted and stored as a
  float; non-finite numbers are refused), `str`, or `tuple[int, ...]` / `tuple[float, ...]`
  (a non-empty TOML list, stored as a tuple so the section stays hashable);
- `typing.Literal["a", "b"]` gives the allowed strings;
- `choice(default, choices)` gives them from a registry filled at import time (a tuple, a
  mapping's keys, or a callable returning either; read at every check);
- `ranged(default, lo=, hi=, lo_open=, hi_open=)` gives an interval (per element for tuples).

`Section.__post_init__` checks every field in declaration order (type, choices, range), then
calls the class's `check(self)` hook for rules between fields of the section. Every error is
one line, `ConfigError("section.key: got VALUE; allowed ...")`, the section being the class's
`SECTION`. `Sections` is a frozen dataclass whose fields are sections (a whole config file);
`Hparam` declares a traced hyperparameter (a float with a range) and the section it is set in.
Nothing here knows about the engine: `klrl.config` walks these declarations to read TOML files.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Mapping, NoReturn

from klrl.errors import ConfigError

_RULE = "klrl.sections.rule"


def fail(key: str, value: Any, allowed: str) -> NoReturn:
    """Raise the one-line ConfigError `key: got VALUE; allowed ALLOWED`."""
    raise ConfigError(f"{key}: got {value!r}; allowed {allowed}")


@dataclass(frozen=True)
class Rule:
    """What a field allows besides its type: an interval and/or a set of choices."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: Any = None          # tuple | Mapping (its keys) | callable returning either
    doc: str = ""

    def allowed_choices(self) -> tuple | None:
        c = self.choices() if callable(self.choices) else self.choices
        return None if c is None else tuple(c)

    def in_range(self, x) -> bool:
        if self.lo is not None and not (x > self.lo if self.lo_open else x >= self.lo):
            return False
        return self.hi is None or (x < self.hi if self.hi_open else x <= self.hi)

    def interval(self) -> str:
        lo = -math.inf if self.lo is None else self.lo
        hi = math.inf if self.hi is None else self.hi
        lb = "(" if self.lo_open or lo == -math.inf else "["
        rb = ")" if self.hi_open or hi == math.inf else "]"
        return f"{lb}{float(lo):g}, {float(hi):g}{rb}"

    def bound_words(self) -> str:
        """' >= 1', ' in [0, 10]', '' (for integers)."""
        if self.lo is not None and self.hi is not None:
            return f" in {self.interval()}"
        if self.lo is not None:
            return f" {'>' if self.lo_open else '>='} {self.lo}"
        if self.hi is not None:
            return f" {'<' if self.hi_open else '<='} {self.hi}"
        return ""

    @property
    def has_range(self) -> bool:
        return self.lo is not None or self.hi is not None


def ranged(default: Any, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False, doc: str = "") -> Any:
    """A field whose value (each element, for a tuple) lies in [lo, hi] (open ends on request)."""
    return field(default=default, metadata={_RULE: Rule(lo, hi, lo_open, hi_open, None, doc)})


def choice(default: str, choices: Any, *, doc: str = "") -> Any:
    """A string field whose allowed values come from a registry (tuple, mapping or callable)."""
    return field(default=default, metadata={_RULE: Rule(choices=choices, doc=doc)})


def setting(default: Any, *, doc: str = "") -> Any:
    """A field with no rule beyond its type (a place for its documentation)."""
    return field(default=default, metadata={_RULE: Rule(doc=doc)})


_SCALARS = (bool, int, float, str)
_NAMES = {bool: ("true or false", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers"),
          str: ("a string", "strings")}


@dataclass(frozen=True)
class Spec:
    """How one config key is checked: a scalar type (or a non-empty tuple of it) and a Rule."""

    kind: type
    many: bool = False
    rule: Rule = Rule()

    def _allowed(self) -> str:
        """What the key allows, in words."""
        choices = self.rule.allowed_choices()
        if self.many:
            what = _NAMES[self.kind][1]
            if choices is not None:
                what += f" from {', '.join(map(str, choices))}"
            elif self.kind is float and self.rule.has_range:
                what += f" in {self.rule.interval()}"
            elif self.kind is int:
                what += self.rule.bound_words()
            return f"a non-empty list of {what}"
        if choices is not None:
            return f"one of {', '.join(map(str, choices))}"
        if self.kind is float and self.rule.has_range:
            return self.rule.interval()
        if self.kind is int:
            return _NAMES[int][0] + self.rule.bound_words()
        return _NAMES[self.kind][0]

    def _scalar(self, x) -> tuple[str | None, Any]:
        """(None, coerced value) or (what went wrong: 'type' | 'finite' | 'rule', value)."""
        k = self.kind
        if k is bool:
            if not isinstance(x, bool):
                return "type", x
        elif k is int:
            if isinstance(x, bool) or not isinstance(x, int):
                return "type", x
        elif k is float:
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                return "type", x
            x = float(x)
            if not math.isfinite(x):
                return "finite", x
        elif not isinstance(x, str):
            return "type", x
        choices = self.rule.allowed_choices()
        if choices is not None and x not in choices:
            return "rule", x
        if k in (int, float) and not self.rule.in_range(x):
            return "rule", x
        return None, x

    def check(self, key: str, value: Any) -> Any:
        """`value` as the declared type (int -> float, list -> tuple), or a one-line ConfigError."""
        if self.many:
            if not isinstance(value, (list, tuple)) or not value:
                fail(key, value, self._allowed())
            items = []
            for v in value:
                err, x = self._scalar(v)
                if err is not None:
                    fail(key, value, self._allowed())
                items.append(x)
            return tuple(items)
        err, x = self._scalar(value)
        if err == "type":
            fail(key, value, _NAMES[self.kind][0])
        if err == "finite":
            fail(key, x, "a finite number")
        if err == "rule":
            fail(key, x, self._allowed())
        return x


def _spec_of(tp: Any, rule: Rule, where: str) -> Spec:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return Spec(str, False, dataclasses.replace(rule, choices=typing.get_args(tp)))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis and args[0] in _SCALARS:
            return Spec(args[0], True, rule)
    elif tp in _SCALARS:
        return Spec(tp, False, rule)
    raise TypeError(f"{where}: unsupported config field type {tp!r}")


class Section:
    """Base of a config section: a frozen dataclass that checks itself when constructed.

    Subclasses set `SECTION` (the TOML table's name), declare fields (see the module
    docstring) and may override `check(self)` for rules between their own fields.
    """

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for name, spec in self.specs().items():
            object.__setattr__(self, name, spec.check(f"{self.SECTION}.{name}", getattr(self, name)))
        self.check()

    def check(self) -> None:
        """Rules between fields of this section (raise with `self.fail`)."""

    def unused(self) -> tuple[str, ...]:
        """Keys that do not influence this configuration (left out of config.json and its
        hash, so a value that no setup of this kind reads never tells two runs apart)."""
        return ()

    def fail(self, name: str, value: Any, allowed: str) -> NoReturn:
        fail(f"{self.SECTION}.{name}", value, allowed)

    @classmethod
    def specs(cls) -> dict[str, Spec]:
        """Field name -> Spec, in declaration order."""
        return _specs(cls)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in dataclasses.fields(cls)}

    @classmethod
    def from_table(cls, table: Mapping[str, Any]):
        """The section from a TOML table (unknown keys: one-line ConfigError listing the keys)."""
        specs = cls.specs()
        for key in table:
            if key not in specs:
                raise ConfigError(f"{cls.SECTION}.{key}: got an unknown key; allowed "
                                  + ", ".join(f"{cls.SECTION}.{k}" for k in sorted(specs)))
        return cls(**table)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able {key: value} (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@functools.lru_cache(maxsize=None)
def _specs(cls: type) -> dict[str, Spec]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: a config field needs a default")
        out[f.name] = _spec_of(hints[f.name], f.metadata.get(_RULE, Rule()), f"{cls.__name__}.{f.name}")
    return out


class Sections:
    """Base of a whole config: a frozen dataclass whose fields are Sections (one per table).

    A field may be given as a mapping (the section's keyword arguments); `replace(**tables)`
    changes keys inside sections, `to_dict()` gives the nested JSON-able tables.

    Open sections: a subclass may also take sections declared elsewhere and read at call time
    (`extra_sections()`, e.g. the tables of registered agents' own keys). They live in the
    field `extras` (declared with `extras_field()`), are read with `section(name)`, and are
    built with the others by `from_sections`.
    """

    def __post_init__(self) -> None:
        for name, cls in _section_classes(type(self)).items():
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, cls(**value))
            elif not isinstance(value, cls):
                raise TypeError(f"{type(self).__name__}.{name}: got {type(value).__name__}; allowed {cls.__name__}")
        extra = self.extra_sections()
        if extra:
            given = self.extras
            given = dict(given) if isinstance(given, Mapping) else {sec.SECTION: sec for sec in given}
            unknown = sorted(set(given) - set(extra))
            if unknown:
                raise TypeError(f"{type(self).__name__}: got section {unknown[0]!r}; allowed {', '.join(extra)}")
            built = tuple(v if isinstance(v, cls) else cls(**v)
                          for name, cls in extra.items() for v in [given.get(name, {})])
            object.__setattr__(self, "extras", built)

    @classmethod
    def extra_sections(cls) -> dict[str, type[Section]]:
        """Sections declared outside this class: name -> class (none by default)."""
        return {}

    @classmethod
    def section_classes(cls) -> dict[str, type[Section]]:
        return {**_section_classes(cls), **cls.extra_sections()}

    @classmethod
    def from_sections(cls, sections: Mapping[str, Any]):
        """The config from {name: Section or mapping} covering fixed and open sections."""
        fixed = _section_classes(cls)
        extras = {k: v for k, v in sections.items() if k not in fixed}
        return cls(**{k: v for k, v in sections.items() if k in fixed}, **({"extras": extras} if extras else {}))

    def section(self, name: str) -> Section:
        """The section `name`, fixed or open."""
        if name in _section_classes(type(self)):
            return getattr(self, name)
        for sec in getattr(self, "extras", ()):
            if sec.SECTION == name:
                return sec
        raise KeyError(f"{type(self).__name__} has no section {name!r}")

    def replace(self, **tables: Mapping[str, Any]):
        """A copy with the given keys changed, e.g. `cfg.replace(train={"total_steps": 100})`
        (each changed section is checked again)."""
        fixed = _section_classes(type(self))
        out = dataclasses.replace(self, **{s: dataclasses.replace(getattr(self, s), **t)
                                           for s, t in tables.items() if s in fixed})
        open_ = {s: t for s, t in tables.items() if s not in fixed}
        if open_:
            extras = {sec.SECTION: sec for sec in out.extras}
            extras.update({s: dataclasses.replace(self.section(s), **t) for s, t in open_.items()})
            out = dataclasses.replace(out, extras=extras)
        return out

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {s: self.section(s).to_dict() for s in self.section_classes()}


@functools.lru_cache(maxsize=None)
def _section_classes(cls: type) -> dict[str, type[Section]]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get(_EXTRAS):
            continue
        sec = hints[f.name]
        if not (isinstance(sec, type) and issubclass(sec, Section) and sec.SECTION == f.name):
            raise TypeError(f"{cls.__name__}.{f.name}: a Sections field must be a Section with SECTION = {f.name!r}")
        out[f.name] = sec
    return out


_EXTRAS = "klrl.sections.extras"


def extras_field() -> Any:
    """The `extras` field of a Sections with open sections (a tuple of them once built)."""
    return field(default=(), metadata={_EXTRAS: True})


def section_field(cls: type[Section]) -> Any:
    """A Sections field holding `cls` with its defaults."""
    return field(default_factory=cls)


@dataclass(frozen=True)
class Hparam:
    """A traced hyperparameter (float32 [M] per population member): its config section,
    default and range. Its config key is `{section}.{name}`."""

    section: str
    default: float
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    doc: str = ""

    @property
    def spec(self) -> Spec:
        return Spec(float, False, Rule(self.lo, self.hi, self.lo_open, self.hi_open, None, self.doc))

    def check(self, key: str, value: Any) -> float:
        return self.spec.check(key, value)


__all__ = ["Hparam", "Rule", "Section", "Sections", "Spec", "choice", "extras_field", "fail", "ranged", "section_field",
           "setting"]
