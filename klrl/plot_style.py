"""How klrl's figures look: colours of a run's groups and readable axis numbers.

- `group_colors`: one colour family (a sequential matplotlib colormap) per agent, and within an
  agent one shade per group (its swept values, light to dark as the values grow), so that the
  members of a sweep read as one family and agents stay apart.
- `short_number`: tick labels such as 10k, 20k, 1.5M instead of 10000 or 1.5e6.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

# Sequential colormaps, one per agent in the order the run lists them (sorted names);
# more agents than families reuse them from the start.
FAMILIES = ("Blues", "Oranges", "Greens", "Reds", "Purples", "Greys", "YlOrBr", "PuRd")
# The part of each colormap used for shades: below 0.35 is too pale on white.
SHADE_RANGE = (0.4, 0.95)
SINGLE_SHADE = 0.75            # an agent with one group


def _sort_value(v) -> tuple:
    """Sort key of a swept value: absent (None) first, then by value."""
    return (0, 0.0) if v is None else (1, float(v))


def group_order(keys: Iterable[tuple]) -> list[tuple]:
    """Group keys (agent, swept values...) sorted by agent, then by swept values (absent first)."""
    return sorted(set(keys), key=lambda k: (k[0], [_sort_value(v) for v in k[1:]]))


def agent_families(agents: Iterable[str]) -> dict[str, str]:
    """agent -> colormap name, in sorted agent order."""
    return {a: FAMILIES[i % len(FAMILIES)] for i, a in enumerate(sorted(set(agents)))}


def shade(i: int, n: int) -> float:
    """Position in the colormap of the i-th of n groups of one agent (light to dark)."""
    if n <= 1:
        return SINGLE_SHADE
    lo, hi = SHADE_RANGE
    return lo + (hi - lo) * i / (n - 1)


def group_colors(keys: Iterable[tuple]) -> dict[tuple, tuple]:
    """group key (agent, swept values...) -> RGBA: the agent's colour family, one shade per
    group in `group_order` (the agent's lowest swept values lightest)."""
    from matplotlib import colormaps

    ordered = group_order(keys)
    families = agent_families(k[0] for k in ordered)
    out = {}
    for agent, family in families.items():
        mine = [k for k in ordered if k[0] == agent]
        cmap = colormaps[family]
        for i, key in enumerate(mine):
            out[key] = tuple(float(c) for c in cmap(shade(i, len(mine))))
    return out


def agent_color(agent: str, agents: Sequence[str]) -> tuple:
    """The darkest shade of `agent`'s family among `agents`: its line where it has one group."""
    from matplotlib import colormaps

    return tuple(float(c) for c in colormaps[agent_families(agents)[agent]](SHADE_RANGE[1]))


def short_number(x: float, _pos=None) -> str:
    """A tick label: 950 -> '950', 10000 -> '10k', 1500000 -> '1.5M', 2e9 -> '2G', -20.75 ->
    '-20.75'; at most 4 significant digits after scaling (a matplotlib FuncFormatter signature)."""
    if not math.isfinite(x):
        return ""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.4g}{suffix}"
    return f"{x:.4g}" if x != 0 else "0"


def readable_ticks(ax, x: bool = True, y: bool = True) -> None:
    """Short tick labels (`short_number`) on the x axis (environment steps) and on the y axis
    where it is linear (a log axis keeps its 10^k labels)."""
    from matplotlib.ticker import FuncFormatter

    if x:
        ax.xaxis.set_major_formatter(FuncFormatter(short_number))
    if y and ax.get_yscale() == "linear":
        ax.yaxis.set_major_formatter(FuncFormatter(short_number))


__all__ = ["FAMILIES", "agent_color", "agent_families", "group_colors", "group_order", "readable_ticks",
           "shade", "short_number"]
