"""Commands claim every output before any work (``outputs.claim_outputs``): the cases of issue 26 where an
output was an input, two outputs were one path, a device was replaced or a concurrent run lost work end in
one line, exit 2, with nothing loaded and nothing changed."""

import hashlib
import json
import os
import stat

import h5py
import pytest

from cli_run import run_cli
from held_lock import held_elsewhere
from mdlm_interp.outputs import lock_path

PATCH = ("--task", "adjective+largest", "--n", "1", "--n-relevant", "2", "--n-distractor", "2", "--no-progress")


@pytest.fixture
def no_model_loaded(monkeypatch):
    """Any model load fails the test: the refusals must come before any work."""
    import mdlm_interp.models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the outputs were checked")

    monkeypatch.setattr(mdlm_interp.models, "load_model", refuse)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hdf5(path):
    with h5py.File(path, "w") as file:
        file.attrs["kind"] = "old"
    return path


def one_line_refusal(result, words):
    assert result.returncode == 2, result.stderr
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_heads_never_writes_over_its_store_nor_an_existing_file(tmp_path):
    store = hdf5(tmp_path / "rec.h5")
    before = digest(store)
    one_line_refusal(run_cli("heads", store, "--csv", store), "is one of the command's inputs")
    one_line_refusal(run_cli("heads", store, "--figure", store, "--overwrite"), "is one of the command's inputs")
    (tmp_path / "old.csv").write_text("mine\n")
    one_line_refusal(run_cli("heads", store, "--csv", tmp_path / "old.csv"), "exists; pass --overwrite")
    (tmp_path / "old.png").write_bytes(b"\x89PNG\r\n\x1a\nmine")
    one_line_refusal(run_cli("heads", store, "--figure", tmp_path / "old.png"), "exists; pass --overwrite")
    one_line_refusal(run_cli("heads", store, "--csv", tmp_path / "t", "--figure", tmp_path / "t"), "is also --csv")
    assert digest(store) == before and (tmp_path / "old.csv").read_text() == "mine\n"
    assert (tmp_path / "old.png").read_bytes() == b"\x89PNG\r\n\x1a\nmine"


def test_heads_overwrite_replaces_its_csv_whole_with_the_toolkit_s_mode(tiny_model, tmp_path):
    from mdlm_interp.record import record

    store = record(tiny_model("llada"), out=tmp_path / "rec.h5", tasks=("adjective+largest",), masks=(1, 3), n=3,
                   n_relevant=2, n_distractor=2, record=("attention",), progress=False)
    (tmp_path / "heads.csv").write_text("old\n")
    os.chmod(tmp_path / "heads.csv", 0o600)
    result = run_cli("heads", store, "--csv", tmp_path / "heads.csv", "--figure", tmp_path / "heads.png",
                     "--overwrite", "--json")
    assert result.returncode == 0, result.stderr
    import pandas as pd

    table = pd.read_csv(tmp_path / "heads.csv")
    assert {"rank", "mask_mass", "rho"} <= set(table.columns) and len(table) == len(json.loads(result.stdout))
    assert (tmp_path / "heads.png").read_bytes().startswith(b"\x89PNG")
    umask = os.umask(0)
    os.umask(umask)
    for name in ("heads.csv", "heads.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644 & ~umask
    assert not any(p.name.endswith((".partial", ".lock")) for p in tmp_path.iterdir())


def test_ablate_and_patch_refuse_one_path_for_two_outputs_before_any_work(tiny_checkpoint, tmp_path, no_model_loaded):
    model = tiny_checkpoint("llada")
    one_line_refusal(run_cli("ablate", "--model", model, "--heads", "0.0", "--out", tmp_path / "x.h5",
                             "--figure", tmp_path / "x.h5"), "is also --out")
    one_line_refusal(run_cli("patch", "--model", model, *PATCH, "--out", tmp_path / "p.h5",
                             "--figures", tmp_path / "p.h5"), "is also --out")
    (tmp_path / "file").write_text("a file, not a folder\n")
    one_line_refusal(run_cli("patch", "--model", model, *PATCH, "--out", tmp_path / "q.h5",
                             "--figures", tmp_path / "file"), "is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # no store written first


def test_a_fifo_or_a_link_to_one_is_never_replaced(tiny_checkpoint, tmp_path, no_model_loaded):
    model = tiny_checkpoint("llada")
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "link.h5").symlink_to(tmp_path / "pipe")
    cases = [
        ("patch", "--model", model, *PATCH, "--out", tmp_path / "pipe", "--overwrite"),
        ("ablate", "--model", model, "--heads", "0.0", "--out", tmp_path / "link.h5", "--overwrite"),
        ("generate", "--model", model, "--prompt", "a", "--trace", tmp_path / "pipe", "--overwrite"),
        ("record", "--model", model, "--n", "1", "--out", tmp_path / "link.h5", "--overwrite"),
    ]
    for argv in cases:
        one_line_refusal(run_cli(*argv), "a FIFO")
    assert stat.S_ISFIFO(os.stat(tmp_path / "pipe").st_mode) and os.path.islink(tmp_path / "link.h5")


def test_generate_refuses_a_character_device_trace(tiny_checkpoint, tmp_path, monkeypatch, no_model_loaded):
    from mdlm_interp import outputs

    device = tmp_path / "tty"
    device.write_bytes(b"")
    real_stat = os.stat

    def fake_stat(path, *args, **kwargs):
        result = real_stat(path, *args, **kwargs)
        if os.fspath(path) == os.fspath(device):
            return os.stat_result((stat.S_IFCHR | 0o666,) + tuple(result)[1:])
        return result

    monkeypatch.setattr(outputs.os, "stat", fake_stat)
    one_line_refusal(run_cli("generate", "--model", tiny_checkpoint("llada"), "--prompt", "a", "--trace", device,
                             "--overwrite"), "a character device")
    assert device.read_bytes() == b""


@pytest.mark.parametrize("command", ["patch", "ablate", "generate"])
def test_a_second_concurrent_run_is_refused_before_any_work(tiny_checkpoint, tmp_path, command, no_model_loaded):
    model = tiny_checkpoint("llada")
    out = tmp_path / "busy.h5"
    argv = {"patch": ("patch", "--model", model, *PATCH, "--out", out),
            "ablate": ("ablate", "--model", model, "--heads", "0.0", "--out", out),
            "generate": ("generate", "--model", model, "--prompt", "a", "--trace", out)}[command]
    with held_elsewhere(out, pid=999):  # the first run, as another process holds it
        one_line_refusal(run_cli(*argv), "being written by another process (pid 999)")
    assert not out.exists()


def test_claims_are_released_when_a_command_ends(tiny_checkpoint, tmp_path, no_model_loaded):
    from mdlm_interp.outputs import holder

    out = tmp_path / "t.h5"
    with pytest.raises(AssertionError, match="a model was loaded"):  # the command fails after claiming --trace
        run_cli("generate", "--model", tiny_checkpoint("llada"), "--prompt", "a", "--trace", out)
    assert holder(out) is None and not lock_path(out).exists()


@pytest.mark.parametrize("command", ["analyze", "compare"])
def test_report_folders_are_claimed_too(tmp_path, command):
    store = hdf5(tmp_path / "s.h5")
    os.mkfifo(tmp_path / "pipe")
    one_line_refusal(run_cli(command, store, store, "--out", tmp_path / "pipe"), "a FIFO, not a folder")
    with held_elsewhere(tmp_path / "report"):
        one_line_refusal(run_cli(command, store, store, "--out", tmp_path / "report"), "being written by another")
    assert not (tmp_path / "report").exists()
