"""Stores written by the current code equal stores written before the batching / recorder / RecordConfig
refactor (tests/data/reference_stores, recorded by the code of commit 737ad15 with the settings below).

Two things of the settings attribute changed on purpose since then (issue 15), and nothing else:
``settings["dtype"]`` reads "float32" where the references have "torch.float32" (docs/store.md names
dtypes without the "torch." prefix), and ``settings["batch_size"]`` is new (rows are padded to their
batch's longest prompt, which moves floats a little, so a resume must use the batch size of the run
it continues). Every dataset, task_config and the summary are compared exactly.
"""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from mdlm_interp import load_model
from mdlm_interp.record import record
from mdlm_interp.store import open_store
from mdlm_interp.store.summary import summarize

TESTS_DATA = Path(__file__).resolve().parents[1] / "data"

REFERENCES = {
    "organism-llada": dict(masks=[1, 3, 9], filler=" .", placements=["random", "relevant-at:12"]),
    "organism-dream": dict(masks=[1, 9], filler=" .", placements=["query-at:2", "random"]),
    "organism-llama": dict(masks=[1], placements=["random"]),
}
COMMON = dict(tasks=["adjective+largest", "food+smallest", "place+largest"], n=3, n_relevant=4, n_distractor=12,
              batch_size=5, top_k=5, seed=7, progress=False, command_line="reference")


def datasets(path) -> dict:
    with h5py.File(path, "r") as file:
        out = {}
        file.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        return out


@pytest.mark.parametrize("organism", sorted(REFERENCES))
def test_same_command_writes_the_same_store(organism, tmp_path):
    reference = TESTS_DATA / "reference_stores" / f"{organism}.h5"
    new = record(load_model(organism), out=tmp_path / "new.h5", **COMMON, **REFERENCES[organism])
    old_data, new_data = datasets(reference), datasets(new)
    assert old_data.keys() == new_data.keys()
    for name, old in old_data.items():
        if old.dtype == object:
            assert len(old) == len(new_data[name])
            for a, b in zip(old, new_data[name]):
                np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            np.testing.assert_array_equal(old, new_data[name], err_msg=name)
    with open_store(reference) as old_store, open_store(new) as new_store:
        changed = {"dtype": "float32", "batch_size": COMMON["batch_size"]}
        assert old_store.attrs["settings"]["dtype"] == "torch.float32" and "batch_size" not in old_store.attrs["settings"]
        assert {**old_store.attrs["settings"], **changed} == new_store.attrs["settings"]
        assert (old_store.attrs["dtype"], new_store.attrs["dtype"]) == ("torch.float32", "float32")
        assert old_store.attrs["task_config"] == new_store.attrs["task_config"]
        assert json.dumps(summarize(old_store)) == json.dumps(summarize(new_store))
