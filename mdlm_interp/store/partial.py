"""Partial results of a run whose result store is written whole at the end (patch, ablate): each completed
batch is committed beside the output, so a killed run continues with ``resume``.

The partial results of the output ``NAME`` live in the folder ``.NAME.batches`` next to it:
``run.json``, the run's key (its settings, planned rows and batch size; written first), and one
``NNNNN.npz`` per completed batch (that batch's columns as numpy arrays, never pickled, plus its
``meta`` as JSON). Each file is written under a temporary name and renamed into place, so a kill at
any moment (SIGKILL, out of memory; not power loss: nothing is fsynced) leaves every committed batch
whole. A resumed run must have the same key; it loads the committed batches instead of computing
them, so its store equals an uninterrupted run's. The folder is removed once the store is written.
The output's lock (``outputs.OutputLock``, held by the command) covers its partial results.
"""

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from mdlm_interp.errors import UsageError
from mdlm_interp.outputs import apply_file_mode, check_not_held, output_path
from mdlm_interp.store.writer import check_writable, first_difference

KEY_FILE = "run.json"
META = "__meta__"  # the npz entry holding a batch's meta as JSON


def partial_path(out) -> Path:
    """Return the folder of ``out``'s partial results: ``.NAME.batches`` next to it."""
    out = Path(out)
    return out.with_name(f".{out.name}.batches")


def check_partial(out, *, resume: bool = False, overwrite: bool = False) -> None:
    """Raise a one-line UsageError, touching nothing, when ``out``'s partial results forbid the run:
    ``resume`` and ``overwrite`` together, ``resume`` with neither partial results nor a store at ``out``,
    or partial results (a killed run) without ``resume`` or ``overwrite`` (which discards them)."""
    out = output_path(out)
    folder = partial_path(out)
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} is not a folder of partial results (not written by mdlm-interp); remove it "
                         f"yourself to write {out}")
    if resume and not folder.exists() and not out.exists():
        raise UsageError(f"nothing to resume: neither {out} nor its partial results {folder} exist; run without "
                         "--resume")
    if folder.exists() and not (resume or overwrite):
        raise UsageError(f"{folder} holds the batches of an interrupted run of {out}; pass --resume to continue "
                         "it or --overwrite to discard it")


def check_result_output(out, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Return the checked output path of a result store written batch by batch: ``store.writer.check_writable``
    and ``check_partial`` (one-line UsageErrors, nothing touched)."""
    path = check_writable(out, resume=resume, overwrite=overwrite)
    check_partial(path, resume=resume, overwrite=overwrite)
    return path


def resumes_complete_store(out, settings: dict, kind: str, *, resume: bool) -> bool:
    """Return True when ``resume`` finds no partial results but a complete ``kind`` store at ``out`` written
    with ``settings`` (nothing is left to do); False when there is work to do. UsageError if that store's
    settings differ from ``settings`` (naming the first difference) or it cannot be read."""
    from mdlm_interp.store.results import open_results

    out = Path(out)
    if not resume or partial_path(out).exists() or not out.exists():
        return False
    with open_results(out, kind) as store:
        stored = store.attrs["settings"]
    difference = first_difference(stored, json.loads(json.dumps(settings)))
    if difference:
        raise UsageError(f"cannot resume {out}: it is complete and {difference} (use --overwrite or another output)")
    return True


class PartialResults:
    """The committed batches of one run (see the module docstring); ``load``, ``commit``, ``remove``."""

    def __init__(self, folder: Path):
        self.folder = folder

    def _batch(self, index: int) -> Path:
        return self.folder / f"{index:05d}.npz"

    def committed(self, index: int) -> bool:
        """Return whether batch ``index`` is committed (without reading it)."""
        return self._batch(index).exists()

    def load(self, index: int) -> tuple[dict, dict] | None:
        """Return the committed batch ``index`` as (columns {path: array}, meta), or None if not committed.
        UsageError (one line) if its file is damaged."""
        path = self._batch(index)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as entries:
                columns = {name: entries[name] for name in entries.files}
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise UsageError(f"cannot resume: {path} is damaged ({error}); pass --overwrite to start again") from None
        meta = json.loads(str(columns.pop(META)))
        return columns, meta

    def commit(self, index: int, columns: dict, meta: dict | None = None) -> None:
        """Commit batch ``index``: its ``columns`` ({path: numpy array}) and JSON-serialisable ``meta``."""
        self._write(self._batch(index),
                    lambda handle: np.savez(handle, **columns, **{META: np.array(json.dumps(meta or {}))}))

    def _write(self, path: Path, fill) -> None:
        fd, temporary = tempfile.mkstemp(dir=self.folder, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                fill(handle)
            apply_file_mode(temporary)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def remove(self) -> None:
        """Remove the partial results (once the store is written)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def open_partial(out, key: dict, *, resume: bool = False) -> PartialResults:
    """Return the ``PartialResults`` of a run of ``out`` with ``key`` (JSON-serialisable: everything that
    determines its batches). The caller writes the store, then calls ``remove()``; a failure or a kill
    keeps them for a resume. The caller holds ``out``'s lock (the command line claims it); another
    process's lock is refused here.

    With ``resume`` existing partial results are continued if their key is ``key`` (UsageError naming the
    first difference otherwise); without, they are discarded (the caller checked ``check_partial``).
    """
    out = Path(out)
    check_not_held(out)
    folder = partial_path(out)
    key = json.loads(json.dumps(key))  # tuples -> lists, as they read back
    partial = PartialResults(folder)
    if resume and (folder / KEY_FILE).is_file():
        try:
            stored = json.loads((folder / KEY_FILE).read_text())
        except (OSError, ValueError) as error:
            raise UsageError(f"cannot resume: {folder / KEY_FILE} is damaged ({error}); pass --overwrite to "
                             "start again") from None
        difference = next((found for name in key  # in the key's order: the settings first
                           if (found := first_difference(stored.get(name), key[name], name))), None)
        difference = difference or first_difference(stored, key)
        if difference:
            raise UsageError(f"cannot resume {out}: {difference.replace('the store', 'the interrupted run')} "
                             "(use --overwrite or another output)")
        return partial
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    partial._write(folder / KEY_FILE, lambda handle: handle.write(json.dumps(key, sort_keys=True).encode()))
    return partial
