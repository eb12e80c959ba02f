"""Command line: `klrl train | sweep | merge | plot | tabular | bench`.

`klrl merge OUT` joins an array job's finished tasks (`train --task I --num-tasks N`) into OUT (klrl.merge).

Every subcommand validates its input before compiling anything; a `ConfigError` is printed
as one line `klrl: error: ...` and the process exits with status 2 without writing results.
"""

from __future__ import annotations

import argparse
import sys

from klrl.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="klrl", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    for name in ("train", "sweep"):
        t = sub.add_parser(name, help="train one population per agent from a TOML experiment")
        t.add_argument("config", help="experiment TOML file (see experiments/)")
        t.add_argument("--out", required=True, help="run directory (created)")
        t.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="SECTION.KEY=VALUE", help="override a config key (repeatable)")
        t.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --out")
        t.add_argument("--task", default=None, metavar="I",
                       help="array job: train only the members m with m mod N == I, into OUT/task-I/")
        t.add_argument("--num-tasks", default=None, metavar="N", help="array job: the number of tasks N")

    mg = sub.add_parser("merge", help="join the finished tasks OUT/task-*/ of an array job into OUT")
    mg.add_argument("out", help="the --out of the tasks' `klrl train ... --task I --num-tasks N`")

    pl = sub.add_parser("plot", help="draw the figures of a run directory from its metrics")
    pl.add_argument("run_dir")

    tb = sub.add_parser("tabular", help="exact tabular experiments (Leverage the Average)")
    tb.add_argument("config", help="experiment TOML file, e.g. experiments/leverage_average.toml")
    tb.add_argument("--out", default=None, help="output directory (default: experiment.out_dir)")
    tb.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="SECTION.KEY=VALUE", help="override a config key (repeatable)")
    tb.add_argument("--quick", action="store_true", help="small grid for smoke tests")

    b = sub.add_parser("bench", help="benchmarks writing JSON to results/bench/")
    b.add_argument("which", choices=["tabular", "train", "atari"])
    b.add_argument("--out", default=None, help="output JSON path")
    b.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    b.add_argument("--members", default=None, metavar="M,M,...",
                   help="atari: comma-separated population sizes (default 1,4,16 on CPU)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command in ("train", "sweep"):
            from klrl.runner import run_experiment
            from klrl.tasks import parse_task

            task = parse_task(args.task, args.num_tasks)
            run_experiment(args.config, args.out, overrides=args.overrides, resume=args.resume, task=task)
        elif args.command == "merge":
            from klrl.merge import merge

            merge(args.out)
        elif args.command == "plot":
            from klrl.plotting import plot_run

            plot_run(args.run_dir)
        elif args.command == "tabular":
            from klrl.tabular.experiment import run_experiment as run_tabular

            run_tabular(args.config, out_dir=args.out, quick=args.quick, overrides=args.overrides)
        elif args.command == "bench":
            if args.members is not None and args.which != "atari":
                raise ConfigError(f"bench --members: got {args.members!r}; allowed only with bench atari")
            if args.which == "atari":
                from klrl.bench.atari import bench_atari, parse_members

                bench_atari(out_path=args.out, quick=args.quick, members=parse_members(args.members))
                return 0
            if args.which == "tabular":
                from klrl.bench.tabular import bench_tabular as bench
            else:
                from klrl.bench.train import bench_train as bench
            bench(out_path=args.out, quick=args.quick)
    except ConfigError as err:
        print(f"klrl: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
