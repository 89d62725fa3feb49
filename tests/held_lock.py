"""Holding an output's lock as another process would, for tests of refusals."""

import fcntl
import os
from contextlib import contextmanager

from mdlm_interp.outputs import lock_path


@contextmanager
def held_elsewhere(path, pid: int = 4242):
    """Hold ``path``'s lock through a descriptor this process's lock table does not know (as another
    process ``pid`` would) while the block runs."""
    fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{pid}\n".encode())
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)
        os.unlink(lock_path(path))
