"""Where a run writes: the `[output]` policy shared by `klrl train` and `klrl tabular`.

An existing, non-empty output directory is never written into: it is refused
(`if_exists = "refuse"`, the default), or the run goes to `<out>/runs/<UTC timestamp>/`
(`if_exists = "new_subdir"`), so a committed result is never overwritten. The directory is
chosen (and checked) before anything is computed or written; nothing here writes.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import ClassVar, Literal

from klrl.errors import ConfigError
from klrl.sections import Section

IfExists = Literal["refuse", "new_subdir"]


@dataclass(frozen=True)
class OutputSection(Section):
    """[output]: what to do when the output directory already holds files."""

    SECTION: ClassVar[str] = "output"
    if_exists: IfExists = "refuse"


def choose_out_dir(out_dir: str, if_exists: str, *, flag: str = "--out", refuse_hint: str = "") -> str:
    """The directory a new run writes to (not created here), or a one-line ConfigError.

    `flag` names where `out_dir` came from in messages; `refuse_hint` is appended to the
    allowed alternatives when an existing directory is refused.
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"{flag}: got {out_dir!r} (an existing file); allowed a directory path")
    probe = os.path.abspath(out_dir)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.access(probe, os.W_OK):
        raise ConfigError(f"{flag}: got {out_dir!r}; allowed a writable location")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if if_exists == "new_subdir":
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            sub = os.path.join(out_dir, "runs", stamp)
            k = 1
            while os.path.exists(sub):
                sub = os.path.join(out_dir, "runs", f"{stamp}-{k}")
                k += 1
            return sub
        raise ConfigError(f"{flag}: got {out_dir!r} (already holds files); allowed a new or empty directory"
                          f"{refuse_hint}")
    return out_dir


__all__ = ["IfExists", "OutputSection", "choose_out_dir"]
