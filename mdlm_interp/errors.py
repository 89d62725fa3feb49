"""The one exception type that the command line turns into a one-line error and exit code 2."""


class UsageError(ValueError):
    """Bad input from the user (a path, a flag value, a checkpoint): reported as one line, exit 2."""
