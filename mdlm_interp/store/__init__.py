"""HDF5 store of recorded rows: versioned schema, resumable writer, reader, summary and shard merge.

The layout is documented in docs/store.md, generated from ``schema.DATA`` and ``schema.ATTRS``. The names
below load their modules (and h5py) on first use, so the schemas as data (``store.schema``,
``store.results``) stay light to import.
"""

import importlib

_EXPORTS = {
    "SCHEMA_VERSION": "schema",
    "Provenance": "writer",
    "Store": "reader",
    "StoreWriter": "writer",
    "check_writable": "writer",
    "merge_stores": "merge",
    "open_store": "reader",
    "open_writer": "writer",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"mdlm_interp.store.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'mdlm_interp.store' has no attribute {name!r}")


__all__ = list(_EXPORTS)
