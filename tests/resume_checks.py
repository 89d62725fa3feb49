"""Helpers of the --resume tests: kill a run part-way in this process, compare stores, check refusals."""

import h5py
import numpy as np

from mdlm_interp.store import partial as partial_module
from mdlm_interp.store.writer import StoreWriter

IGNORED_ATTRS = {"created", "command_line"}


def one_line_refusal(result, *messages: str) -> None:
    """Assert that a ``cli_run.run_cli`` result is a one-line refusal (exit 2) naming every ``messages``."""
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for message in messages:
        assert message in result.stderr, result.stderr


def store_contents(path) -> tuple[dict, dict]:
    """Return (every dataset as (array, dtype, shape), every root attribute but created and command_line)."""
    with h5py.File(path, "r") as file:
        datasets = {}
        file.visititems(lambda name, item: datasets.__setitem__(name, (item[()], item.dtype, item.shape))
                        if isinstance(item, h5py.Dataset) else None)
        attrs = {name: file.attrs[name] for name in file.attrs if name not in IGNORED_ATTRS}
    return datasets, attrs


def assert_identical(path, reference) -> None:
    """Assert that the HDF5 files ``path`` and ``reference`` hold the same datasets and root attributes
    (but created and command_line)."""
    (data, attrs), (want_data, want_attrs) = store_contents(path), store_contents(reference)
    assert sorted(data) == sorted(want_data)
    for name, (value, dtype, shape) in want_data.items():
        assert (data[name][1], data[name][2]) == (dtype, shape), name
        if value.dtype == object:  # variable-length rows: one array per row
            assert len(data[name][0]) == len(value) and all(map(np.array_equal, data[name][0], value)), name
        else:
            assert np.array_equal(data[name][0], value, equal_nan=value.dtype.kind == "f"), name
    assert sorted(attrs) == sorted(want_attrs)
    for name, value in want_attrs.items():
        assert np.array_equal(attrs[name], value), name


def kill_after(monkeypatch, k: int) -> list:
    """Make a patch or ablate run die (KeyboardInterrupt, as Ctrl-C) right after its k-th committed batch;
    return the list of committed batch indices."""
    committed = []
    original = partial_module.PartialResults.commit

    def commit(self, index, columns, meta=None):
        original(self, index, columns, meta)
        committed.append(index)
        if len(committed) == k:
            raise KeyboardInterrupt

    monkeypatch.setattr(partial_module.PartialResults, "commit", commit)
    return committed


def kill_record_after(monkeypatch, k: int) -> None:
    """Make a record run die (KeyboardInterrupt) right after its k-th batch of rows is appended and
    committed, leaving a store with those rows, as a kill after a commit does."""
    appended = []
    original = StoreWriter.append

    def append(self, batch):
        done = original(self, batch)
        appended.append(1)
        if len(appended) == k:
            self._commit(self._n_pending)
            raise KeyboardInterrupt
        return done

    monkeypatch.setattr(StoreWriter, "append", append)
