"""Command line: `klrl train | sweep | config | merge | plot | tabular | bench`.

`klrl config CONFIG` (or `klrl train CONFIG --dry-run`) prints what a config resolves to and writes nothing.

`klrl merge OUT` joins an array job's finished tasks (`train --task I --num-tasks N`) into OUT (klrl.merge).

Every subcommand validates its input before compiling anything; a `ConfigError` is printed
as one line `klrl: error: ...` and the process exits with status 2 without writing results.
`train` stopped by SIGTERM, SIGUSR1 or Ctrl-C prints one line and exits with status 75
(klrl.stopping: rows and a checkpoint written, `--resume` continues).
"""

from __future__ import annotations

import argparse
import os
import sys

from klrl.distributed import DistributedError
from klrl.errors import EXIT_STOPPED, ConfigError, Stopped


def _parser() -> argparse.ArgumentParser:
    from klrl import __version__

    p = argparse.ArgumentParser(prog="klrl", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"klrl {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    for name in ("train", "sweep"):
        t = sub.add_parser(name, help="train one population per agent from a TOML experiment")
        t.add_argument("config", help="experiment TOML file (see experiments/)")
        t.add_argument("--out", default=None, help="run directory (created; required unless --dry-run)")
        t.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="SECTION.KEY=VALUE", help="override a config key (repeatable)")
        t.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --out")
        _dry_run_flags(t, dry_run=True)
        d = t.add_argument_group("several processes (klrl.distributed)")
        d.add_argument("--distributed", action="store_true",
                       help="one run over several processes with jax.distributed (process 0 writes)")
        d.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="process 0's address")
        d.add_argument("--num-processes", type=int, default=None, metavar="N")
        d.add_argument("--process-id", type=int, default=None, metavar="I")
        d.add_argument("--heartbeat-timeout", type=int, default=100, metavar="S",
                       help="seconds without a heartbeat before a process counts as dead (default 100)")
        t.add_argument("--task", default=None, metavar="I",
                       help="array job: train only the members m with m mod N == I, into OUT/task-I/")
        t.add_argument("--num-tasks", default=None, metavar="N", help="array job: the number of tasks N")

    c = sub.add_parser("config", help="what a config resolves to (same as `klrl train CONFIG --dry-run`)")
    c.add_argument("config", help="experiment TOML file (see experiments/)")
    c.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE", help="override a config key (repeatable)")
    c.add_argument("--out", default=None, help="name the run directory a run would write to (nothing is written)")
    _dry_run_flags(c, dry_run=False)

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
    b.add_argument("which", choices=["tabular", "train", "atari", "scale"])
    b.add_argument("--out", default=None, help="output JSON path")
    b.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    b.add_argument("--members", default=None, metavar="M,M,...",
                   help="train, atari: comma-separated population sizes (defaults: train 1,8,32,64 on "
                        "cartpole, 1,4,16 on minatar; atari 1,4,16 on CPU)")
    b.add_argument("--env", default=None, metavar="PRESET",
                   help="train: cartpole (CartPole-v1 M-DQN, the default), minatar (Breakout-MinAtar M-DQN, "
                        "minatar_cnn) or purejaxrl (CartPole DQN shaped as PureJaxRL's dqn.py)")
    b.add_argument("--total-steps", type=int, default=None, metavar="N",
                   help="train: env steps per member (default: the preset's, 50000)")
    b.add_argument("--devices", default=None, metavar="N,N,...",
                   help="train: the same populations on each host device count, one subprocess each "
                        "(e.g. 1,2; results/bench/train_<env>_devices.json)")
    return p


def _dry_run_flags(p: argparse.ArgumentParser, dry_run: bool) -> None:
    """--dry-run (train, sweep) and --estimate (klrl.dryrun, klrl.estimate)."""
    if dry_run:
        p.add_argument("--dry-run", action="store_true",
                       help="print the resolved config, the member table per agent and the swept values each "
                            "agent ignores; write nothing")
    p.add_argument("--estimate", action="store_true",
                   help=("with --dry-run: " if dry_run else "") + "also estimate the wall time from a short "
                        "measured slice (compiles each agent's program; writes nothing)")


def _dry_run(args: argparse.Namespace) -> None:
    """`klrl config` and `klrl train --dry-run`: klrl.dryrun (checks, prints, writes nothing)."""
    from klrl.dryrun import dry_run

    if args.command != "config":
        for flag, given in (("--resume", args.resume), ("--distributed", args.distributed),
                            ("--task", args.task is not None or args.num_tasks is not None)):
            if given:
                raise ConfigError(f"--dry-run: got {flag}; allowed a dry run of one new run (without {flag})")
    dry_run(args.config, args.overrides, out=args.out, estimate=args.estimate)


_BENCH_OPTIONS = {"members": ("train", "atari"), "env": ("train",), "total_steps": ("train",), "devices": ("train",)}


def _bench(args: argparse.Namespace) -> None:
    """`klrl bench WHICH`: refuse an option the chosen bench does not take, then run it."""
    from klrl.bench import parse_members

    for opt, allowed in _BENCH_OPTIONS.items():
        value = getattr(args, opt)
        if value is not None and args.which not in allowed:
            flag = "--" + opt.replace("_", "-")
            raise ConfigError(f"bench {flag}: got {value!r}; allowed only with bench {' or bench '.join(allowed)}")
    if args.which == "atari":
        from klrl.bench.atari import bench_atari

        bench_atari(out_path=args.out, quick=args.quick, members=parse_members(args.members))
    elif args.which == "train":
        from klrl.bench.train import bench_train

        bench_train(out_path=args.out, quick=args.quick, members=parse_members(args.members),
                    env=args.env or "cartpole", total_steps=args.total_steps,
                    devices=parse_members(args.devices, "--devices"))
    elif args.which == "scale":
        from klrl.bench.scale import bench_scale

        bench_scale(out_path=args.out, quick=args.quick)
    else:
        from klrl.bench.tabular import bench_tabular

        bench_tabular(out_path=args.out, quick=args.quick)


def _host_devices() -> None:
    """One JAX host device per CPU core (klrl.placement), set before JAX starts: a population
    is sharded over them. Not when JAX already runs in this process (its count is fixed) or
    the environment chooses the count itself."""
    if "jax" in sys.modules:
        return
    from klrl.placement import host_cores, host_device_flags

    flags = host_device_flags(os.environ, host_cores())
    if flags is not None:
        os.environ["XLA_FLAGS"] = flags


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command in ("train", "sweep", "config"):
            _host_devices()
        if args.command == "config" or (args.command in ("train", "sweep") and args.dry_run):
            _dry_run(args)
        elif args.command in ("train", "sweep"):
            if args.out is None:
                raise ConfigError("--out: got nothing; allowed a run directory (required unless --dry-run)")
            if args.estimate:
                raise ConfigError("--estimate: got it without --dry-run; allowed only with --dry-run")
            from klrl.distributed import check_flags, initialize
            from klrl.runner import run_experiment
            from klrl.tasks import parse_task

            check_flags(args.distributed, args.coordinator, args.num_processes, args.process_id)
            task = parse_task(args.task, args.num_tasks)
            if args.distributed:   # before any JAX computation
                initialize(args.coordinator, args.num_processes, args.process_id, args.heartbeat_timeout)
            from klrl.stopping import StopSignals, resume_command

            with StopSignals(resume_command(sys.argv[1:] if argv is None else argv)) as stop:
                run_experiment(args.config, args.out, overrides=args.overrides, resume=args.resume, task=task,
                               stop=stop)
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
            _bench(args)
    except ConfigError as err:
        print(f"klrl: error: {err}", file=sys.stderr)
        return 2
    except Stopped as err:
        from klrl.hooks import log

        log(f"klrl: {err}")
        return EXIT_STOPPED
    except DistributedError as err:
        print(f"klrl: error: {err}", file=sys.stderr, flush=True)
        # Exit now: jax.distributed's shutdown at exit would wait for the dead process, then abort.
        os._exit(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
