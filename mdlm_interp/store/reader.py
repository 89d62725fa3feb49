"""Reading a store: root attributes as a dict, /examples as a DataFrame, other datasets as numpy arrays.

Only the first ``n_rows_done`` rows are visible, so a store that is still being written (or was
killed) reads as the rows committed when it was opened. A store whose run is still writing it (or was
killed) is opened as an HDF5 SWMR reader without file locks, which is what lets a reader open it
while a ``record`` run writes it (the writer is an SWMR writer; see ``store.writer``). A read that races with the writer's flush can fail
for a moment (HDF5 does not make variable-length data SWMR-safe); such reads are retried on a
freshly opened file while the writer holds the store. Before anything is read, ``check_store``
checks the layout; a damaged or foreign file is one ``UsageError``.
"""

import json
import os
import time
from collections.abc import Mapping
from functools import cache, cached_property
from pathlib import Path

import h5py
import numpy as np

from mdlm_interp.errors import UsageError
from mdlm_interp.outputs import holder
from mdlm_interp.store import schema
from mdlm_interp.store.integrity import check_store, damaged, first_line

READ_ATTEMPTS = 25  # reads retried while a writer holds the store (about 3 s in all)


SWMR_METADATA_ATTEMPTS = 20  # HDF5's default for SWMR readers retries a bad checksum for many minutes


def open_file(path) -> h5py.File:
    """Return the HDF5 file at ``path`` opened read-only without file locks.

    A store whose writer is running (or was killed) is marked open for writing; it is then opened
    as an SWMR reader, with HDF5's metadata read retries cut down (``swmr_access``) so that a damaged
    checksum fails at once instead of after minutes of retries.
    """
    try:
        return h5py.File(path, "r", locking=False)
    except OSError as error:
        if "already open for write" not in str(error):
            raise
    fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ, fapl=swmr_access())
    return h5py.File(fid)


@cache
def _hdf5_library():
    """Return the HDF5 C library that h5py uses (ctypes), or None where it cannot be found."""
    import ctypes

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libhdf5" in line}
    except OSError:
        return None
    for path in sorted(paths):
        if "_hl" not in Path(path).name:
            try:
                library = ctypes.CDLL(path)
                library.H5Pset_metadata_read_attempts.argtypes = [ctypes.c_int64, ctypes.c_uint]
                return library
            except (OSError, AttributeError):
                continue
    return None


def swmr_access() -> h5py.h5p.PropFAID:
    """Return file access properties for an SWMR reader: no file locks, few metadata read attempts."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_file_locking(False, True)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_V110, h5py.h5f.LIBVER_LATEST)
    library = _hdf5_library()
    if library is not None:
        library.H5Pset_metadata_read_attempts(fapl.id, SWMR_METADATA_ATTEMPTS)
    return fapl


def retrying(path, attempt: int) -> bool:
    """Return True (after a short sleep) if a failed read of attempt ``attempt`` should be retried:
    a writer holds the store and attempts remain."""
    if attempt + 1 >= READ_ATTEMPTS or holder(path) is None:
        return False
    time.sleep(0.02 * (attempt + 1))
    return True


def open_store(path) -> "Store":
    """Return the Store at ``path``, open for reading; raise UsageError if it is missing or not a whole store."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no store at {path}")
    if not h5py.is_hdf5(path):
        raise UsageError(f"{path} is not an HDF5 file")
    for attempt in range(READ_ATTEMPTS):
        try:
            file = open_file(path)
            break
        except OSError as error:
            if "locking flag" in str(error):  # HDF5 shares one handle per file within a process
                raise UsageError(f"{path} is open in this process with file locking on; close that handle or "
                                 "open it with h5py.File(..., locking=False)") from None
            if not retrying(path, attempt):
                raise damaged(path, f"cannot open it ({first_line(error)})") from None
    try:
        attrs = check_store(file, path)
    except BaseException:
        file.close()
        raise
    return Store(file, path, attrs)


class Store:
    """An open store. Use as a context manager or call ``close()``.

    attrs: dict of root attributes (JSON ones parsed: task_config, settings, dims, merged_from).
    n_rows: rows visible (the attribute n_rows_done). groups: recorded groups, in schema order.
    dims: the named dimensions (k, relevant, layers, heads) of this store.
    attention / gradients / lens / decode: Mappings dataset name -> numpy array of n_rows rows.
    """

    def __init__(self, file: h5py.File, path: Path, attrs: dict | None = None):
        self.file = file
        self.path = path
        self.attrs = {
            name: json.loads(value) if name in schema.JSON_ATTRS else _plain(value)
            for name, value in file.attrs.items()
        }
        self.attrs.update(attrs or {})
        self.n_rows = int(self.attrs["n_rows_done"])
        self.groups = tuple(g for g in schema.GROUPS if g in file)
        self.dims = self.attrs["dims"]

    @cached_property
    def examples(self):
        """Return a pandas DataFrame with one row per (example, condition) and a column per 1-D /examples dataset.

        Multi-column datasets (relevant_spans, topk_ids, topk_probs) are in ``array("examples/NAME")``.
        """
        import pandas as pd

        columns = {f.name: self.array(f.path) for f in schema.fields(("examples",)) if len(f.shape) == 1}
        return pd.DataFrame(columns)

    def array(self, name: str) -> np.ndarray:
        """Return dataset "group/name" as a numpy array of shape [n_rows, ...].

        str datasets give an object array of str, vlen datasets an object array of 1-D arrays.
        Raises UsageError if the group was not recorded, KeyError for a name not in the schema.
        """
        field = _FIELDS.get(name)
        if field is None:
            raise KeyError(f"{name!r} is not a store dataset; known: {sorted(_FIELDS)}")
        if field.group not in self.groups:
            raise UsageError(f"{self.path} has no /{field.group} group (not recorded)")
        if field.dtype == "str":
            return self._read(name, lambda dataset: dataset.asstr()[: self.n_rows])
        return self._read(name, lambda dataset: dataset[: self.n_rows])

    @property
    def attention(self) -> Mapping:
        """Return the /attention datasets as a Mapping name -> array [n_rows, layers, heads]."""
        return _GroupView(self, "attention")

    @property
    def gradients(self) -> Mapping:
        """Return the /gradients datasets as a Mapping name -> array [n_rows] (norms: object array of 1-D arrays)."""
        return _GroupView(self, "gradients")

    @property
    def lens(self) -> Mapping:
        """Return the /lens datasets as a Mapping name -> array [n_rows, layers + 1]."""
        return _GroupView(self, "lens")

    @property
    def decode(self) -> Mapping:
        """Return the /decode datasets as a Mapping name -> array [n_rows] or [n_rows, steps, ...]."""
        return _GroupView(self, "decode")

    def tokens(self, i: int) -> np.ndarray:
        """Return the input token ids of row ``i``: int32 array [input_length]."""
        row = self._row(i, "tokens")
        return self._read("tokens/input_ids", lambda dataset: dataset[row])

    def grad_norms(self, i: int) -> np.ndarray:
        """Return the per-token gradient norms of row ``i``: float32 array [input_length]."""
        row = self._row(i, "gradients")
        return self._read("gradients/norms", lambda dataset: dataset[row])

    def close(self) -> None:
        """Close the file."""
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _read(self, name: str, read):
        """Return ``read(dataset name)``; a failed read is retried on a reopened file while a writer
        holds the store, and otherwise is a UsageError saying the store is damaged."""
        for attempt in range(READ_ATTEMPTS):
            try:
                if not self.file.id.valid:
                    self.file = open_file(self.path)
                return read(self.file[name])
            except (OSError, RuntimeError, ValueError) as error:
                if not retrying(self.path, attempt):
                    raise damaged(self.path, f"cannot read {name} ({first_line(error)})") from None
                if self.file.id.valid:
                    self.file.close()
        raise AssertionError("unreachable")

    def _row(self, i: int, group: str) -> int:
        if group not in self.groups:
            raise UsageError(f"{self.path} has no /{group} group (not recorded)")
        if not -self.n_rows <= i < self.n_rows:
            raise IndexError(f"row {i} out of range for {self.n_rows} rows")
        return i % self.n_rows


_FIELDS = {f.path: f for f in schema.DATA}


class _GroupView(Mapping):
    """Read-only mapping dataset name -> array for one group of a Store (read on access)."""

    def __init__(self, store: Store, group: str):
        if group not in store.groups:
            raise UsageError(f"{store.path} has no /{group} group (not recorded)")
        self.store = store
        self.group = group

    def __getitem__(self, name: str) -> np.ndarray:
        if f"{self.group}/{name}" not in _FIELDS:
            raise KeyError(name)
        return self.store.array(f"{self.group}/{name}")

    def __iter__(self):
        return (f.name for f in schema.fields((self.group,)))

    def __len__(self) -> int:
        return len(schema.fields((self.group,)))


def _plain(value):
    """Return an attribute value as a plain Python int/float/str."""
    return value.item() if isinstance(value, np.generic) else value
