"""--batch-size auto: the largest batch whose estimated memory fits a (faked) free memory figure with the margin kept."""

import json

import h5py
import pytest

from mdlm_interp import resources
from mdlm_interp.errors import UsageError
from tests.cli_run import run_cli

GIB = 2**30


def test_auto_batch_size_keeps_the_margin_free_and_stays_within_bounds():
    assert resources.auto_batch_size(10 * GIB, GIB, margin=0.25) == 7  # 7.5 GiB usable
    assert resources.auto_batch_size(10 * GIB, GIB, margin=0.0) == 10
    assert resources.auto_batch_size(10_000 * GIB, GIB) == resources.MAX_AUTO_BATCH
    with pytest.raises(UsageError, match="one prompt needs"):
        resources.auto_batch_size(GIB, GIB)  # 0.75 GiB usable


def test_graph_keeping_runs_are_estimated_per_layer():
    shape = dict(tokens=660, d_model=4096, d_mlp=12288, n_heads=32, n_kv_heads=32, d_head=128, d_vocab=126464,
                 dtype_bytes=2, logit_rows=1)
    plain = resources.activation_bytes_per_prompt(n_layers=32, needs_grad=False, **shape)
    assert plain == resources.activation_bytes_per_prompt(n_layers=2, needs_grad=False, **shape)
    graph = [resources.activation_bytes_per_prompt(n_layers=n, needs_grad=True, **shape) for n in (2, 32)]
    assert graph[1] - graph[0] == 15 * (graph[0] - plain)  # 30 more blocks kept, 2 kept before


def test_record_batch_size_auto_uses_the_free_memory(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    model = str(tiny_checkpoint("llada"))
    common = ["record", "--model", model, "--task", "adjective+largest", "--n", "3", "--n-relevant", "2",
              "--n-distractor", "3", "--record", "lens", "--no-progress"]
    # tiny prompts of this plan are well under 64 tokens: one prompt is at most this many bytes
    per_prompt = resources.activation_bytes_per_prompt(
        tokens=64, d_model=64, d_mlp=160, n_heads=4, n_kv_heads=2, d_head=16, n_layers=2, d_vocab=1024,
        dtype_bytes=4, needs_grad=False, logit_rows=1)
    monkeypatch.setattr(resources, "free_memory_bytes", lambda device="cpu": int(2.5 * per_prompt / 0.75))
    result = run_cli(*common, "--batch-size", "auto", "--out", tmp_path / "auto.h5")
    assert result.returncode == 0, result.stderr
    assert "--batch-size auto: 2 " in result.stderr or "--batch-size auto: 3 " in result.stderr, result.stderr
    chosen = int(result.stderr.split("--batch-size auto: ")[1].split()[0])
    with h5py.File(tmp_path / "auto.h5", "r") as store:
        assert json.loads(store.attrs["settings"])["batch_size"] == chosen
    monkeypatch.setattr(resources, "free_memory_bytes", lambda device="cpu": 1000)
    refused = run_cli(*common, "--batch-size", "auto", "--out", tmp_path / "none.h5")
    assert refused.returncode == 2 and "one prompt needs" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "none.h5").exists()
    assert run_cli(*common, "--batch-size", "0", "--out", tmp_path / "zero.h5").returncode == 2
