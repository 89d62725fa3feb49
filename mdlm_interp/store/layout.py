"""One check of a file's layout against its schema, for every kind of file the toolkit writes.

A ``Layout`` is a kind's schema as data: its root attributes (``schema.Attr``: "int", "str", "bool",
"number", "JSON str"), its datasets (``schema.Field``-like: ``path``, ``dtype``, ``shape``) and which
attributes give the sizes of its axes. ``check_layout`` reads attributes and dataset headers, never
the rows, and says in one line (``UsageError``, exit 2) what is wrong: a missing or mistyped
attribute, JSON that does not parse or is not an object where one is needed, a negative count, a
dimension the ``dims`` attribute does not give, a missing dataset, another dtype, an extra or missing
axis, a length that disagrees with the row count. Record stores (``integrity.check_store``), result
stores (``results.StoreKind`` via ``result_layout``) and decode traces use it; a new kind registers its
Layout in ``store.kinds``.
"""

import json
from dataclasses import dataclass

import h5py
import numpy as np

from mdlm_interp.errors import UsageError


@dataclass(frozen=True)
class Dataset:
    """One dataset of a kind without a row axis (e.g. a decode trace): its path, dtype and axis names."""

    path: str
    dtype: str
    shape: tuple
    doc: str


@dataclass(frozen=True)
class Layout:
    """A file kind's schema: ``attrs`` (required root attributes), ``data`` (datasets whose shape entries are
    "rows", a name, "NAME+1" or an int), ``rows_attr`` (the attribute giving "rows"; None: inferred),
    ``dims_attr`` (the JSON attribute giving named sizes; None: every name is inferred from the first
    dataset that uses it), ``objects`` (JSON attributes that must be objects) and ``counts`` (integer
    attributes that must not be negative)."""

    kind: str
    attrs: tuple
    data: tuple
    rows_attr: str | None = "n_rows"
    dims_attr: str | None = "dims"
    objects: tuple = ("settings", "task_config", "dims")
    counts: tuple = ("seed",)


def damaged(path, what: str) -> UsageError:
    """Return the UsageError for a damaged file at ``path``: one line saying ``what`` is wrong."""
    return UsageError(f"{path} is damaged: {what}")


def check_layout(file: h5py.File, path, layout: Layout) -> dict:
    """Return the root attributes of ``file`` (JSON ones parsed) after checking them and every dataset's
    header against ``layout``; ``UsageError`` (one line naming ``path``) for the first thing wrong. Any
    error h5py raises on a damaged header becomes the same one-line error."""
    try:
        attrs = read_attrs(file, path, layout)
        check_datasets(file, path, layout, attrs)
        return attrs
    except UsageError:
        raise
    except Exception as error:  # h5py reading a damaged header: OSError, KeyError, RuntimeError, ...
        raise damaged(path, f"cannot read its layout ({first_line(error)})") from None


def read_attrs(file: h5py.File, path, layout: Layout) -> dict:
    """Return the layout's root attributes of ``file``, typed and JSON ones parsed; UsageError if one is
    missing, of another type, not JSON, not an object where one is needed, or a negative count."""
    attrs = {}
    for attr in layout.attrs:
        if attr.name not in file.attrs:
            raise damaged(path, f"root attribute {attr.name} is missing")
        value = file.attrs[attr.name]
        value = value.item() if isinstance(value, np.generic) else value
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if attr.type == "JSON str":
            try:
                value = json.loads(value)
            except (TypeError, ValueError):
                raise damaged(path, f"root attribute {attr.name} is not valid JSON") from None
        elif not _typed(value, attr.type):
            raise damaged(path, f"root attribute {attr.name} is {_what(value)}, not {TYPE_WORDS[attr.type]}")
        attrs[attr.name] = value
    for name in layout.objects:
        if name in attrs and not isinstance(attrs[name], dict):
            raise damaged(path, f"root attribute {name} is not a JSON object")
    for name in (*layout.counts, *([layout.rows_attr] if layout.rows_attr else [])):
        if name in attrs and attrs[name] < 0:
            raise damaged(path, f"root attribute {name} is negative ({attrs[name]})")
    return attrs


TYPE_WORDS = {"int": "an integer", "str": "text", "bool": "a boolean", "number": "a number"}


def _typed(value, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return True


def _what(value) -> str:
    return {str: "text", bool: "a boolean", int: "an integer", float: "a number"}.get(type(value), "an array")


def check_datasets(file: h5py.File, path, layout: Layout, attrs: dict) -> None:
    """Raise UsageError unless every dataset of ``layout`` is in ``file`` with its dtype and shape: "rows" is
    ``attrs[layout.rows_attr]``, a name is its size in the dims attribute (or, without one, the size
    first seen), "NAME+1" one more."""
    sizes = {}
    if layout.dims_attr is not None:
        dims = attrs[layout.dims_attr]
        for name, size in dims.items():
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise damaged(path, f"dims gives {name} the size {size!r}, not a non-negative integer")
        sizes.update(dims)
    if layout.rows_attr is not None:
        sizes["rows"] = attrs[layout.rows_attr]
    for field in layout.data:
        if field.path not in file or not isinstance(file[field.path], h5py.Dataset):
            raise damaged(path, f"dataset {field.path} is missing")
        dataset = file[field.path]
        if not dtype_matches(dataset.dtype, field.dtype):
            raise damaged(path, f"{field.path} has dtype {dataset.dtype}, expected {field.dtype}")
        if len(dataset.shape) != len(field.shape):
            raise damaged(path, f"{field.path} has {len(dataset.shape)} axes {list(dataset.shape)}, expected "
                                f"{len(field.shape)} ({', '.join(map(str, field.shape))})")
        for axis, (entry, length) in enumerate(zip(field.shape, dataset.shape)):
            expected = _size(entry, sizes, length, layout, path)
            if length != expected:
                raise damaged(path, f"{field.path} has {length} along axis {axis} ({entry}), expected {expected}")


def _size(entry, sizes: dict, length: int, layout: Layout, path) -> int:
    """Return the size an axis named ``entry`` must have (learning it from ``length`` where it is inferred)."""
    if isinstance(entry, int):
        return entry
    name, extra = (entry[:-2], 1) if entry.endswith("+1") else (entry, 0)
    if name not in sizes:
        if layout.dims_attr is not None and name != "rows":
            raise damaged(path, f"dims has no key {name!r}")
        sizes[name] = length - extra
    return sizes[name] + extra


def dtype_matches(dtype: np.dtype, expected: str) -> bool:
    """Return True if an HDF5 dataset's ``dtype`` is the schema dtype ``expected`` ("str", "vlen int32", ...)."""
    if expected == "str":
        return h5py.check_string_dtype(dtype) is not None
    if expected.startswith("vlen "):
        base = h5py.check_vlen_dtype(dtype)
        return base is not None and np.dtype(base) == np.dtype(expected.removeprefix("vlen "))
    return dtype == np.dtype(expected)


def first_line(error: BaseException) -> str:
    """Return the first line of an exception's message (its type name if the message is empty)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def result_layout(kind) -> Layout:
    """Return the Layout of a result store kind (``store.results.StoreKind``: ``all_attrs``, ``data``)."""
    return Layout(kind.name, tuple(kind.all_attrs), tuple(kind.data), counts=("seed", "n_rows"))
