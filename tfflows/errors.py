"""Errors shared across tfflows' layers (standard library only)."""


class UsageError(ValueError):
    """A bad combination of options, or an output folder in the way; the CLI
    prints it as one line and exits with status 2."""
