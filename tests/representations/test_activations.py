"""The activation store: exact round trip, resume after kill -9 to an identical store, and the
chunk-shuffled batch source."""

import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mdlm_interp.errors import UsageError
from mdlm_interp.representations.activation_reader import StoreBatches, open_activations, select_rows
from mdlm_interp.representations.activations import open_activation_writer

SITES = {"blocks.0.hook_resid_post": 6, "blocks.1.attn.hook_z": 4}
ROOT = Path(__file__).resolve().parents[2]


def item(i: int) -> dict:
    """The rows of prompt i: 3 + i % 4 positions, activations that name their prompt and position."""
    n = 3 + i % 4
    g = np.random.default_rng(i)
    acts = {site: g.standard_normal((n, d)).astype(np.float32) for site, d in SITES.items()}
    acts["blocks.0.hook_resid_post"][:, 0] = i
    acts["blocks.0.hook_resid_post"][:, 1] = np.arange(n)
    return dict(activations=acts, prompt_key=[f"0:task:{i}"] * n, condition=[f"masks={1 + 49 * (i % 2)}"] * n,
                position_group=["answer"] + ["masks"] * (n - 1), position=np.arange(n) + 10,
                labels={"masks": [1 + 49 * (i % 2)] * n})


def write(path, items, dtype="float32", resume=False, finish=True):
    writer = open_activation_writer(path, sites=SITES, dtype=dtype, labels=("masks",), settings={"n": 12},
                                    chunk_rows=8, resume=resume)
    for i in range(writer.n_items_done, items):
        writer.append(**item(i))
    if finish:
        writer.finish()
    return writer


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_the_store_round_trips_exactly(tmp_path, dtype):
    write(tmp_path / "acts.h5", 12, dtype)
    expected = [item(i) for i in range(12)]
    with open_activations(tmp_path / "acts.h5") as store:
        assert store.status == "complete" and store.n_rows == sum(len(e["position"]) for e in expected)
        for site in SITES:
            wanted = torch.tensor(np.concatenate([e["activations"][site] for e in expected]))
            cast = wanted.to({"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype])
            assert np.array_equal(store.read(site), cast.float().numpy())
        rows = store.rows()
        assert list(rows.prompt_key) == [k for e in expected for k in e["prompt_key"]]
        assert list(rows.position_group[:4]) == ["answer", "masks", "masks", "answer"]
        assert list(rows.position) == [p for e in expected for p in e["position"]]
        assert list(rows.masks) == [m for e in expected for m in e["labels"]["masks"]]
    with h5py.File(tmp_path / "acts.h5", "r") as file:
        assert file["activations/blocks.0.hook_resid_post"].dtype == {"float32": "f4", "float16": "f2",
                                                                      "bfloat16": "u2"}[dtype]


def test_a_store_resumed_after_kill_9_is_identical(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_activations import item, open_activation_writer, SITES
        writer = open_activation_writer(sys.argv[1], sites=SITES, dtype="bfloat16", labels=("masks",),
                                        settings={{"n": 12}}, chunk_rows=8)
        for i in range(8):
            writer.append(**item(i))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    killed = subprocess.run([sys.executable, "-c", script, str(tmp_path / "resumed.h5")], cwd=ROOT,
                            env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert killed.returncode == -9
    with open_activations(tmp_path / "resumed.h5") as store:  # readable after the kill: committed rows only
        assert store.status == "running" and store.n_rows == sum(3 + i % 4 for i in range(7))  # item 7 pending
    resumed = open_activation_writer(tmp_path / "resumed.h5", sites=SITES, dtype="bfloat16", labels=("masks",),
                                     settings={"n": 12}, chunk_rows=8, resume=True)
    assert resumed.n_items_done == 7
    resumed.close()
    write(tmp_path / "resumed.h5", 12, "bfloat16", resume=True)
    write(tmp_path / "whole.h5", 12, "bfloat16")
    with h5py.File(tmp_path / "resumed.h5", "r") as a, h5py.File(tmp_path / "whole.h5", "r") as b:
        names = []
        a.visit(names.append)
        assert names and set(names) == set(_names(b))
        for name in names:
            if isinstance(a[name], h5py.Dataset):
                assert np.array_equal(a[name][:], b[name][:]), name
        assert dict(a.attrs) == dict(b.attrs)


def _names(file):
    names = []
    file.visit(names.append)
    return names


def test_chunk_shuffled_batches_visit_every_selected_row_once_per_epoch(tmp_path):
    write(tmp_path / "acts.h5", 40)
    with open_activations(tmp_path / "acts.h5") as store:
        keep = select_rows(store, condition="masks=50")
        ids = store.read("blocks.0.hook_resid_post")[:, :2]
    wanted = sorted(map(tuple, ids[keep]))
    batches = StoreBatches(tmp_path / "acts.h5", "blocks.0.hook_resid_post", batch_size=len(wanted) // 4, seed=3,
                           rows=keep, window_chunks=2)
    first = torch.cat([batches.batch(s) for s in range(4)])[:, :2].numpy()
    assert sorted(map(tuple, first)) == wanted  # one epoch: every selected row exactly once
    assert [tuple(r) for r in first] != sorted(map(tuple, first))  # shuffled
    assert len(batches._windows) <= 2  # memory: at most two windows of chunks
    again = StoreBatches(tmp_path / "acts.h5", "blocks.0.hook_resid_post", batch_size=len(wanted) // 4, seed=3,
                         rows=keep, window_chunks=2)
    assert torch.equal(again.batch(5), batches.batch(5)) and not torch.equal(batches.batch(4), batches.batch(0))


def test_bad_store_input_is_a_one_line_usage_error(tmp_path):
    write(tmp_path / "acts.h5", 4)
    with open_activations(tmp_path / "acts.h5") as store:
        with pytest.raises(UsageError, match="no site 'blocks.9.hook_resid_post'"):
            store.read("blocks.9.hook_resid_post")
        with pytest.raises(UsageError, match="no rows with condition=masks=7"):
            select_rows(store, condition="masks=7")
    with pytest.raises(UsageError, match="exists"):
        write(tmp_path / "acts.h5", 4)
    with pytest.raises(UsageError, match="settings differ"):
        open_activation_writer(tmp_path / "acts.h5", sites=SITES, dtype="float32", labels=("masks",),
                               settings={"n": 13}, resume=True)
    with pytest.raises(UsageError, match="activation dtype"):
        open_activation_writer(tmp_path / "new.h5", sites=SITES, dtype="int8")
    with pytest.raises(UsageError, match="does not exist"):
        open_activations(tmp_path / "missing.h5")
