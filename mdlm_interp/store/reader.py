"""Reading a store: root attributes as a dict, /examples as a DataFrame, other datasets as numpy arrays.

Only the first ``n_rows_done`` rows are visible, so a store that is still being written (or was
killed) reads as its committed rows.
"""

import json
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path

import h5py
import numpy as np

from mdlm_interp.errors import UsageError
from mdlm_interp.store import schema


def open_store(path) -> "Store":
    """Return the Store at ``path``, open for reading; raise UsageError if it is missing or not a valid store."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no store at {path}")
    if not h5py.is_hdf5(path):
        raise UsageError(f"{path} is not an HDF5 file")
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise UsageError(f"cannot open {path}: {error}") from None
    try:
        _check(file, path)
    except BaseException:
        file.close()
        raise
    return Store(file, path)


def _check(file: h5py.File, path: Path) -> None:
    """Raise UsageError unless ``file`` is a readable store of this schema version with its shards present."""
    if "store_kind" in file.attrs:
        raise UsageError(f"{path} is a {file.attrs['store_kind']} store, not a record store "
                         "(read it with mdlm_interp.store.results.open_results)")
    version = file.attrs.get("schema_version")
    if version is None:
        raise UsageError(f"{path} is not an mdlm-interp store (no schema_version attribute)")
    if int(version) != schema.SCHEMA_VERSION:
        raise UsageError(f"{path} has schema version {version}; this toolkit reads {schema.SCHEMA_VERSION}")
    missing = [a.name for a in schema.ATTRS if a.name != "merged_from" and a.name not in file.attrs]
    if missing:
        raise UsageError(f"{path} is damaged: root attribute {missing[0]} is missing")
    n_rows = int(file.attrs["n_rows_done"])
    for field in schema.fields():
        if field.group not in file:
            continue
        if field.path not in file or len(file[field.path]) < n_rows:
            raise UsageError(f"{path} is damaged: {field.path} is missing or shorter than n_rows_done")
        dataset = file[field.path]
        for source in dataset.virtual_sources() if dataset.is_virtual else ():
            if not (path.parent / source.file_name).is_file():
                raise UsageError(f"{path} is a merged store whose shard {source.file_name} is missing")
    if "examples" not in file:
        raise UsageError(f"{path} is damaged: no /examples group")


class Store:
    """An open store. Use as a context manager or call ``close()``.

    attrs: dict of root attributes (JSON ones parsed: task_config, settings, dims, merged_from).
    n_rows: rows visible (the attribute n_rows_done). groups: recorded groups, in schema order.
    dims: the named dimensions (k, relevant, layers, heads) of this store.
    attention / gradients / lens: Mappings dataset name -> numpy array of n_rows rows.
    """

    def __init__(self, file: h5py.File, path: Path):
        self.file = file
        self.path = path
        self.attrs = {
            name: json.loads(value) if name in schema.JSON_ATTRS else _plain(value)
            for name, value in file.attrs.items()
        }
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
        dataset = self.file[name]
        if field.dtype == "str":
            return dataset.asstr()[: self.n_rows]
        return dataset[: self.n_rows]

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

    def tokens(self, i: int) -> np.ndarray:
        """Return the input token ids of row ``i``: int32 array [input_length]."""
        row = self._row(i, "tokens")
        return self.file["tokens/input_ids"][row]

    def grad_norms(self, i: int) -> np.ndarray:
        """Return the per-token gradient norms of row ``i``: float32 array [input_length]."""
        row = self._row(i, "gradients")
        return self.file["gradients/norms"][row]

    def close(self) -> None:
        """Close the file."""
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

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
