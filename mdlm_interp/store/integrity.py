"""Is an open HDF5 file a whole store? Checked before a store is read or resumed.

``check_store`` looks at the structure only (it reads attributes and dataset headers, never the rows):
the root attributes of the schema with JSON ones parseable, the status and row counts consistent,
and every dataset of every recorded group present with its dtype, row shape and a length equal to
the committed row count. A running store may hold more rows than it committed (a run killed between
writing a chunk and counting it); a complete one holds exactly ``n_planned``. Row data that a flipped
bit or a truncated file damaged is found when it is read (gzip chunks carry a checksum); the reader
and the resume copy turn that into the same one-line ``UsageError``.
"""

import json
from pathlib import Path

import h5py
import numpy as np

from mdlm_interp.errors import UsageError
from mdlm_interp.store import schema
from mdlm_interp.store.layout import dtype_matches, first_line

__all__ = ["STATUSES", "check_store", "damaged", "first_line"]

STATUSES = ("running", "complete")


def damaged(path, what: str) -> UsageError:
    """Return the UsageError for a damaged store at ``path``: one line saying ``what`` is wrong."""
    return UsageError(f"{path} is damaged: {what} (record it again with --overwrite)")


def check_store(file: h5py.File, path) -> dict:
    """Raise UsageError (one line) unless ``file`` is a whole store of this schema version.

    Returns the root attributes as a dict, JSON ones parsed. Any error h5py raises while reading a
    damaged file's metadata becomes the same one-line UsageError.
    """
    try:
        return _check(file, path)
    except UsageError:
        raise
    except Exception as error:  # h5py reading a damaged header: OSError, KeyError, RuntimeError, ...
        raise damaged(path, f"cannot read its layout ({first_line(error)})") from None


def _check(file: h5py.File, path) -> dict:
    if "store_kind" in file.attrs:
        raise UsageError(f"{path} is a {file.attrs['store_kind']} store, not a record store "
                         "(read it with mdlm_interp.store.results.open_results)")
    version = file.attrs.get("schema_version")
    if version is None:
        raise UsageError(f"{path} is not an mdlm-interp store (no schema_version attribute)")
    if int(version) != schema.SCHEMA_VERSION:
        raise UsageError(f"{path} has schema version {version}; this toolkit reads {schema.SCHEMA_VERSION}")
    attrs = {}
    for attr in schema.ATTRS:
        if attr.name not in file.attrs:
            if attr.name == "merged_from":
                continue
            raise damaged(path, f"root attribute {attr.name} is missing")
        value = file.attrs[attr.name]
        value = value.item() if isinstance(value, np.generic) else value
        if attr.type == "JSON str":
            try:
                value = json.loads(value)
            except (TypeError, ValueError):
                raise damaged(path, f"root attribute {attr.name} is not valid JSON") from None
        elif attr.type == "int" and not isinstance(value, int):
            raise damaged(path, f"root attribute {attr.name} is not an integer")
        elif attr.type == "str" and not isinstance(value, str):
            raise damaged(path, f"root attribute {attr.name} is not text")
        attrs[attr.name] = value
    for name in ("settings", "task_config", "dims"):
        if not isinstance(attrs[name], dict):
            raise damaged(path, f"root attribute {name} is not a JSON object")
    if attrs["status"] not in STATUSES:
        raise damaged(path, f"status is {attrs['status']!r}, not one of {', '.join(STATUSES)}")
    if attrs["seed"] < 0:
        raise damaged(path, f"root attribute seed is negative ({attrs['seed']})")
    n_rows, n_planned = attrs["n_rows_done"], attrs["n_planned"]
    if not 0 <= n_rows <= n_planned:
        raise damaged(path, f"n_rows_done {n_rows} is outside 0..n_planned ({n_planned})")
    if attrs["status"] == "complete" and n_rows != n_planned:
        raise damaged(path, f"it is complete with {n_rows} of {n_planned} planned rows")
    if "examples" not in file:
        raise damaged(path, "no /examples group")
    groups = [g for g in schema.GROUPS if g in file]
    dims = attrs["dims"]
    missing_dims = schema.required_dims(groups) - set(dims)
    if missing_dims or not all(isinstance(dims[d], int) and dims[d] > 0 for d in schema.required_dims(groups)):
        raise damaged(path, f"dims {dims} do not give a positive size to each of {sorted(schema.required_dims(groups))}")
    merged = "merged_from" in attrs
    for field in schema.fields(groups):
        if field.path not in file or not isinstance(file[field.path], h5py.Dataset):
            raise damaged(path, f"dataset {field.path} is missing")
        dataset = file[field.path]
        if dataset.shape[1:] != field.row_shape(dims):
            raise damaged(path, f"{field.path} has rows of shape {list(dataset.shape[1:])}, expected "
                                f"{list(field.row_shape(dims))}")
        if not dtype_matches(dataset.dtype, field.dtype):
            raise damaged(path, f"{field.path} has dtype {dataset.dtype}, expected {field.dtype}")
        length = dataset.shape[0]
        if length < n_rows or (attrs["status"] == "complete" and length != n_rows):
            raise damaged(path, f"{field.path} has {length} rows, the store committed {n_rows}")
        if merged and dataset.is_virtual:
            for source in dataset.virtual_sources():
                if not (Path(path).parent / source.file_name).is_file():
                    raise UsageError(f"{path} is a merged store whose shard {source.file_name} is missing")
    return attrs
