"""The machine's memory, and refusing work that cannot fit in it before allocating anything."""

import os

from mdlm_interp.errors import UsageError


def machine_memory_bytes() -> int:
    """Return the machine's physical memory in bytes (``os.sysconf``; 2**63 where it cannot be read)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2**63


def check_fits(what: str, nbytes: float) -> None:
    """Raise a one-line ``UsageError`` when ``nbytes`` (the memory ``what`` would take) exceeds the machine's
    physical memory; return None otherwise."""
    total = machine_memory_bytes()
    if nbytes > total:
        raise UsageError(f"{what} would take about {nbytes / 2**30:,.1f} GiB, more than this machine's "
                         f"{total / 2**30:,.1f} GiB of memory")
