"""`klrl train CONFIG --dry-run` and `klrl config CONFIG`: what a config resolves to, before running it.

Printed, section by section: every key config.json would record with its value (marked
`(default)` when it is the engine's default; a traced hyperparameter that not every agent
reads names its readers), the config hash, one population per agent with its member table
(member id, seed, grid point, swept values), and the swept values each agent IGNORES. A swept
hyperparameter that an agent does not read is collapsed for that agent (klrl.population: its
members take the base value and their column stays empty), so with `agent.tau` and
`agent.entropic_index` swept, M-DQN gets one member per τ while MVI(q) gets one per (τ, q);
the same notice is printed as one line at the start of a real run (`ignored_notice`).

The config goes through the same checks as `klrl train` (a bad one is refused with one line,
exit 2) and nothing is written: no run directory, no file. With `--out`, the directory the run
would write to is named (klrl.output's policy, read-only). With `--estimate`, the wall time is
estimated from a short measured slice (klrl.estimate).
"""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

from klrl.config import SWEEP, Experiment


def ignored_sweeps(exp: Experiment) -> dict[str, list[str]]:
    """Agent -> the swept config keys it does not read (their values are collapsed for it)."""
    swept = exp.swept_hparams()
    return {agent: [exp.schema.key_of(n) for n in swept if n not in exp.hparams_used(agent)]
            for agent in exp.agents if any(n not in exp.hparams_used(agent) for n in swept)}


def _grid_size(exp: Experiment, names) -> int:
    """Grid points of the product of the swept hyperparameters `names`."""
    swept = exp.swept_hparams()
    return math.prod(len(swept[n]) for n in names)


def _ignored_parts(exp: Experiment) -> list[str]:
    """Per agent that ignores a swept key: `agent ignores key [values], ... (m members, not n)`."""
    swept, seeds = exp.swept_hparams(), len(exp.seeds)
    full = _grid_size(exp, swept) * seeds
    parts = []
    for agent, keys in ignored_sweeps(exp).items():
        used = _grid_size(exp, [n for n in swept if n in exp.hparams_used(agent)]) * seeds
        values = ", ".join(f"{k} {_value(exp.sweep[k])}" for k in keys)
        parts.append(f"{agent} ignores {values} ({used} members, not {full})")
    return parts


def ignored_notice(exp: Experiment) -> str | None:
    """One line naming, per agent, the swept values it ignores and its member count with and
    without them; None when every agent reads every swept key."""
    parts = _ignored_parts(exp)
    if not parts:
        return None
    return "klrl: swept values an agent does not read are collapsed for it: " + "; ".join(parts)


def _value(v) -> str:
    return json.dumps(v, ensure_ascii=False)


def _readers(exp: Experiment, key: str) -> list[str]:
    """For a traced hyperparameter that not every agent reads: which agents read it."""
    name = exp.schema.name_of(key)
    if name is None:
        return []
    readers = [a for a in exp.agents if name in exp.hparams_used(a)]
    if len(readers) == len(exp.agents):
        return []
    return [f"read by {', '.join(readers)}" if readers else "read by none of these agents"]


def config_lines(exp: Experiment) -> list[str]:
    """The resolved config (what config.json records), section by section, defaults marked."""
    defaults = exp.schema.resolved_defaults()
    lines = []
    for section, table in exp.resolved().items():
        if section == SWEEP:
            continue
        lines.append(f"[{section}]")
        width = max((len(k) for k in table), default=0)
        for key, value in table.items():
            marks = ["default"] if defaults.get(f"{section}.{key}", object()) == value else []
            marks += _readers(exp, f"{section}.{key}")
            mark = f"  ({'; '.join(marks)})" if marks else ""
            lines.append(f"  {key:<{width}} = {_value(value)}{mark}")
    sweep = exp.resolved()[SWEEP]
    lines.append(f"[{SWEEP}]" + ("" if sweep else "  (none: one grid point)"))
    lines += [f"  {k} = {_value(v)}" for k, v in sweep.items()]
    return lines


def member_lines(pops, max_rows: int = 24) -> list[str]:
    """Per population: its size (grid points x seeds) and member table (the first `max_rows` rows)."""
    lines = []
    for pop in pops:
        grid = len({m.grid_index for m in pop.members})
        seeds = len({m.seed for m in pop.members})
        lines.append(f"{pop.agent}: {pop.size} members = {grid} grid point(s) x {seeds} seed(s)")
        cols = list(pop.columns)
        head = ["member", "seed", "grid", *cols]
        rows = [[str(m.member), str(m.seed), str(m.grid_index),
                 *("—" if m.swept.get(c) is None else f"{m.swept[c]:g}" for c in cols)] for m in pop.members]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        lines.append("  " + "  ".join(h.rjust(w) for h, w in zip(head, widths)))
        lines += ["  " + "  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows[:max_rows]]
        if len(rows) > max_rows:
            lines.append(f"  ... {len(rows) - max_rows} more members")
    if any(c for p in pops for c in p.columns):
        lines.append("(— in a swept column: the agent does not read that hyperparameter, so its values do not "
                     "multiply the agent's grid)")
    return lines


def describe(exp: Experiment, pops, config_path: str, overrides: Sequence[str], out: str | None = None) -> str:
    """The dry run's text (nothing is computed beyond the member keys, nothing written)."""
    from klrl import __version__

    lines = [f"klrl {__version__} dry run: {config_path}" + (f" with --set {' --set '.join(overrides)}"
                                                            if overrides else ""),
             f"config hash {exp.config_hash()}", "", "resolved config (what config.json records; "
             "(default) = the engine's default value):", *config_lines(exp), ""]
    runs = f", in each of {len(exp.envs)} run directories (one per env.name)" if exp.envs else ""
    lines.append(f"populations (one compiled program each, run one after another{runs}):")
    lines += member_lines(pops)
    ignored = _ignored_parts(exp)
    lines += ["", "swept values an agent ignores:" + ("" if ignored else " none (every agent reads every swept key)")]
    lines += [f"  {part}" for part in ignored]
    lines.append(f"members in all: {sum(p.size for p in pops) * max(len(exp.envs), 1)}")
    if out is not None:
        lines += ["", f"run directory: {out}"]
    lines.append("nothing was written (dry run)")
    return "\n".join(lines)


def dry_run(config_path: str, overrides: Sequence[str] = (), out: str | None = None, estimate: bool = False) -> str:
    """Check the config as `klrl train` does, print `describe` (and, with `estimate`, a measured
    wall-time estimate); returns the text. Writes nothing."""
    from klrl.config import load_experiment
    from klrl.runner import prepare
    from klrl.rundir import RUN_RECORD, SWEEP_RECORD, resolve_out_dir

    exp = load_experiment(config_path, overrides)
    prepared = [prepare(e) for e in exp.per_env()]       # the engine's checks, as a real run
    where = None
    if out is not None:                                   # read-only: klrl.output's policy
        where = resolve_out_dir(out, exp, resume=False, record=SWEEP_RECORD if exp.envs else RUN_RECORD)
        where += "  (exists, empty)" if os.path.isdir(where) else "  (would be created)"
    text = describe(exp, prepared[0][0], config_path, overrides, where)
    print(text)
    if estimate:
        from klrl.estimate import estimate_lines

        lines = estimate_lines(exp)
        print("\n".join(lines))
        text += "\n" + "\n".join(lines)
    return text


__all__ = ["config_lines", "describe", "dry_run", "ignored_notice", "ignored_sweeps", "member_lines"]
