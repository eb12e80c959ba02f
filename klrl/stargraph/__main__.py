"""python -m klrl.stargraph COMMAND ...  (docs/stargraph.md)

  pretrain OUT_DIR [key=value ...]   pretrain π_ref (PretrainConfig's keys; the task as
                                     degree=, path_length=, num_nodes=) and save it to OUT_DIR
  oracle REF_DIR OUT.json [test_size= top_k= seed=]
                                     π_ref, and Q♯ / CD with the exact p, η ∈ {0.03, 0.1, 0.3, 1}

  run CONFIG.toml OUT_DIR [--ref REF_DIR] [section.key=value ...]
                                     the whole experiment (klrl.stargraph.experiment): the
                                     parts not yet in OUT_DIR, then OUT_DIR/summary.json

Progress is printed as JSON lines; a bad key or value is a one-line error with exit status 2.
"""

from __future__ import annotations

import json
import os
import sys
from typing import NamedTuple

from klrl.errors import ConfigError
from klrl.stargraph.graphs import StarGraphTask
from klrl.stargraph.pretrain import PretrainConfig

TASK_KEYS = StarGraphTask._fields


class OracleArgs(NamedTuple):
    test_size: int = 2000
    top_k: int = 10
    seed: int = 0


def _typed(default, key: str, value: str):
    try:
        return type(default)(value)
    except ValueError:
        raise ConfigError(f"stargraph.{key}: got {value!r}; allowed a value of type {type(default).__name__}") from None


def parse(args: list[str], *bases: NamedTuple) -> list:
    """Each base with the `key=value` pairs that name its fields replaced (task keys go to a
    PretrainConfig's task); an unknown key is a ConfigError."""
    out = [dict(b._asdict()) for b in bases]
    for arg in args:
        key, _, value = arg.partition("=")
        for base, fields in zip(bases, out):
            if isinstance(base, PretrainConfig) and key in TASK_KEYS:
                fields["task"] = fields["task"]._replace(**{key: int(_typed(0, key, value))})
                break
            if key in fields and key != "task":
                fields[key] = _typed(getattr(base, key), key, value)
                break
        else:
            allowed = sorted({k for b in bases for k in b._fields if k != "task"} |
                             (set(TASK_KEYS) if any(isinstance(b, PretrainConfig) for b in bases) else set()))
            raise ConfigError(f"stargraph: got {key!r}; allowed {', '.join(allowed)}")
    return [type(b)(**f) for b, f in zip(bases, out)]


def _run(argv: list[str]) -> int:
    log = lambda row: print(json.dumps(row), flush=True)  # noqa: E731
    cmd, rest = argv[0], argv[1:]
    if cmd == "pretrain" and rest:
        from klrl.stargraph.pretrain import pretrain, save

        (cfg,) = parse(rest[1:], PretrainConfig())
        cfg.task.check()
        if os.path.exists(os.path.join(rest[0], "lm.json")):
            raise ConfigError(f"OUT_DIR: got {rest[0]!r}; allowed a directory that holds no model yet")
        _, params, report = pretrain(cfg, log=lambda line: print(line, flush=True))
        save(rest[0], cfg, params, report)
        print(f"saved {rest[0]}: {report['parameters']} parameters, {report['seconds']} s", flush=True)
        return 0
    if cmd == "run" and len(rest) >= 2:
        from klrl.stargraph.experiment import run
        from klrl.stargraph.experiment_config import load_experiment

        overrides, ref = list(rest[2:]), None
        if "--ref" in overrides:
            i = overrides.index("--ref")
            if i + 1 >= len(overrides):
                raise ConfigError("--ref: got nothing; allowed a directory written by `pretrain`")
            ref = overrides[i + 1]
            del overrides[i:i + 2]
        run(load_experiment(rest[0], overrides), rest[1], ref, log=log)
        return 0
    if cmd == "oracle" and len(rest) >= 2:
        from klrl.stargraph.protocol import oracle_run

        if not os.path.isfile(os.path.join(rest[0], "lm.json")):
            raise ConfigError(f"REF_DIR: got {rest[0]!r}; allowed a directory written by `pretrain`")
        (a,) = parse(rest[2:], OracleArgs())
        result = oracle_run(rest[0], a.test_size, top_k=a.top_k, seed=a.seed, log=log)
        with open(rest[1], "w") as fh:
            json.dump(result, fh, indent=1)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


def main(argv: list[str]) -> int:
    try:
        return _run(argv) if argv else _run(["help"])
    except ConfigError as err:
        print(f"klrl: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
