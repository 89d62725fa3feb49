"""Merge complete shard stores (one per torchrun process) into one store of HDF5 virtual datasets.

The merged file holds no row data: each dataset maps, in shard order, onto the shards' rows, so the
shards must stay next to it (their paths are stored relative to the merged file's folder). Shards
must agree on everything but the key "shard" of their settings, where a sharded run records its
rank and world size.
"""

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import h5py

from mdlm_interp.errors import UsageError
from mdlm_interp.store import schema
from mdlm_interp.store.reader import open_store
from mdlm_interp.outputs import OutputLock
from mdlm_interp.store.writer import building_path, check_writable, first_difference


def merge_stores(shards, out, *, overwrite: bool = False) -> Path:
    """Write a store at ``out`` whose rows are the rows of ``shards`` concatenated; return its Path.

    Raises UsageError if a shard is missing, invalid or not complete, if shards differ in settings
    (ignoring settings["shard"]), groups or dims, or if ``out`` exists without ``overwrite``.
    """
    shards = [Path(s) for s in shards]
    if not shards:
        raise UsageError("no shard stores to merge")
    out = check_writable(out, overwrite=overwrite)
    layouts, n_rows = {}, []
    first = None
    for shard in shards:
        with open_store(shard) as store:
            if store.attrs["status"] != "complete":
                raise UsageError(f"cannot merge {shard}: its status is {store.attrs['status']!r}, not 'complete'")
            common = {
                "settings": {k: v for k, v in store.attrs["settings"].items() if k != "shard"},
                "groups": list(store.groups),
                "dims": store.dims,
            }
            if first is None:
                first, attrs = common, dict(store.file.attrs)
                layouts = {
                    f.path: (store.file[f.path].dtype, f.row_shape(store.dims)) for f in schema.fields(store.groups)
                }
            elif first_difference(first, common):
                raise UsageError(f"cannot merge {shard} with {shards[0]}: {first_difference(first, common)}")
            n_rows.append(store.n_rows)
    with OutputLock(out):  # the merged file is built aside and replaces an old one only when whole
        building = building_path(out)
        total = sum(n_rows)
        sources = [os.path.relpath(shard.resolve(), out.resolve().parent) for shard in shards]
        with h5py.File(building, "w") as file:
            for path, (dtype, row_shape) in layouts.items():
                layout = h5py.VirtualLayout(shape=(total,) + row_shape, dtype=dtype)
                start = 0
                for source, n in zip(sources, n_rows):
                    if n:
                        layout[start : start + n] = h5py.VirtualSource(source, path, shape=(n,) + row_shape)
                    start += n
                file.create_virtual_dataset(path, layout)
            attrs.update(
                settings=json.dumps(first["settings"], sort_keys=True),
                n_planned=total,
                n_rows_done=total,
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                merged_from=json.dumps(sources),
            )
            for name, value in attrs.items():
                file.attrs[name] = value
        os.replace(building, out)
    return out
