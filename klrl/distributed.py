"""One run over several processes (hosts): `jax.distributed`, and only process 0 writes.

`klrl train CFG --out OUT --distributed` calls `initialize` before any JAX computation: with
`--coordinator HOST:PORT --num-processes N --process-id I`, or with none of them, in which
case JAX detects the cluster itself (SLURM, Open MPI, ...). Afterwards `jax.devices()` lists
the devices of every process, the population mesh (klrl.sharding) spans them all, and each
process builds and steps only its own shards (its slice of the population, one host pool
per shard). Every process validates the same config and takes the same decisions, because
per-member outputs are gathered to all of them (`ShardedTrainer.to_host`); only the primary
process writes config.json, metrics.csv, summary, timing and figures, while checkpoints are
saved by all processes together (orbax: each writes its own shards of the state). The run
directory must be on a file system every process sees.

A process that dies takes the run down with it: the others fail in their next collective or
when the coordination service misses its heartbeats (`heartbeat_timeout` seconds), and the
runner reports it as one line (`DistributedError`). What was written (rows, checkpoints)
stays, and the run resumes with `--resume` once every process is restarted.
"""

from __future__ import annotations

from klrl.errors import ConfigError


class DistributedError(RuntimeError):
    """A process of a distributed run failed (the message says what the others saw)."""


def check_flags(distributed: bool, coordinator: str | None, num_processes: int | None,
                process_id: int | None) -> None:
    """ConfigError (one line) unless the flags are all given, or none (auto-detection)."""
    given = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    named = [k for k, v in given.items() if v is not None]
    if named and not distributed:
        raise ConfigError(f"{named[0]}: got a value without --distributed; allowed only with --distributed")
    if named and len(named) != len(given):
        missing = [k for k in given if k not in named]
        raise ConfigError(f"{missing[0]}: got no value while {', '.join(named)} is set; allowed all of "
                          "--coordinator, --num-processes, --process-id or none (cluster auto-detection)")
    if num_processes is not None and num_processes < 1:
        raise ConfigError(f"--num-processes: got {num_processes}; allowed an integer >= 1")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ConfigError(f"--process-id: got {process_id}; allowed 0 .. {num_processes - 1}")


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               heartbeat_timeout: int = 100) -> None:
    """`jax.distributed.initialize`, with CPU collectives over gloo (the CPU backend has none
    across processes otherwise; GPUs use NCCL whatever this says)."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
                               heartbeat_timeout_seconds=heartbeat_timeout)


def is_primary() -> bool:
    """Whether this process writes the run's files (process 0; always, in a one-process run)."""
    import jax

    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (a no-op in a one-process run)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """Whether `flag` is true in any process (every process must call it at the same point;
    in a one-process run it is `flag`)."""
    import jax

    if jax.process_count() == 1:
        return bool(flag)
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.asarray(multihost_utils.process_allgather(np.int32(bool(flag)))).any())


__all__ = ["DistributedError", "any_process", "barrier", "check_flags", "initialize", "is_primary"]
