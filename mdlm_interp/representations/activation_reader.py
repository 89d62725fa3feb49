"""Reading an activation store (layout: ``representations.activations``): its row labels, any rows of
a site, and ``StoreBatches``, the chunk-shuffled batch source SAE training reads.

Only committed rows (``n_rows_done``) are read, so a store being written (or killed) reads as its
committed part. Chunk shuffling: each epoch visits the store's chunks (``chunk_rows`` rows each) in a
seeded order, ``window_chunks`` at a time; a window's selected rows are shuffled together (seeded by
epoch and window) and served in that order. Memory holds at most two windows, never the store; batch
s is a pure function of (seed, s), which makes training resumable.
"""

import json
from pathlib import Path

import h5py
import numpy as np

from mdlm_interp.errors import UsageError
from mdlm_interp.representations.activations import FORMAT, STRING_COLUMNS, _from_stored, _open_read


def is_activation_store(path) -> bool:
    """Return True when ``path`` is an HDF5 file written as an activation store (its ``format`` attribute)."""
    path = Path(path)
    if not path.is_file() or not h5py.is_hdf5(path):
        return False
    try:
        with _open_read(path) as file:
            return file.attrs.get("format") == FORMAT
    except (OSError, UsageError):
        return False


class ActivationStore:
    """An open activation store: ``sites`` {site: d}, ``dtype``, ``labels`` (names), ``n_rows``
    (committed rows), ``chunk_rows``, ``settings``, ``provenance``, ``status``."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise UsageError(f"activation store {path} does not exist")
        self.file = _open_read(self.path)
        attrs = self.file.attrs
        if attrs.get("format") != FORMAT:
            self.file.close()
            raise UsageError(f"{path} is not an activation store")
        self.sites = json.loads(attrs["sites"])
        self.labels = json.loads(attrs["labels"])
        self.dtype = attrs["dtype"]
        self.n_rows = int(attrs["n_rows_done"])
        self.chunk_rows = int(attrs["chunk_rows"])
        self.settings = json.loads(attrs["settings"])
        self.provenance = json.loads(attrs["provenance"])
        self.status = attrs["status"]

    def check_site(self, site: str) -> int:
        """Return the width of ``site``; a one-line UsageError naming the store's sites if it has none."""
        if site not in self.sites:
            raise UsageError(f"{self.path} has no site {site!r}; it has {', '.join(sorted(self.sites))}")
        return self.sites[site]

    def rows(self):
        """Return a pandas DataFrame [n_rows] of the row labels: prompt_key, condition, position_group
        (str), position (int) and one float column per numeric label."""
        import pandas as pd

        columns = {name: self.file[f"rows/{name}"].asstr()[: self.n_rows] for name in STRING_COLUMNS}
        columns["position"] = self.file["rows/position"][: self.n_rows]
        columns.update({name: self.file[f"labels/{name}"][: self.n_rows] for name in self.labels})
        return pd.DataFrame(columns)

    def read(self, site: str, index=None) -> np.ndarray:
        """Return float32 activations [k, d] of ``site``: all committed rows (``index`` None), a slice,
        or rows at increasing integer indices."""
        self.check_site(site)
        dataset = self.file[f"activations/{site}"]
        if index is None:
            index = slice(0, self.n_rows)
        return _from_stored(dataset[index], self.dtype)

    def close(self) -> None:
        """Close the file."""
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def open_activations(path) -> ActivationStore:
    """Return the activation store at ``path`` opened for reading (one-line UsageError if it is not one)."""
    return ActivationStore(path)


def select_rows(store: ActivationStore, **wanted) -> np.ndarray:
    """Return bool [n_rows]: the rows whose columns equal ``wanted`` (e.g. condition="masks=50",
    position_group="answer"; a list of values accepts any of them). A one-line UsageError for an
    unknown column or when no row matches."""
    rows = store.rows()
    keep = np.ones(len(rows), dtype=bool)
    for column, value in wanted.items():
        if value is None:
            continue
        if column not in rows:
            raise UsageError(f"{store.path} has no row column {column!r}; it has {', '.join(rows.columns)}")
        values = value if isinstance(value, (list, tuple)) else [value]
        keep &= rows[column].isin(values).to_numpy()
    if not keep.any():
        asked = ", ".join(f"{k}={v}" for k, v in wanted.items() if v is not None)
        raise UsageError(f"{store.path} has no rows with {asked}")
    return keep


class StoreBatches:
    """A batch source (``sae_train``) over one site of an activation store, chunk-shuffled (see the
    module docstring); ``rows``: bool [n_rows] selection (``select_rows``), all rows if None."""

    def __init__(self, path, site: str, batch_size: int, seed: int = 0, rows: np.ndarray | None = None,
                 window_chunks: int = 32):
        self.store = open_activations(path)
        self.site, self.batch_size, self.seed, self.window_chunks = site, int(batch_size), int(seed), int(window_chunks)
        self.d_in = self.store.check_site(site)
        n, size = self.store.n_rows, self.store.chunk_rows
        self.selected = np.ones(n, dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
        if len(self.selected) != n or not self.selected.any():
            raise UsageError(f"{path}: no rows selected to train on")
        self.n_blocks = -(-n // size)
        self.block_counts = np.add.reduceat(self.selected, np.arange(0, n, size)) if n else np.zeros(0, int)
        self.n_selected = int(self.selected.sum())
        self._plans, self._windows = {}, {}

    def describe(self) -> dict:
        """Return the JSON dict that names this data (compared when a run resumes)."""
        return {"store": self.store.path.name, "site": self.site, "store_rows": self.store.n_rows,
                "rows": self.n_selected, "batch_size": self.batch_size, "seed": self.seed,
                "window_chunks": self.window_chunks}

    def _plan(self, epoch: int) -> tuple[list, np.ndarray]:
        """Return (blocks per window, first sequence index of each window [W + 1]) of ``epoch``."""
        if epoch not in self._plans:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks)
            windows = [np.sort(order[i:i + self.window_chunks]) for i in range(0, self.n_blocks, self.window_chunks)]
            starts = np.concatenate([[0], np.cumsum([self.block_counts[w].sum() for w in windows])])
            self._plans = {epoch: (windows, starts)}
        return self._plans[epoch]

    def _window(self, epoch: int, window: int) -> np.ndarray:
        """Return the shuffled selected rows [count, d] (float32) of one window of ``epoch``."""
        key = (epoch, window)
        if key not in self._windows:
            size, n = self.store.chunk_rows, self.store.n_rows
            parts = []
            for block in self._plan(epoch)[0][window]:
                start, stop = int(block) * size, min((int(block) + 1) * size, n)
                keep = self.selected[start:stop]
                if keep.any():
                    parts.append(self.store.read(self.site, slice(start, stop))[keep])
            rows = np.concatenate(parts)
            order = np.random.default_rng([self.seed, epoch, window]).permutation(len(rows))
            self._windows = {k: v for k, v in self._windows.items() if k[0] == epoch and k[1] == window - 1}
            self._windows[key] = rows[order]
        return self._windows[key]

    def batch(self, step: int):
        """Return the rows [batch_size, d_in] (float32 tensor) of step ``step``."""
        import torch

        sequence = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
        epochs, offsets = sequence // self.n_selected, sequence % self.n_selected
        out = np.empty((self.batch_size, self.d_in), dtype=np.float32)
        for epoch in np.unique(epochs):
            starts = self._plan(int(epoch))[1]
            windows = np.searchsorted(starts, offsets, side="right") - 1
            for window in np.unique(windows[epochs == epoch]):
                take = (epochs == epoch) & (windows == window)
                out[take] = self._window(int(epoch), int(window))[offsets[take] - starts[window]]
        return torch.from_numpy(out)
