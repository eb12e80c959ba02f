"""Benchmarks (`klrl bench tabular | train | atari | scale`) and what they share: the --members
option here; timing, the time guard, provenance, JSON and the timed programs in klrl.bench.harness."""

from __future__ import annotations


def parse_members(text: str | None, flag: str = "--members") -> tuple[int, ...] | None:
    """"1,4,16" -> (1, 4, 16); None -> None (the bench's default sizes); ConfigError (naming
    `flag`) otherwise."""
    from klrl.errors import ConfigError

    if text is None:
        return None
    try:
        out = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        out = ()
    if not out or min(out) < 1:
        raise ConfigError(f"{flag}: got {text!r}; allowed comma-separated integers >= 1, e.g. 1,4,16")
    return out
