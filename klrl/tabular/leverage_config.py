"""The config of the "Leverage the Average" tabular experiments (klrl.tabular.leverage):
one self-checking section per TOML table (klrl.sections), read by klrl.config's walker (pure
Python: nothing is compiled here), the `--quick` sizes, and the (λ, τ) of every scheme.

Every key and its default is listed in experiments/leverage_average.toml; the defaults are
explained in klrl.tabular.leverage's docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from klrl.output import OutputSection
from klrl.sections import Section, Sections, ranged, section_field, setting

DEFAULT_OUT_DIR = "results/leverage_average"


@dataclass(frozen=True)
class ExperimentSection(Section):
    SECTION: ClassVar[str] = "experiment"
    out_dir: str = setting(DEFAULT_OUT_DIR, doc="output directory unless --out is given")
    seed: int = ranged(0, lo=0, doc="root of the Garnets' and the noise's keys")

    def check(self) -> None:
        if not self.out_dir:
            self.fail("out_dir", self.out_dir, "a non-empty path")


@dataclass(frozen=True)
class GarnetSection(Section):
    """Garnet(N_S, N_A, N_B): branching = 10% of the states, rewards U[0, 1]."""

    SECTION: ClassVar[str] = "garnet"
    num_garnets: int = ranged(5, lo=1)
    num_states: int = ranged(50, lo=1)
    num_actions: int = ranged(4, lo=1)
    branching: int = ranged(5, lo=1)

    def check(self) -> None:
        if self.branching > self.num_states:
            self.fail("branching", self.branching, f"1..garnet.num_states={self.num_states}")


@dataclass(frozen=True)
class NoiseSection(Section):
    SECTION: ClassVar[str] = "noise"
    std: float = ranged(1.0, lo=0.0, lo_open=True, doc="per entry and iteration")
    num_seeds: int = ranged(3, lo=1, doc="noise seeds per Garnet")


def _positive(default: float):
    return ranged(default, lo=0.0, lo_open=True)


def _discount(default):
    return ranged(default, lo=0.0, hi=1.0, lo_open=True, hi_open=True)


@dataclass(frozen=True)
class SchemesSection(Section):
    """(λ, τ) of the MD-VI schemes of parts (a) and (c)."""

    SECTION: ClassVar[str] = "schemes"
    entropy_tau: float = _positive(0.01)
    kl_lam: float = _positive(1.0)
    kl_entropy_lam: float = _positive(1.0)
    kl_entropy_tau: float = _positive(0.01)


class _Iterations(Section):
    """num_iterations and an evaluation period that divides it (fields of the subclasses)."""

    def check(self) -> None:
        if self.num_iterations % self.eval_every:
            self.fail("eval_every", self.eval_every,
                      f"a divisor of {self.SECTION}.num_iterations={self.num_iterations}")


@dataclass(frozen=True)
class CurvesSection(_Iterations):
    SECTION: ClassVar[str] = "curves"
    gamma: float = _discount(0.9)
    num_iterations: int = ranged(1000, lo=1)
    eval_every: int = ranged(20, lo=1)


@dataclass(frozen=True)
class HeatmapSection(Section):
    SECTION: ClassVar[str] = "heatmap"
    gamma: float = _discount(0.9)
    num_iterations: int = ranged(1000, lo=1)
    lam_min: float = _positive(1e-2)
    lam_max: float = _positive(1e2)
    num_lam: int = ranged(9, lo=1)
    tau_min: float = _positive(1e-4)
    tau_max: float = _positive(1.0)
    num_tau: int = ranged(9, lo=1)

    def check(self) -> None:
        for name in ("lam", "tau"):
            lo, hi = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
            if lo > hi:
                self.fail(f"{name}_min", lo, f"<= heatmap.{name}_max={hi}")


@dataclass(frozen=True)
class HorizonSection(_Iterations):
    SECTION: ClassVar[str] = "horizon"
    gammas: tuple[float, ...] = _discount((0.8, 0.9, 0.95, 0.975, 0.9875))
    num_iterations: int = ranged(1000, lo=1)
    eval_every: int = ranged(20, lo=1)


@dataclass(frozen=True)
class BoundSection(_Iterations):
    SECTION: ClassVar[str] = "bound"
    gamma: float = _discount(0.9)
    num_iterations: int = ranged(1000, lo=1)
    eval_every: int = ranged(20, lo=1)
    lams: tuple[float, ...] = _positive((0.1, 1.0, 10.0))
    noise_stds: tuple[float, ...] = _positive((0.3, 1.0))


@dataclass(frozen=True)
class LeverageConfig(Sections):
    """The whole experiment file (experiments/leverage_average.toml lists every key)."""

    experiment: ExperimentSection = section_field(ExperimentSection)
    garnet: GarnetSection = section_field(GarnetSection)
    noise: NoiseSection = section_field(NoiseSection)
    schemes: SchemesSection = section_field(SchemesSection)
    curves: CurvesSection = section_field(CurvesSection)
    heatmap: HeatmapSection = section_field(HeatmapSection)
    horizon: HorizonSection = section_field(HorizonSection)
    bound: BoundSection = section_field(BoundSection)
    output: OutputSection = section_field(OutputSection)


# --quick: tiny sizes for smoke tests (same code path, a few seconds of compute). Parts (a),
# (c) and (d) then have identical shapes (2 noise levels × 3 coefficient pairs, same K and
# evaluation period), as with the defaults, so they share one compiled program.
QUICK: dict[str, dict[str, Any]] = {
    "garnet": {"num_garnets": 2, "num_states": 8, "num_actions": 3, "branching": 2},
    "noise": {"num_seeds": 2},
    "curves": {"num_iterations": 60, "eval_every": 10},
    "heatmap": {"num_iterations": 60, "num_lam": 3, "num_tau": 3},
    "horizon": {"gammas": [0.8, 0.9, 0.95], "num_iterations": 60, "eval_every": 10},
    "bound": {"num_iterations": 60, "eval_every": 10},
}


def _with_quick(raw: dict[str, Any]) -> dict[str, Any]:
    out = {s: dict(t) if isinstance(t, dict) else t for s, t in raw.items()}
    for section, table in QUICK.items():
        out[section] = {**out.get(section, {}), **table}
    return out


def load_config(config_path: str, quick: bool = False, overrides: Sequence[str] = ()) -> LeverageConfig:
    """Reads and checks a TOML experiment file plus `--set` overrides (klrl.config's walker);
    `quick` then shrinks it (`QUICK`, under the overrides). Nothing is written."""
    from klrl import config

    raw = config.read_toml(config_path)
    cfg = config.build_config(LeverageConfig, raw, overrides)
    if quick:
        cfg = config.build_config(LeverageConfig, _with_quick(raw), overrides)
    return cfg


def quick_config(cfg: LeverageConfig) -> LeverageConfig:
    """`cfg` with the `QUICK` sizes."""
    return cfg.replace(**QUICK)


def heatmap_grid(cfg) -> tuple[np.ndarray, np.ndarray]:
    """The (λ, τ) log grids of part (b)."""
    h = cfg.heatmap
    lams = np.geomspace(h.lam_min, h.lam_max, h.num_lam)
    taus = np.geomspace(h.tau_min, h.tau_max, h.num_tau)
    return lams, taus


def scheme_coefficients(cfg) -> dict[str, tuple[float, float]]:
    """(λ, τ) of the MD-VI schemes of parts (a) and (c); VI is separate."""
    s = cfg.schemes
    return {
        "entropy": (0.0, s.entropy_tau),
        "kl": (s.kl_lam, 0.0),
        "kl_entropy": (s.kl_entropy_lam, s.kl_entropy_tau),
    }


SCHEMES = ("vi", "entropy", "kl", "kl_entropy")
