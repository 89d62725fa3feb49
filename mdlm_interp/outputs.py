"""Output paths that never lose data: checks before any work, an exclusive lock per output, and
folders and files that replace an existing one only once they are complete.

Every command that writes a store, a checkpoint folder or a file goes through here, so the rules are
the same everywhere: an existing non-empty output is refused unless the caller passes ``overwrite``;
the new output is built next to the old one and swapped in only when it is complete (a failure or a
kill leaves the old output as it was); and two processes never write the same output (the second
is refused while the first holds ``OUTPUT.lock``, a lock that the kernel releases if the holder dies).
"""

import errno
import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from mdlm_interp.errors import UsageError

LOCK_SUFFIX = ".lock"


def output_path(path) -> Path:
    """Return ``path`` as a Path; UsageError if it names no file or folder ("", ".", "..", "/")."""
    text = str(path)
    if not text.strip() or Path(text).name in ("", ".", ".."):
        raise UsageError(f"output path {text!r} names no file or folder")
    return Path(text)


def lock_path(output) -> Path:
    """Return the lock file of ``output``: ``OUTPUT.lock`` next to it."""
    output = Path(output)
    return output.with_name(output.name + LOCK_SUFFIX)


class OutputLock:
    """An exclusive lock on an output path, held by this process until ``release()`` (or its death).

    The lock is ``flock`` on the file ``OUTPUT.lock``, which holds the owner's pid and is removed on
    release. ``acquire()`` raises ``UsageError`` naming the pid when another process holds it. On a
    file system without flock the lock is a no-op.
    """

    def __init__(self, output):
        self.output = Path(output)
        self.path = lock_path(output)
        self.fd = None

    def acquire(self) -> "OutputLock":
        """Take the lock (not blocking); return self. Raises UsageError if another process holds it."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise UsageError(f"cannot write {self.output}: cannot create {self.path.name}: "
                                 f"{error.strerror or error}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                raise UsageError(f"{self.output} is being written by another process"
                                 f"{f' (pid {owner})' if owner else ''}; wait for it or stop it first") from None
            except OSError as error:
                if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    os.close(fd)
                    raise
            # the previous owner may have removed the file between our open and our flock
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and release the lock (idempotent)."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()


def holder(output) -> str | None:
    """Return the pid (as text, "" if unknown) of the process holding ``output``'s lock, or None if
    no process holds it; touches nothing."""
    try:
        fd = os.open(lock_path(output), os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


def check_not_held(output) -> None:
    """Raise UsageError if another process holds the lock of ``output``; touch nothing."""
    owner = holder(output)
    if owner is not None:
        raise UsageError(f"{output} is being written by another process{f' (pid {owner})' if owner else ''}; "
                         "wait for it or stop it first")


def check_folder_writable(folder: Path, output: Path) -> None:
    """Raise UsageError unless files can be created in ``folder`` (probing with a temporary file)."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-", suffix=".tmp"):
            pass
    except OSError as error:
        raise UsageError(f"cannot write {output}: {error.strerror or error}") from None


def check_output_file(path, *, overwrite: bool = False, flag: str = "--overwrite") -> Path:
    """Return ``path`` as a Path if a file can be written there; raise UsageError otherwise.

    Refuses a folder, a missing or unwritable parent folder, an existing file unless ``overwrite``
    (``flag`` names the option in the message), and a path another process is writing.
    """
    path = output_path(path)
    if path.is_dir():
        raise UsageError(f"output {path} is a folder, not a file")
    if not path.parent.is_dir():
        raise UsageError(f"cannot write {path}: folder {path.parent} does not exist")
    check_folder_writable(path.parent, path)
    if path.exists() and not overwrite:
        raise UsageError(f"{path} exists; pass {flag} to replace it")
    check_not_held(path)
    return path


def check_output_dir(path, *, overwrite: bool = False, allow=()) -> Path:
    """Return ``path`` as a Path if an output folder can be written there; raise UsageError otherwise.

    Refuses a file, a non-empty folder unless ``overwrite`` (entries named in ``allow``, such as a
    resumable training state, do not count), a place where no folder can be created, and a folder
    another process is writing. Missing parent folders are fine (they are created).
    """
    path = output_path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"output {path} is a file, not a folder")
    if path.is_dir() and not overwrite:
        try:
            entries = [entry.name for entry in path.iterdir() if entry.name not in allow]
        except OSError as error:
            raise UsageError(f"cannot read {path}: {error.strerror or error}") from None
        if entries:
            raise UsageError(f"{path} exists and is not empty; pass --overwrite to replace it")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"cannot write {path}: {existing} is a file, not a folder")
    check_folder_writable(existing, path)
    check_not_held(path)
    return path


def staging_path(output) -> Path:
    """Return where ``output`` is built before it replaces the old one: ``.NAME.partial`` next to it."""
    output = Path(output)
    return output.with_name(f".{output.name}.partial")


def replace_dir(new: Path, out: Path) -> None:
    """Move the complete folder ``new`` to ``out``; an existing ``out`` is removed only after it is moved aside."""
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out, old)
        os.rename(new, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(new, out)


@contextmanager
def staged_dir(out, *, lock: bool = True):
    """Yield an empty staging folder next to ``out``; when the block succeeds it replaces ``out``.

    If the block fails (or the process is killed) ``out`` is left as it was and the staging folder
    is removed (or, after a kill, removed by the next run). ``lock``: hold ``out``'s lock meanwhile
    (pass False when the caller already holds it).
    """
    out = Path(out)
    held = OutputLock(out).acquire() if lock else None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = staging_path(out)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        replace_dir(staging, out)
    finally:
        if held is not None:
            held.release()


@contextmanager
def staged_file(out, *, mode: str = "w", encoding: str | None = "utf-8"):
    """Yield a file object on a temporary file next to ``out``; when the block succeeds the file
    replaces ``out`` atomically (``os.replace``); otherwise it is removed and ``out`` is untouched."""
    out = Path(out)
    with OutputLock(out):
        fd, temporary = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial")
        try:
            with os.fdopen(fd, mode, encoding=encoding) as handle:
                yield handle
            os.replace(temporary, out)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise
