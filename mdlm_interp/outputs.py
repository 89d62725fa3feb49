"""Output paths that never lose data: checks before any work, an exclusive lock per output, and
folders and files that replace an existing one only once they are complete.

Every command that writes a store, a checkpoint folder or a file goes through here, so the rules are
the same everywhere: an output is a new path or, with ``overwrite``, a regular file (or folder) of the
kind the toolkit writes, never a device, FIFO, socket, a symbolic link to one or a system path; it is
never one of the command's inputs nor another output of the same command; the new output is built
next to the old one and swapped in only when it is complete (a failure or a kill leaves the old
output as it was), with one file mode (``file_mode()``); and two processes never write the same
output (the second is refused while the first holds ``OUTPUT.lock``, a lock that the kernel releases
if the holder dies). A command claims all its outputs at once, before any work, with
``claim_outputs``; the command line releases its claims when the command ends (``release_claims``).
"""

import errno
import fcntl
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mdlm_interp.errors import UsageError

LOCK_SUFFIX = ".lock"
FILE_MODE = 0o644  # every file the toolkit writes, less the umask
SYSTEM_ROOTS = ("/dev", "/proc", "/sys", "/boot", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/run",
                "/usr/bin", "/usr/sbin", "/usr/lib", "/usr/include", "/usr/share")
SIGNATURES = {".h5": (b"\x89HDF\r\n\x1a\n", "an HDF5"), ".png": (b"\x89PNG\r\n\x1a\n", "a PNG")}  # what an
# existing output with that suffix starts with when the toolkit wrote it
_HELD: dict[str, list] = {}  # lock file -> [fd, depth] of the locks this process holds (a lock nests)


def output_path(path) -> Path:
    """Return ``path`` as a Path; UsageError if it names no file or folder ("", ".", "..", "/")."""
    text = str(path)
    if not text.strip() or Path(text).name in ("", ".", ".."):
        raise UsageError(f"output path {text!r} names no file or folder")
    return Path(text)


def file_mode() -> int:
    """Return the mode of every file the toolkit writes: ``FILE_MODE`` less the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return FILE_MODE & ~mask


def apply_file_mode(path) -> None:
    """Give the file ``path``, or every file below the folder ``path``, the mode ``file_mode()`` (for files
    that a library created with its own mode: mkstemp's 0600, h5py's or safetensors' 0666 less the umask)."""
    path = Path(path)
    mode = file_mode()
    for file in (path.rglob("*") if path.is_dir() else [path]):
        if file.is_file() and not file.is_symlink():
            os.chmod(file, mode)


def check_output_kind(path, *, folder: bool = False) -> None:
    """Raise UsageError unless ``path`` may be an output: new, or an existing regular file (``folder``: a
    folder), not a system path; a symbolic link is judged by what it points to (a dangling one is refused)."""
    path = Path(path)
    resolved = os.path.realpath(path)
    for root in SYSTEM_ROOTS:
        if resolved == root or resolved.startswith(root.rstrip("/") + "/"):
            raise UsageError(f"cannot write {path}: {resolved} is a system path; choose an output outside {root}")
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # a new path (its folder is checked by the caller)
        if os.path.islink(path):
            raise UsageError(f"cannot write {path}: it is a symbolic link to a missing path") from None
        return
    except OSError as error:
        raise UsageError(f"cannot write {path}: {error.strerror or error}") from None
    if folder and not stat.S_ISDIR(mode):
        raise UsageError(f"output {path} is {_kind(mode)}, not a folder")
    if not folder and not stat.S_ISREG(mode):
        raise UsageError(f"output {path} is {_kind(mode)}, not a regular file"
                         + ("" if stat.S_ISDIR(mode) else "; mdlm-interp writes only new paths or files it wrote"))


def _kind(mode: int) -> str:
    """Return what a file of ``mode`` is, in words ("a FIFO", "a character device", ...)."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a file"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_signature(path) -> None:
    """Raise UsageError if the existing file ``path`` has a suffix of ``SIGNATURES`` (.h5, .png) but does not
    start as the toolkit's files of that kind do (so ``--overwrite`` replaces only what the toolkit wrote)."""
    path = Path(path)
    expected = SIGNATURES.get(path.suffix.lower())
    if expected is None or not path.is_file():
        return
    signature, name = expected
    try:
        with open(path, "rb") as handle:
            start = handle.read(len(signature))
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror or error}") from None
    if start != signature:
        raise UsageError(f"{path} is not {name} file (not written by mdlm-interp); remove it yourself to "
                         "write there")


def same_path(a, b) -> bool:
    """Return True if ``a`` and ``b`` name the same file or folder (same resolved path, or the same inode
    on the same device: hard links, bind mounts)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        first, second = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def lock_path(output) -> Path:
    """Return the lock file of ``output``: ``OUTPUT.lock`` next to it."""
    output = Path(output)
    return output.with_name(output.name + LOCK_SUFFIX)


class OutputLock:
    """An exclusive lock on an output path, held by this process until ``release()`` (or its death).

    The lock is ``flock`` on the file ``OUTPUT.lock``, which holds the owner's pid and is removed on
    release. ``acquire()`` raises ``UsageError`` naming the pid when another process holds it, and creates
    the output's missing parent folders (where the lock file lives; an output folder's parents are created
    anyway). On a file system without flock the lock is a no-op.
    """

    def __init__(self, output):
        self.output = Path(output)
        self.path = lock_path(output)
        self.fd = None

    def acquire(self) -> "OutputLock":
        """Take the lock (not blocking); return self. Raises UsageError if another process holds it.
        Within one process the lock nests: a path this process holds is taken again (released by the
        outermost ``release``)."""
        key = os.path.abspath(self.path)
        if key in _HELD:
            _HELD[key][1] += 1
            self.fd = _HELD[key][0]
            return self
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
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
        _HELD[key] = [fd, 1]
        return self

    def release(self) -> None:
        """Remove the lock file and release the lock (idempotent; a nested lock only counts down)."""
        if self.fd is None:
            return
        key = os.path.abspath(self.path)
        if key in _HELD:
            _HELD[key][1] -= 1
            if _HELD[key][1] > 0:
                self.fd = None
                return
            del _HELD[key]
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
    no other process holds it (this process's own locks do not count); touches nothing."""
    if os.path.abspath(lock_path(output)) in _HELD:
        return None
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

    Refuses what ``check_output_kind`` refuses (a folder, a device, FIFO or socket, a system path), a
    missing or unwritable parent folder, an existing file unless ``overwrite`` (``flag`` names the option
    in the message), and a path another process is writing.
    """
    path = output_path(path)
    check_output_kind(path)
    if not path.parent.is_dir():
        raise UsageError(f"cannot write {path}: folder {path.parent} does not exist")
    check_folder_writable(path.parent, path)
    if path.exists() and not overwrite:
        raise UsageError(f"{path} exists; pass {flag} to replace it")
    check_not_held(path)
    return path


def check_output_dir(path, *, overwrite: bool = False, allow=()) -> Path:
    """Return ``path`` as a Path if an output folder can be written there; raise UsageError otherwise.

    Refuses what ``check_output_kind`` refuses (a file, a device, a system path), a non-empty folder
    unless ``overwrite`` (entries named in ``allow``, such as a resumable training state, do not count),
    a place where no folder can be created, and a folder another process is writing. Missing parent
    folders are fine (they are created).
    """
    path = output_path(path)
    check_output_kind(path, folder=True)
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
    """Yield an empty staging folder next to ``out``; when the block succeeds its files get ``file_mode()``
    and it replaces ``out``.

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
        apply_file_mode(staging)
        replace_dir(staging, out)
    finally:
        if held is not None:
            held.release()


@contextmanager
def staged_path(out):
    """Yield a temporary file path next to ``out`` (an empty file, for writers that open a path, like h5py);
    when the block succeeds the file gets ``file_mode()`` and replaces ``out`` atomically (``os.replace``);
    otherwise it is removed and ``out`` is untouched. Holds ``out``'s lock meanwhile (nesting with a claim)."""
    out = Path(out)
    with OutputLock(out):
        fd, temporary = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial")
        os.close(fd)
        try:
            yield Path(temporary)
            apply_file_mode(temporary)
            os.replace(temporary, out)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise


@contextmanager
def staged_file(out, *, mode: str = "w", encoding: str | None = "utf-8"):
    """Yield a file object on a temporary file next to ``out``; when the block succeeds the file
    replaces ``out`` as ``staged_path`` does (mode ``file_mode()``); otherwise ``out`` is untouched."""
    with staged_path(out) as temporary, open(temporary, mode, encoding=encoding) as handle:
        yield handle


@dataclass
class Claim:
    """The outputs a command claimed: ``paths`` (flag -> Path, in the order given) and the locks held on them
    until ``release()`` (also a context manager)."""

    paths: dict
    locks: list = field(default_factory=list)

    def release(self) -> None:
        """Release every lock of the claim (idempotent)."""
        for lock in reversed(self.locks):
            lock.release()
        self.locks = []
        if self in _CLAIMS:
            _CLAIMS.remove(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.release()


_CLAIMS: list[Claim] = []


def claim_outputs(outputs: dict, inputs=(), *, overwrite: bool = False, folders=()) -> Claim:
    """Check every output of a command at once, before any work, and lock them; return the ``Claim``.

    outputs: flag -> path (None: not asked for), e.g. {"--out": "p.h5", "--figures": "figs"}; a flag in
    ``folders`` is a folder output (``check_output_dir``), any other a file (``check_output_file``).
    inputs: the paths the command reads (stores, models, adapters). Raises a one-line UsageError for an
    output refused by those checks (existing without ``overwrite``, a device, FIFO, socket, system path)
    or by ``check_signature`` (an existing .h5 or .png file the toolkit did not write), an output that is
    one of the inputs, two outputs that are one path, and an output another process is writing. The claim
    stays registered until ``release()`` or ``release_claims()`` (which the command line calls after every
    command).
    """
    paths = {flag: output_path(path) for flag, path in outputs.items() if path is not None}
    flags = list(paths)
    for index, flag in enumerate(flags):
        for source in inputs:
            if source is not None and same_path(paths[flag], source):
                raise UsageError(f"{flag} {paths[flag]} is one of the command's inputs; write it elsewhere")
        for other in flags[:index]:
            if same_path(paths[flag], paths[other]):
                raise UsageError(f"{flag} {paths[flag]} is also {other}: a command writes each output to its "
                                 "own path")
    for flag, path in paths.items():
        (check_output_dir if flag in folders else check_output_file)(path, overwrite=overwrite)
        check_signature(path)
    claim = Claim(paths)
    try:
        for path in paths.values():
            claim.locks.append(OutputLock(path).acquire())
    except BaseException:
        claim.release()
        raise
    _CLAIMS.append(claim)
    return claim


def release_claims() -> None:
    """Release every claim this process still holds (the command line calls it when a command ends)."""
    for claim in list(_CLAIMS):
        claim.release()
