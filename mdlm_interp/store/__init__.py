"""HDF5 store of recorded rows: versioned schema, resumable writer, reader, summary and shard merge.

The layout is documented in docs/store.md, generated from ``schema.DATA`` and ``schema.ATTRS``.
"""

from mdlm_interp.store.merge import merge_stores
from mdlm_interp.store.reader import Store, open_store
from mdlm_interp.store.schema import SCHEMA_VERSION
from mdlm_interp.store.writer import Provenance, StoreWriter, check_writable, open_writer

__all__ = [
    "SCHEMA_VERSION",
    "Provenance",
    "Store",
    "StoreWriter",
    "check_writable",
    "merge_stores",
    "open_store",
    "open_writer",
]
