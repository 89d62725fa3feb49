"""Logits only where read: the same stores and tables as with the full logits, and the kept logits are the full ones."""

import h5py
import numpy as np
import pytest
import torch

from mdlm_interp.circuits.ablation import run_ablation
from mdlm_interp.circuits.patching import run_patching
from mdlm_interp.errors import UsageError
from mdlm_interp.models import readout
from mdlm_interp.models.transformer import HookedDecoder
from mdlm_interp.plan import Condition, PromptPlan
from mdlm_interp.record import record
from mdlm_interp.store import open_store
from mdlm_interp.store.summary import format_table, summarize

PLAN = dict(tasks=("adjective+largest",), n=2, n_relevant=2, n_distractor=3, seed=0)
WRITTEN_AT_RUN = {"created", "command_line"}  # root attributes that name the run itself


def test_forward_keeps_the_asked_positions_bit_for_bit_and_readers_find_them(tiny_model):
    model = tiny_model("dream").model
    ids = torch.randint(0, model.cfg.d_vocab, (3, 11), generator=torch.Generator().manual_seed(0))
    positions = torch.tensor([[4, 0], [9, 9], [2, 7]])
    full = model(ids)
    kept = model(ids, logit_positions=positions)
    assert kept.shape == (3, 2, model.cfg.d_vocab)
    assert torch.equal(kept, full[torch.arange(3)[:, None], positions])
    partial = readout.PartialLogits(kept, positions, 11)
    answer = torch.tensor([5, 10, 3])  # Dream reads the position before: logit indices 4, 9, 2
    assert torch.equal(readout.logits_at(partial, answer, -1), readout.logits_at(full, answer, -1))
    rows, cols = torch.tensor([0, 2, 1]), torch.tensor([0, 8, 10])  # position 0 reads logit index 0 (clamped)
    assert torch.equal(readout.logits_where(partial, rows, cols, -1, clamp=True),
                       readout.logits_where(full, rows, cols, -1, clamp=True))
    with pytest.raises(readout.NoPrediction, match="not computed"):
        readout.logits_at_index(partial, torch.tensor([1, 9, 2]))  # row 0 kept 4 and 0, not 1
    with pytest.raises(UsageError, match=r"\[batch, k\]"):
        model(ids, logit_positions=positions[0])
    needed = torch.tensor([[False, True, True, False], [False, False, False, True]])
    kept_index = readout.kept_positions(needed)
    assert kept_index.shape == (2, 2) and kept_index[0].tolist() == [1, 2] and kept_index[1, 0] == 3


def _store_contents(path) -> tuple[dict, dict]:
    """Return (root attributes but those naming the run, dataset path -> array) of an HDF5 file."""
    with h5py.File(path, "r") as f:
        attrs = {k: str(v) for k, v in f.attrs.items() if k not in WRITTEN_AT_RUN}
        datasets = {}
        f.visititems(lambda name, item: datasets.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset)
                     else None)
    return attrs, datasets


def _assert_same_files(a, b):
    attrs_a, data_a = _store_contents(a)
    attrs_b, data_b = _store_contents(b)
    assert attrs_a == attrs_b
    assert sorted(data_a) == sorted(data_b)
    for path, value in data_a.items():
        if value.dtype == object:
            for x, y in zip(value.ravel(), data_b[path].ravel()):
                np.testing.assert_array_equal(x, y, err_msg=path)
        else:
            np.testing.assert_array_equal(value, data_b[path], err_msg=path)


def _runs(lm, out, family):
    """Write a record store (every recorder and a decode), a patching store and an ablation store into ``out``."""
    sampler = "llada:steps=2" if family == "llada" else "dream:steps=2"
    record(lm, out=out / "record.h5", masks=(1, 4), decode=sampler, batch_size=4, progress=False, **PLAN)
    plan = PromptPlan(masks=(1, 4), **PLAN)
    run_patching(lm, plan, Condition(1, False, "random"), Condition(4, False, "random"), out=out / "patch.h5",
                 batch_size=2, last_k=1, progress=False)
    run_ablation(lm, plan, "top:1", out=out / "ablate.h5", modes=("attention", "zero"), control_draws=1,
                 batch_size=2, progress=False)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_stores_and_tables_are_the_same_with_the_full_logits(family, tiny_model, tmp_path, monkeypatch):
    lm = tiny_model(family)
    kept_calls = []
    original = HookedDecoder.kept_logits
    monkeypatch.setattr(HookedDecoder, "kept_logits", lambda self, x: kept_calls.append(x.shape) or original(self, x))
    where_read, full = tmp_path / "where-read", tmp_path / "full"
    where_read.mkdir()
    full.mkdir()
    _runs(lm, where_read, family)
    assert kept_calls, "the runs never asked for logits at a few positions"
    assert all(shape[1] < 10 for shape in kept_calls)  # never every position of a prompt
    monkeypatch.setenv(readout.FULL_LOGITS_ENV, "1")
    kept_calls.clear()
    _runs(lm, full, family)
    assert not kept_calls
    for name in ("record.h5", "patch.h5", "ablate.h5"):
        _assert_same_files(where_read / name, full / name)
    tables = []
    for folder in (where_read, full):
        with open_store(folder / "record.h5") as store:
            tables.append(format_table(summarize(store)))
    assert tables[0] == tables[1]
