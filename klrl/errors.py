"""The one error type that user input can raise, and the one way a run stops early.

`ConfigError` carries a single line naming the field, the offending value and what is
allowed. The CLI prints it as `klrl: error: <message>` and exits with status 2, before any
compilation and before anything is written.

`Stopped` (klrl.stopping) ends a run that a signal stopped after writing its rows and a
checkpoint; the CLI prints its one line and exits with `EXIT_STOPPED` (75, sysexits'
EX_TEMPFAIL: try again), which the SLURM templates turn into a requeue.
"""

EXIT_STOPPED = 75


class ConfigError(ValueError):
    """Bad user input (config file, --set override, CLI argument)."""


class Stopped(Exception):
    """A run stopped on a signal, its rows and checkpoints written; the message is the one
    line the CLI prints ("stopped at chunk k/n ...; continue with: klrl train ... --resume")."""
