"""Result stores of experiments: the generic machinery (kinds as data, writer, reader) and the registry of kinds.

A result store is one HDF5 file whose root attribute ``store_kind`` names its kind. Like the record
store (``schema``), every dataset has one row per experiment unit along its first axis and the
other axes are named dimensions (``dims``) or literal sizes; ``StoreKind.markdown()`` renders the
tables that docs/store.md carries verbatim (a test keeps them equal). The store names no experiment:
each experiment owns its kind's schema and registers it with ``register_result_kind`` (the circuit
experiments' in ``circuits/schemas.py``, which ``import mdlm_interp`` loads), and every reader
(``open_results``, ``result_kind``, ``store.kinds``) looks kinds up here.

Result stores are written whole, once the experiment is done: to a temporary file in the output's
folder, renamed over the output at the end, so an interrupted run leaves nothing half-written. The
batches of a long run are committed meanwhile by ``store.partial``, so a killed run can resume.
"""

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from mdlm_interp.errors import UsageError
from mdlm_interp.store.schema import Attr, Field
from mdlm_interp.version import __version__

if TYPE_CHECKING:  # the writer loads h5py; the kinds as data stay light to import
    from mdlm_interp.store.writer import Provenance

RESULTS_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class StoreKind:
    """One kind of result store: its groups, named dimensions, datasets and root attributes."""

    name: str
    rows: str  # what one row is
    groups: tuple
    dims: dict  # name -> meaning
    data: tuple  # Fields
    attrs: tuple  # Attrs beyond COMMON_ATTRS

    @property
    def all_attrs(self) -> tuple:
        """Return the common root attributes followed by this kind's own."""
        return COMMON_ATTRS + self.attrs

    def field(self, path: str) -> Field:
        """Return the Field at "group/name"; KeyError naming the known ones otherwise."""
        for f in self.data:
            if f.path == path:
                return f
        raise KeyError(f"{path!r} is not a dataset of a {self.name} store; known: {[f.path for f in self.data]}")

    def names(self, group: str, suffix: str = "") -> tuple:
        """Return the names of ``group``'s datasets that end with ``suffix``, without it, in schema order
        (e.g. the sites a patching store covers: ``names("attribution", "_logit_diff")``)."""
        return tuple(f.name.removesuffix(suffix) for f in self.data if f.group == group and f.name.endswith(suffix))

    @property
    def json_attrs(self) -> tuple:
        """Return the names of the root attributes stored as JSON strings."""
        return tuple(a.name for a in self.all_attrs if a.type == "JSON str")

    def markdown(self) -> str:
        """Return the kind as Markdown tables: dims, one table per group, then root attributes."""
        lines = [f"One row per {self.rows}.", "", "| dimension | meaning |", "| --- | --- |"]
        lines += [f"| `{name}` | {doc} |" for name, doc in self.dims.items()]
        for group in self.groups:
            lines += ["", f"#### {self.name}: /{group}", "", "| dataset | dtype | shape | meaning |",
                      "| --- | --- | --- | --- |"]
            for f in self.data:
                if f.group == group:
                    lines.append(f"| `{f.path}` | {f.dtype} | [{', '.join(str(e) for e in f.shape)}] | {f.doc} |")
        lines += ["", f"#### {self.name}: root attributes", "", "| attribute | type | meaning |",
                  "| --- | --- | --- |"]
        lines += [f"| `{a.name}` | {a.type} | {a.doc} |" for a in self.all_attrs]
        return "\n".join(lines) + "\n"


COMMON_ATTRS = (
    Attr("store_kind", "str", "what the store holds: the name of its kind, whose schema this is"),
    Attr("schema_version", "int", f"layout version of this kind (this toolkit writes {RESULTS_SCHEMA_VERSION})"),
    Attr("toolkit_version", "str", "mdlm_interp.__version__ that created the store"),
    Attr("command_line", "str", "the command that created the store"),
    Attr("model_id", "str", "checkpoint directory or hub id"),
    Attr("family", "str", '"llada", "dream", "llama" or "qwen2"'),
    Attr("dtype", "str", "model dtype"),
    Attr("weights_fingerprint", "str", "fingerprint of the loaded weights"),
    Attr("task_config", "JSON str", "task / prompt configuration"),
    Attr("seed", "int", "the run's seed (prompts; random heads)"),
    Attr("settings", "JSON str", "everything that determines the rows"),
    Attr("dims", "JSON str", "the named dimensions and their sizes"),
    Attr("n_rows", "int", "rows in every dataset"),
    Attr("created", "str", "creation time, ISO 8601 UTC"),
)

_KINDS: dict = {}  # name -> (StoreKind, describe)


def register_result_kind(kind: StoreKind, describe) -> StoreKind:
    """Register ``kind`` (replacing one of the same name) with ``describe(path) -> {"kind", "header",
    "conditions"}``, what ``mdlm-interp summary`` says about a store of it; return the kind."""
    _KINDS[kind.name] = (kind, describe)
    return kind


def result_kinds() -> dict:
    """Return the registered result kinds as {name: (StoreKind, describe)}, in registration order."""
    return dict(_KINDS)


def registered_kind(name: str) -> StoreKind:
    """Return the registered ``StoreKind`` called ``name``; KeyError naming the registered ones otherwise."""
    if name not in _KINDS:
        raise KeyError(f"no result kind {name!r} is registered; registered: {sorted(_KINDS)}")
    return _KINDS[name][0]


def provenance_values(kind: StoreKind, provenance: "Provenance") -> dict:
    """Return the root attribute values every result store of ``kind`` takes from ``provenance``: the kind
    and versions, the command line, the model, task config and seed, and the time of writing."""
    return {"store_kind": kind.name, "schema_version": RESULTS_SCHEMA_VERSION, "toolkit_version": __version__,
            "command_line": provenance.command_line, "model_id": provenance.model_id, "family": provenance.family,
            "dtype": provenance.dtype, "weights_fingerprint": provenance.weights_fingerprint,
            "task_config": provenance.task_config, "seed": int(provenance.seed),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def write_root_attributes(file_attrs, kind: StoreKind, values: dict, identity) -> None:
    """Write every root attribute ``kind`` declares from ``values`` into h5py ``file_attrs`` (JSON ones as
    JSON text, ints as int64), then the model ``identity`` (``store.identity.ModelIdentity``)."""
    import numpy as np

    from mdlm_interp.store.identity import write_identity

    for attr in kind.all_attrs:
        value = values[attr.name]
        if attr.type == "JSON str":
            value = json.dumps(value, sort_keys=True)
        file_attrs[attr.name] = np.int64(value) if attr.type == "int" else value
    write_identity(file_attrs, identity)


def write_results(path, kind: StoreKind, columns: dict, *, dims: dict, provenance: "Provenance", settings: dict,
                  attrs: dict, overwrite: bool = False) -> Path:
    """Write a complete result store of ``kind`` to ``path``; return the path.

    ``columns`` maps every dataset path of the kind to its rows (as for ``StoreWriter.append``: arrays
    [rows, *shape]); ``dims`` gives the sizes of the kind's dimensions; ``attrs`` the kind's own root
    attributes (JSON ones as Python values). The file is written under a temporary name and renamed
    over ``path`` when complete. Raises ValueError for malformed columns, UsageError for an unusable path.
    """
    import h5py
    import numpy as np

    from mdlm_interp.outputs import staged_path
    from mdlm_interp.store.writer import as_rows, check_writable

    path = check_writable(path, overwrite=overwrite)
    expected = {f.path for f in kind.data}
    if set(columns) != expected:
        raise ValueError(f"columns: missing {sorted(expected - set(columns))}, "
                         f"unexpected {sorted(set(columns) - expected)}")
    if set(dims) != set(kind.dims):
        raise ValueError(f"dims must be exactly {sorted(kind.dims)}, got {sorted(dims)}")
    own = {a.name for a in kind.attrs}
    if set(attrs) != own:
        raise ValueError(f"attrs must be exactly {sorted(own)}, got {sorted(attrs)}")
    arrays = {f.path: as_rows(f, columns[f.path], f.row_shape(dims)) for f in kind.data}
    n_rows = {len(a) for a in arrays.values()}
    if len(n_rows) != 1:
        raise ValueError(f"columns have different row counts: { {p: len(a) for p, a in arrays.items()} }")
    values = {**provenance_values(kind, provenance), "settings": settings,
              "dims": {name: int(size) for name, size in dims.items()}, "n_rows": n_rows.pop(), **attrs}
    with staged_path(path) as temporary, h5py.File(temporary, "w") as file:
        write_root_attributes(file.attrs, kind, values, provenance.identity)
        for field in kind.data:
            array = arrays[field.path]
            if array.dtype == object:
                typed = np.empty(len(array), dtype=field.h5_dtype)
                typed[:] = array
                array = typed
            file.create_dataset(field.path, data=array, dtype=field.h5_dtype,
                                compression="gzip" if array.size else None)
    return path


def result_kind(path) -> str | None:
    """Return the ``store_kind`` of the result store at ``path``, or None for anything else (a record store,
    a file that is not HDF5, a missing path), which ``open_store`` then judges."""
    import h5py

    path = Path(path)
    if not path.is_file() or not h5py.is_hdf5(path):
        return None
    try:
        with h5py.File(path, "r") as file:
            kind = file.attrs.get("store_kind")
    except OSError:
        return None
    return None if kind is None else str(kind)


def open_results(path, kind: str | None = None) -> "ResultStore":
    """Return the result store at ``path`` (of kind ``kind`` when given), open for reading.

    Raises UsageError (one line) for a missing file, a file that is not HDF5, not a result store,
    of another kind or schema version, or missing a dataset of its kind.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no store at {path}")
    if not h5py.is_hdf5(path):
        raise UsageError(f"{path} is not an HDF5 file")
    from mdlm_interp.store.reader import open_file

    try:
        file = open_file(path)  # an SWMR reader where the store is being written (a steps store)
    except OSError as error:
        raise UsageError(f"cannot open {path}: {error}") from None
    try:
        found = file.attrs.get("store_kind")
        if found is None:
            what = "a record store" if "n_rows_done" in file.attrs else "not an mdlm-interp result store"
            raise UsageError(f"{path} is {what}; expected a {kind or 'result'} store")
        found = str(found)
        if found not in _KINDS or (kind is not None and found != kind):
            raise UsageError(f"{path} is a {found} store; expected a {kind} store")
        if int(file.attrs["schema_version"]) != RESULTS_SCHEMA_VERSION:
            raise UsageError(f"{path} has {found} schema version {file.attrs['schema_version']}; this toolkit reads "
                             f"{RESULTS_SCHEMA_VERSION}")
        for field in _KINDS[found][0].data:
            if field.path not in file:
                raise UsageError(f"{path} is damaged: {field.path} is missing")
    except BaseException:
        file.close()
        raise
    return ResultStore(file, path, _KINDS[found][0])


class ResultStore:
    """An open result store; use as a context manager or call ``close()``.

    kind: its ``StoreKind``; attrs: root attributes (JSON ones parsed); dims: named dimension sizes;
    n_rows: rows per dataset.
    """

    def __init__(self, file, path: Path, kind: StoreKind):
        self.file = file
        self.path = path
        self.kind = kind
        self.attrs = {name: json.loads(value) if name in kind.json_attrs else _plain(value)
                      for name, value in file.attrs.items()}
        self.dims = self.attrs["dims"]
        self.n_rows = int(self.attrs["n_rows"])

    def array(self, name: str) -> "numpy.ndarray":
        """Return dataset "group/name" as a numpy array [rows, ...] (str datasets: an object array of str)."""
        field = self.kind.field(name)
        dataset = self.file[name]
        return dataset.asstr()[:] if field.dtype == "str" else dataset[:]

    def frame(self, group: str):
        """Return a pandas DataFrame with one column per 1-D dataset of ``group``."""
        import pandas as pd

        scalars = [f for f in self.kind.data if f.group == group and len(f.shape) == 1]
        return pd.DataFrame({f.name: self.array(f.path) for f in scalars})

    @cached_property
    def examples(self):
        """Return the per-row DataFrame: the datasets of the kind's first group (one row per unit)."""
        return self.frame(self.kind.groups[0])

    def close(self) -> None:
        """Close the file."""
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _plain(value):
    import numpy as np

    return value.item() if isinstance(value, np.generic) else value
