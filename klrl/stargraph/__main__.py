"""`python -m klrl.stargraph pretrain OUT [key=value ...]`: pretrain π_ref (klrl.stargraph.pretrain),
log a JSON row per evaluation, save the model to OUT. Keys are PretrainConfig's fields; the task as
degree=, path_length=, num_nodes=."""

from __future__ import annotations

import sys

from klrl.errors import ConfigError
from klrl.stargraph.graphs import StarGraphTask
from klrl.stargraph.pretrain import PretrainConfig, pretrain, save

TASK_KEYS = StarGraphTask._fields


def parse(args: list[str]) -> PretrainConfig:
    """PretrainConfig from `key=value` pairs (ints and floats as the defaults' types)."""
    base, task = PretrainConfig(), PretrainConfig().task._asdict()
    fields = {}
    for arg in args:
        key, _, value = arg.partition("=")
        if key in TASK_KEYS:
            task[key] = int(value)
        elif key in base._fields and key != "task":
            fields[key] = type(getattr(base, key))(value)
        else:
            raise ConfigError(f"stargraph: got {key!r}; allowed {', '.join(TASK_KEYS + base._fields[1:])}")
    return base._replace(task=StarGraphTask(**task).check(), **fields)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "pretrain":
        print(__doc__, file=sys.stderr)
        return 2
    try:
        cfg = parse(argv[2:])
    except (ConfigError, ValueError) as err:
        print(f"klrl: error: {err}", file=sys.stderr)
        return 2
    _, params, report = pretrain(cfg, log=lambda line: print(line, flush=True))
    save(argv[1], cfg, params, report)
    print(f"saved {argv[1]}: {report['parameters']} parameters, {report['seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
