"""The exception types that the command line turns into an exit code 2: ``UsageError`` (printed as one line)
and ``PeerFailed`` (not printed: another process of a torchrun run printed its own error)."""


class UsageError(ValueError):
    """Bad input from the user (a path, a flag value, a checkpoint): reported as one line, exit 2."""


class PeerFailed(RuntimeError):
    """Another process of a sharded run (torchrun) failed, so this one stopped too (``sharding.Shard``); that
    process reports its own error, this one ends quietly with exit 2."""
