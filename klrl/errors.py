"""The one error type that user input can raise.

`ConfigError` carries a single line naming the field, the offending value and what is
allowed. The CLI prints it as `klrl: error: <message>` and exits with status 2, before any
compilation and before anything is written.
"""


class ConfigError(ValueError):
    """Bad user input (config file, --set override, CLI argument)."""
