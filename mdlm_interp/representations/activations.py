"""The activation store: activations [rows, d] per site in a chunked HDF5 file, with row labels.

Layout (one row = one token position of one prompt run; every site has the same rows):

- ``activations/<site>`` [rows, d]: a site's activations, the dataset named by its TransformerLens hook
  name ("blocks.3.hook_resid_post"); float32, float16, or bfloat16 stored as its raw 16 bits (uint16,
  lossless, half the size; HDF5 has no bfloat16) and turned back to float32 by the reader;
- ``rows/prompt_key``, ``rows/condition``, ``rows/position_group`` (str) and ``rows/position`` (int64);
- ``labels/<name>`` (float64): numeric labels a probe can read (mask count, mask ratio, correct ...);
- root attributes: ``format``, ``format_version``, ``toolkit_version``, ``dtype``, ``sites`` (JSON
  {site: d}), ``labels`` (JSON list), ``settings`` and ``provenance`` (JSON), ``chunk_rows``,
  ``n_rows_done``, ``n_items_done``, ``status`` ("running" or "complete").

Writing streams: appended rows wait in memory until at least ``chunk_rows`` are pending, then all
pending rows are written, the file flushed, and ``n_rows_done`` / ``n_items_done`` advanced and
flushed (an *item* is whatever unit the caller appends whole, e.g. a prompt). Memory stays at about
one chunk plus one append. The file is an HDF5 SWMR writer, so it is readable while written, and a
kill (SIGKILL) loses only uncommitted rows. ``resume`` checks that sites, dtype, labels and settings
match, copies the committed rows into a fresh file that replaces the old one, and the caller skips
the first ``n_items_done`` items.

Reading: ``activation_reader`` (``open_activations``, ``StoreBatches``).
"""

import json
from pathlib import Path

import h5py
import numpy as np

from mdlm_interp.errors import UsageError
from mdlm_interp.outputs import OutputLock, check_output_file
from mdlm_interp.store.writer import build_swmr_file
from mdlm_interp.version import __version__

FORMAT, FORMAT_VERSION = "mdlm-interp activations", 1
DTYPES = {"float32": "f4", "float16": "f2", "bfloat16": "u2"}
STRING_COLUMNS = ("prompt_key", "condition", "position_group")
COPY_ROWS = 4096


def _to_stored(values, dtype: str) -> np.ndarray:
    """Return activations (array or tensor) [n, d] as the stored numpy dtype."""
    if dtype == "bfloat16":
        import torch

        return torch.as_tensor(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=DTYPES[dtype])


def _from_stored(values: np.ndarray, dtype: str) -> np.ndarray:
    """Return stored activations as float32 [n, d]."""
    if dtype == "bfloat16":
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(np.float32)


def _open_read(path) -> h5py.File:
    """Open an HDF5 file read-only, as an SWMR reader if a writer has it open (or was killed)."""
    try:
        return h5py.File(path, "r", locking=False)
    except OSError as error:
        if "already open for write" not in str(error):
            raise UsageError(f"cannot open {path}: {str(error).splitlines()[0]}") from None
    return h5py.File(path, "r", swmr=True, locking=False)


def _json(value) -> str:
    return json.dumps(value, sort_keys=True)


def _fill_layout(file: h5py.File, sites: dict, labels: tuple, chunk_rows: int, dtype: str, n_rows: int = 0) -> None:
    datasets = {f"activations/{site}": ((d,), DTYPES[dtype]) for site, d in sites.items()}
    datasets.update({f"rows/{name}": ((), h5py.string_dtype()) for name in STRING_COLUMNS})
    datasets["rows/position"] = ((), "i8")
    datasets.update({f"labels/{name}": ((), "f8") for name in labels})
    for name, (row_shape, h5_dtype) in datasets.items():
        file.create_dataset(name, shape=(n_rows, *row_shape), maxshape=(None, *row_shape),
                            chunks=(chunk_rows, *row_shape), dtype=h5_dtype)


def open_activation_writer(path, *, sites: dict, dtype: str = "float16", labels=(), settings: dict | None = None,
                           provenance: dict | None = None, chunk_rows: int = 256,
                           resume: bool = False) -> "ActivationWriter":
    """Return an ActivationWriter for a new store at ``path`` or, with ``resume``, the existing one.

    sites: {hook name: width}; dtype: "float32", "float16" or "bfloat16"; labels: names of the numeric
    label columns; settings: JSON dict of everything that determines the rows (compared on resume);
    provenance: JSON dict (command, model, fingerprints). One-line UsageError for an existing file
    without ``resume``, a store another process writes, or a resumed store that differs.
    """
    if dtype not in DTYPES:
        raise UsageError(f"unknown activation dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    if not sites:
        raise UsageError("an activation store needs at least one site")
    sites = {str(site): int(d) for site, d in sites.items()}
    labels = tuple(labels)
    settings = json.loads(_json(settings or {}))
    path = Path(path)
    exists = path.exists()
    if exists and not resume:
        raise UsageError(f"{path} exists; resume it or choose another output")
    path = check_output_file(path, overwrite=True)
    lock = OutputLock(path).acquire()
    try:
        wanted = {"sites": sites, "dtype": dtype, "labels": list(labels), "settings": settings}
        if exists:
            file = _reopen(path, wanted)
        else:
            attrs = {"format": FORMAT, "format_version": FORMAT_VERSION, "toolkit_version": __version__,
                     "dtype": dtype, "sites": _json(sites), "labels": _json(list(labels)),
                     "settings": _json(settings), "provenance": _json(provenance or {}),
                     "chunk_rows": chunk_rows, "n_rows_done": 0, "n_items_done": 0, "status": "running"}

            def fill(file):
                for name, value in attrs.items():
                    file.attrs[name] = np.int64(value) if isinstance(value, int) else value
                _fill_layout(file, sites, labels, chunk_rows, dtype)

            file = build_swmr_file(path, fill)
        return ActivationWriter(file, lock)
    except BaseException:
        lock.release()
        raise


def _reopen(path: Path, wanted: dict) -> h5py.File:
    """Check the store at ``path`` against ``wanted`` and return a fresh SWMR writer holding its
    committed rows."""
    with _open_read(path) as old:
        if old.attrs.get("format") != FORMAT:
            raise UsageError(f"cannot resume {path}: it is not an activation store")
        stored = {"sites": json.loads(old.attrs["sites"]), "dtype": old.attrs["dtype"],
                  "labels": json.loads(old.attrs["labels"]), "settings": json.loads(old.attrs["settings"])}
        for key in wanted:
            if stored[key] != wanted[key]:
                raise UsageError(f"cannot resume {path}: its {key} differ from this run's")
        n_rows = int(old.attrs["n_rows_done"])

        def fill(file):
            for name, value in old.attrs.items():
                file.attrs[name] = value
            _fill_layout(file, wanted["sites"], tuple(wanted["labels"]), int(old.attrs["chunk_rows"]),
                         wanted["dtype"], n_rows)
            for group in ("activations", "rows", "labels"):
                for name in old[group] if group in old else ():
                    for start in range(0, n_rows, COPY_ROWS):
                        stop = min(start + COPY_ROWS, n_rows)
                        file[f"{group}/{name}"][start:stop] = old[f"{group}/{name}"][start:stop]

        return build_swmr_file(path, fill)


class ActivationWriter:
    """Appends rows to an activation store (see the module docstring); ``finish()`` completes it."""

    def __init__(self, file: h5py.File, lock: OutputLock | None):
        self.file, self.lock = file, lock
        self.path = Path(file.filename)
        self.dtype = file.attrs["dtype"]
        self.sites = json.loads(file.attrs["sites"])
        self.labels = json.loads(file.attrs["labels"])
        self.chunk_rows = int(file.attrs["chunk_rows"])
        self._pending, self._pending_items = [], 0

    @property
    def n_rows_done(self) -> int:
        """Rows committed to the file (they survive a kill)."""
        return int(self.file.attrs["n_rows_done"])

    @property
    def n_items_done(self) -> int:
        """Items committed to the file: a resumed run skips this many of its items."""
        return int(self.file.attrs["n_items_done"])

    def append(self, activations: dict, *, prompt_key, condition, position_group, position,
               labels: dict | None = None, items: int = 1) -> None:
        """Add n rows that complete ``items`` more items: ``activations`` {site: [n, d] array or tensor},
        the str sequences ``prompt_key``, ``condition``, ``position_group`` [n], ``position`` [n] ints and
        ``labels`` {name: [n] numbers}. Raises ValueError for a malformed append."""
        labels = labels or {}
        if set(activations) != set(self.sites) or set(labels) != set(self.labels):
            raise ValueError(f"append needs sites {sorted(self.sites)} and labels {sorted(self.labels)}")
        rows = {f"activations/{site}": _to_stored(values, self.dtype) for site, values in activations.items()}
        for name, values in zip(STRING_COLUMNS, (prompt_key, condition, position_group)):
            rows[f"rows/{name}"] = np.asarray([str(v) for v in values], dtype=object)
        rows["rows/position"] = np.asarray(position, dtype=np.int64)
        rows.update({f"labels/{name}": np.asarray(values, dtype=np.float64) for name, values in labels.items()})
        n = len(rows["rows/position"])
        for name, array in rows.items():
            width = self.sites.get(name.removeprefix("activations/"))
            if len(array) != n or (name.startswith("activations/") and array.shape[1:] != (width,)):
                raise ValueError(f"{name}: shape {array.shape} does not fit {n} rows" + (f" of width {width}" if width else ""))
        self._pending.append(rows)
        self._pending_items += items
        if sum(len(r["rows/position"]) for r in self._pending) >= self.chunk_rows:
            self._commit()

    def _commit(self) -> None:
        if not self._pending:
            return
        joined = {name: np.concatenate([r[name] for r in self._pending]) for name in self._pending[0]}
        start = self.n_rows_done
        stop = start + len(joined["rows/position"])
        for name, array in joined.items():
            dataset = self.file[name]
            dataset.resize(stop, axis=0)
            dataset[start:stop] = array
        self.file.flush()
        self.file.attrs.modify("n_rows_done", np.int64(stop))
        self.file.attrs.modify("n_items_done", np.int64(self.n_items_done + self._pending_items))
        self.file.flush()
        self._pending, self._pending_items = [], 0

    def finish(self) -> None:
        """Commit the pending rows, mark the store complete and close it."""
        self._commit()
        self.file.attrs.modify("status", "complete")
        self.close()

    def close(self) -> None:
        """Close the file, dropping uncommitted rows (a resumed run writes them again)."""
        if self.file.id.valid:
            self.file.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
