"""Resumable writer of a store: create with provenance, append batches of rows, mark complete.

Crash safety (SIGKILL, out of memory; not power loss, the writer never fsyncs): rows reach the file
only in whole chunks of ``rows_per_chunk`` rows. A commit writes the rows' data, flushes, then sets
the root attribute ``n_rows_done`` and flushes again. Because a chunk that holds committed rows is
never written again, gzip can never move it to space that a later write reuses, so a kill at any
moment leaves every committed row readable. Rows appended since the last commit wait in memory and
are lost by a kill (fewer than ``rows_per_chunk``); ``finish()`` writes the last, partial chunk.

Read while written: the file is created complete (every dataset and attribute) under a temporary
name, moved into place, then reopened as an HDF5 SWMR writer, so readers (``open_store``, SWMR
readers without file locks) see the rows committed when they open it.

One writer per store: ``open_writer`` holds ``OUT.lock`` (``outputs.OutputLock``) until the writer is
closed, and refuses a store whose lock another process holds.

An existing file is refused unless ``resume`` or ``overwrite`` is given:

- ``overwrite`` writes the new store to ``pending_path(OUT)`` (``NAME.overwrite.h5``) and moves it
  over OUT only when it is complete, so a failed or killed overwrite leaves the old store whole;
  ``resume`` continues a killed overwrite run from that pending file.
- ``resume`` checks the store's layout and compares its settings, groups, dims and planned rows
  with this run's, then copies the committed rows into a fresh file that replaces it (this reads
  every committed row, so a damaged chunk is found before any work, and drops rows beyond
  ``n_rows_done`` and the SWMR marks of a killed writer); the caller skips the first
  ``writer.n_rows_done`` rows of its plan.
"""

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from mdlm_interp.errors import UsageError
from mdlm_interp.outputs import OutputLock, apply_file_mode, check_not_held, check_output_file, output_path
from mdlm_interp.store import schema
from mdlm_interp.store.identity import ModelIdentity, write_identity
from mdlm_interp.store.integrity import check_store, damaged, first_line
from mdlm_interp.store.reader import open_file
from mdlm_interp.version import __version__

LIBVER = "v110"  # the oldest file format that HDF5 SWMR writes (HDF5 1.10+ reads it)
COPY_ROWS = 1024  # rows per block when a resume copies committed rows


@dataclass(frozen=True)
class Provenance:
    """What produced the store, written as root attributes of the same names; ``identity`` (model id,
    weights fingerprint, adapter name and fingerprint, "" without an adapter) as ``write_identity`` writes it."""

    command_line: str
    model_id: str
    family: str
    dtype: str
    weights_fingerprint: str
    task_config: dict
    seed: int
    adapter: str = ""
    adapter_fingerprint: str = ""

    @property
    def identity(self) -> ModelIdentity:
        """Return the model identity of the store (its four root attributes)."""
        return ModelIdentity(self.model_id, self.weights_fingerprint, self.adapter, self.adapter_fingerprint)


def pending_path(path) -> Path:
    """Return where an ``overwrite`` run writes until it is complete: NAME.overwrite.h5 next to ``path``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.overwrite{path.suffix}")


def building_path(path) -> Path:
    """Return the temporary file a new or resumed store is built in before it replaces ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.building")


def check_writable(path, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Return ``path`` as a Path if a store can be written there; raise UsageError otherwise.

    Refuses a missing or unwritable parent folder, a path that is a folder, both flags at once, an
    existing file unless ``resume`` or ``overwrite``, and a store another process is writing.
    Touches nothing but a probe file in the folder.
    """
    path = output_path(path)
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    if path.exists() and not (resume or overwrite) and not path.is_dir():
        check_not_held(path)
        raise UsageError(f"{path} exists; pass --resume to continue it or --overwrite to replace it")
    check_output_file(path, overwrite=True)
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"cannot write {path}: permission denied")
    return path


def open_writer(
    path,
    *,
    settings: dict,
    provenance: Provenance,
    groups,
    dims: dict,
    n_planned: int,
    resume: bool = False,
    overwrite: bool = False,
    rows_per_chunk: int = 64,
) -> "StoreWriter":
    """Return a StoreWriter for ``path``: a new store, or the existing one when ``resume`` finds one.

    settings: JSON-serialisable dict of everything that determines the rows (compared on resume).
    groups: which of schema.GROUPS to record ("examples" is added if missing).
    dims: ints for the names in schema.DIMS that those groups use (k, relevant, layers, heads).
    n_planned: rows the run will append in total. rows_per_chunk: rows per HDF5 chunk and commit
    (ignored on resume, where the file's chunking is kept).
    Raises UsageError for an unusable path, an existing file without resume/overwrite, a store
    another process is writing, a damaged store to resume, and a resumed store whose settings,
    groups, dims or n_planned differ (naming the first difference).
    """
    path = check_writable(path, resume=resume, overwrite=overwrite)
    unknown = set(groups) - set(schema.GROUPS)
    if unknown:
        raise UsageError(f"unknown record group(s) {sorted(unknown)}; choose from {list(schema.GROUPS)}")
    groups = tuple(g for g in schema.GROUPS if g in set(groups) | {"examples"})
    missing = schema.required_dims(groups) - set(dims)
    if missing:
        raise ValueError(f"dims lacks {sorted(missing)}")
    dims = {name: int(dims[name]) for name in sorted(schema.required_dims(groups))}
    if rows_per_chunk < 1:
        raise ValueError("rows_per_chunk must be at least 1")
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as they will read back
    lock = OutputLock(path).acquire()
    try:
        pending = pending_path(path)
        if resume and (pending.exists() or path.exists()):
            target = pending if pending.exists() else path
            wanted = {"settings": settings, "groups": list(groups), "dims": dims, "n_planned": int(n_planned)}
            file = _reopen(target, wanted)
        else:
            target = pending if path.exists() else path
            if target != pending and pending.exists():
                pending.unlink()  # left by a killed overwrite of a store that is gone since
            file = _create(target, settings, provenance, groups, dims, n_planned, rows_per_chunk)
        return StoreWriter(file, groups, dims, lock=lock, publish_to=path if target == pending else None)
    except BaseException:
        lock.release()
        raise


def _create_datasets(file: h5py.File, groups, dims: dict, rows_per_chunk: int, n_rows: int = 0) -> None:
    for field in schema.fields(groups):
        row_shape = field.row_shape(dims)
        plain = not (field.vlen or field.dtype == "str")
        file.create_dataset(
            field.path,
            shape=(n_rows,) + row_shape,
            maxshape=(None,) + row_shape,
            chunks=(rows_per_chunk,) + row_shape,
            dtype=field.h5_dtype,
            compression="gzip",
            compression_opts=4,
            shuffle=plain,
        )


def build_swmr_file(path: Path, fill) -> h5py.File:
    """Build a file with ``fill(file)`` under a temporary name, move it to ``path``, and return it
    reopened as an SWMR writer."""
    building = building_path(path)
    building.unlink(missing_ok=True)
    try:
        with h5py.File(building, "x", libver=LIBVER, locking=False) as file:
            fill(file)
    except OSError as error:
        building.unlink(missing_ok=True)
        raise UsageError(f"cannot create {path}: {first_line(error)}") from None
    except BaseException:
        building.unlink(missing_ok=True)
        raise
    apply_file_mode(building)
    os.replace(building, path)
    file = h5py.File(path, "r+", libver=LIBVER, locking=False)
    file.swmr_mode = True
    return file


def _create(path, settings, provenance, groups, dims, n_planned, rows_per_chunk) -> h5py.File:
    attrs = {
        "schema_version": schema.SCHEMA_VERSION,
        "toolkit_version": __version__,
        "command_line": provenance.command_line,
        "family": provenance.family,
        "dtype": provenance.dtype,
        "task_config": json.dumps(provenance.task_config, sort_keys=True),
        "seed": int(provenance.seed),
        "settings": json.dumps(settings, sort_keys=True),
        "dims": json.dumps(dims, sort_keys=True),
        "status": "running",
        "n_planned": int(n_planned),
        "n_rows_done": 0,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_identity(attrs, provenance.identity)

    def fill(file):
        for name, value in attrs.items():
            file.attrs[name] = np.int64(value) if isinstance(value, int) else value
        _create_datasets(file, groups, dims, rows_per_chunk)

    return build_swmr_file(Path(path), fill)


def _reopen(path: Path, wanted: dict) -> h5py.File:
    """Check the store at ``path`` against this run (``wanted``: settings, groups, dims, n_planned),
    copy its committed rows into a fresh file that replaces it, and return that file as an SWMR writer."""
    if not h5py.is_hdf5(path):
        raise UsageError(f"cannot resume {path}: it is not an HDF5 file (use --overwrite or another output)")
    try:
        old = open_file(path)
    except OSError as error:
        raise UsageError(f"cannot resume: {damaged(path, f'cannot open it ({first_line(error)})')}") from None
    with old:
        try:
            attrs = check_store(old, path)
        except UsageError as error:
            raise UsageError(f"cannot resume: {error}") from None
        if "merged_from" in attrs:
            raise UsageError(f"cannot resume {path}: it is a merged store")
        stored = {"settings": attrs["settings"], "groups": [g for g in schema.GROUPS if g in old],
                  "dims": attrs["dims"], "n_planned": attrs["n_planned"]}
        difference = first_difference(stored, wanted)
        if difference:
            raise UsageError(f"cannot resume {path}: {difference} (use --overwrite or another output)")
        n_rows = attrs["n_rows_done"]
        rows_per_chunk = old["examples/row"].chunks[0]

        def fill(file):
            for name, value in old.attrs.items():
                file.attrs[name] = value
            _create_datasets(file, wanted["groups"], wanted["dims"], rows_per_chunk, n_rows)
            for field in schema.fields(wanted["groups"]):
                _copy_rows(old, file, field, n_rows, path)

        return build_swmr_file(path, fill)


def _copy_rows(old: h5py.File, new: h5py.File, field: schema.Field, n_rows: int, path) -> None:
    source, target = old[field.path], new[field.path]
    for start in range(0, n_rows, COPY_ROWS):
        stop = min(start + COPY_ROWS, n_rows)
        try:
            rows = source.asstr()[start:stop] if field.dtype == "str" else source[start:stop]
        except (OSError, RuntimeError, ValueError) as error:
            raise damaged(path, f"cannot read {field.path} ({first_line(error)})") from None
        if rows.dtype == object:  # str, vlen: slice assignment would read equal-length rows as 2-D
            typed = np.empty(stop - start, dtype=target.dtype)
            typed[:] = rows
            target.write_direct(typed, dest_sel=np.s_[start:stop])
        else:
            target[start:stop] = rows


def first_difference(stored, wanted, where: str = "") -> str | None:
    """Return one line naming the first key path where two JSON-like values differ, or None if equal."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        for key in sorted(set(stored) | set(wanted), key=str):
            label = f"{where}.{key}" if where else str(key)
            if key not in stored:
                return f"{label} is absent in the store, {wanted[key]!r} in this run"
            if key not in wanted:
                return f"{label} is {stored[key]!r} in the store, absent in this run"
            found = first_difference(stored[key], wanted[key], label)
            if found:
                return found
        return None
    if stored != wanted:
        return f"{where or 'value'} is {stored!r} in the store, {wanted!r} in this run"
    return None


class StoreWriter:
    """Appends batches of rows to an open store; use ``open_writer`` to get one, as a context manager."""

    def __init__(self, file: h5py.File, groups: tuple, dims: dict, lock: OutputLock | None = None,
                 publish_to: Path | None = None):
        self.file = file
        self.path = Path(file.filename)
        self.groups = groups
        self.dims = dims
        self.fields = schema.fields(groups)
        self.n_planned = int(file.attrs["n_planned"])
        self.rows_per_chunk = file["examples/row"].chunks[0]
        self.lock = lock  # released when the writer closes
        self.publish_to = publish_to  # an overwrite run's destination, replaced once the store is complete
        self._n_done = int(file.attrs["n_rows_done"])
        self._pending = []  # validated batches not yet committed
        self._n_pending = 0

    @property
    def n_rows_done(self) -> int:
        """Return the number of rows committed to the file (survive a kill); skip these on resume."""
        return self._n_done

    def append(self, batch: dict) -> int:
        """Add rows; return n_rows_done afterwards (rows are committed in whole chunks).

        batch maps every ``schema.Field.path`` of the recorded groups (e.g. "examples/p_answer",
        "attention/mask_mass_from_answer") to b rows: an array (or anything np.asarray takes, such as
        a CPU tensor) of shape [b, *field.row_shape(dims)] castable ("same_kind") to the field's
        dtype; a sequence of b str for "str" fields; a sequence of b 1-D arrays for "vlen" fields,
        each as long as that row's examples/input_length. Raises ValueError for a malformed batch.
        """
        arrays = self._validate(batch)
        n_rows = len(arrays["examples/row"])
        if self._n_done + self._n_pending + n_rows > self.n_planned:
            raise ValueError(f"appending {n_rows} rows would exceed the {self.n_planned} planned")
        self._pending.append(arrays)
        self._n_pending += n_rows
        full = self._n_pending - self._n_pending % self.rows_per_chunk
        if full:
            self._commit(full)
        return self._n_done

    def finish(self) -> None:
        """Commit the remaining rows, mark the store "complete" and close it (an overwrite run's store
        then replaces the old one); all planned rows are required."""
        self._commit(self._n_pending)
        if self._n_done != self.n_planned:
            raise ValueError(f"finish() after {self._n_done} of {self.n_planned} planned rows")
        self.file.attrs.modify("status", "complete")
        self.file.close()
        if self.publish_to is not None:
            os.replace(self.path, self.publish_to)
            self.path = self.publish_to
        self._release()

    def close(self) -> None:
        """Close the file, dropping rows not yet committed (a resumed run writes them again)."""
        if self.file.id.valid:
            self.file.close()
        self._release()

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _validate(self, batch: dict) -> dict:
        """Return the batch as {path: numpy array} with the fields' dtypes, or raise ValueError."""
        expected = {f.path for f in self.fields}
        missing, extra = expected - set(batch), set(batch) - expected
        if missing or extra:
            raise ValueError(f"batch keys: missing {sorted(missing)}, unexpected {sorted(extra)}")
        arrays = {f.path: as_rows(f, batch[f.path], f.row_shape(self.dims)) for f in self.fields}
        sizes = {path: len(array) for path, array in arrays.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"batch fields have different row counts: {sizes}")
        lengths = arrays["examples/input_length"]
        for field in self.fields:
            if field.vlen and any(len(a) != field.vlen_length(n, self.dims) and not (field.may_be_empty and len(a) == 0)
                                  for a, n in zip(arrays[field.path], lengths)):
                raise ValueError(f"{field.path}: per-row lengths differ from examples/input_length"
                                 + (f" x {' x '.join(field.per_token)}" if field.per_token else ""))
        return arrays

    def _commit(self, n_rows: int) -> None:
        """Write the first n_rows pending rows, flush, then advance n_rows_done and flush again."""
        if not n_rows:
            return
        joined = {path: np.concatenate([b[path] for b in self._pending]) for path in self._pending[0]}
        start, stop = self._n_done, self._n_done + n_rows
        for path, array in joined.items():
            dataset = self.file[path]
            dataset.resize(stop, axis=0)
            if array.dtype == object:  # str, vlen: slice assignment would read equal-length rows as 2-D
                typed = np.empty(n_rows, dtype=dataset.dtype)
                typed[:] = array[:n_rows]
                dataset.write_direct(typed, dest_sel=np.s_[start:stop])
            else:
                dataset[start:stop] = array[:n_rows]
        self.file.flush()
        self.file.attrs.modify("n_rows_done", np.int64(stop))
        self.file.flush()
        self._n_done = stop
        self._n_pending -= n_rows
        self._pending = [{path: array[n_rows:] for path, array in joined.items()}] if self._n_pending else []


def as_rows(field: schema.Field, value, row_shape: tuple) -> np.ndarray:
    """Return ``value`` as an array of rows [rows, *row_shape] for ``field`` (object arrays for str and vlen);
    shared by the record store writer and the result stores."""
    if field.dtype == "str":
        rows = list(value)
        if not all(isinstance(v, str) for v in rows):
            raise ValueError(f"{field.path}: expected a sequence of str")
        out = np.empty(len(rows), dtype=object)
        out[:] = rows
        return out
    if field.vlen:
        rows = [_cast(field, np.asarray(v)) for v in value]
        if any(r.ndim != 1 for r in rows):
            raise ValueError(f"{field.path}: expected one 1-D array per row")
        out = np.empty(len(rows), dtype=object)
        for i, row in enumerate(rows):  # one by one: equal-length rows must not become a 2-D array
            out[i] = row
        return out
    array = np.asarray(value)
    if array.ndim == 0 or array.shape[1:] != row_shape:
        raise ValueError(f"{field.path}: shape {array.shape}, expected [rows, {', '.join(map(str, row_shape))}]")
    return _cast(field, array)


def _cast(field: schema.Field, array: np.ndarray) -> np.ndarray:
    if not np.can_cast(array.dtype, field.numpy_dtype, "same_kind"):
        raise ValueError(f"{field.path}: dtype {array.dtype} cannot become {field.numpy_dtype}")
    return array.astype(field.numpy_dtype, copy=False)
