"""sweep's output folder: named, checked before sweep.json is written, one sweep at a time, an --overwrite that
keeps the old sweep whole until the new one is complete, and stores that are not the sweep's refused or
left out."""

import json
import os
import shutil
from pathlib import Path

import pytest

from cli_run import run_cli
from held_lock import held_elsewhere
from mdlm_interp.errors import UsageError
from mdlm_interp.outputs import lock_path
from mdlm_interp.sweep import GRIDS, Part, run_sweep

GRID = (Part("ladder", "masks", 2, 2, (1, 3)),)


@pytest.fixture
def grid(monkeypatch):
    monkeypatch.setitem(GRIDS, "tiny-hard", GRID)
    return "tiny-hard"


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("argv,words", [
    (["--out", ""], "names no file or folder"),
    (["--out", "."], "names no file or folder"),
    (["--out", "s", "--device", "bad"], "unknown device"),
    (["--out", "s", "--device", "cuda:7"], "device"),
])
def test_a_bad_out_or_device_is_refused_before_anything_is_written(tiny_checkpoint, tmp_path, monkeypatch, argv,
                                                                   words):
    monkeypatch.chdir(tmp_path)
    result = run_cli("sweep", "paper", "--model", tiny_checkpoint("llada"), "--n", "1", "--no-progress", *argv)
    assert result.returncode == 2 and words in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no sweep.json, no stores, no lock left


def test_overwrite_keeps_the_old_sweep_whole_until_the_new_one_is_complete(grid, tiny_checkpoint, tmp_path,
                                                                           monkeypatch):
    import mdlm_interp.record

    model = str(tiny_checkpoint("llada"))
    out = tmp_path / "sweep"
    run_sweep(grid, [model], n=1, out=out, progress=False)
    old = snapshot(out)
    real_record, calls = mdlm_interp.record.record, []

    def killed_after_one(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(kwargs["out"])
        return real_record(*args, **kwargs)

    monkeypatch.setattr(mdlm_interp.record, "record", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(grid, [model], n=2, out=out, overwrite=True, progress=False)
    assert snapshot(out) == old  # killed: every old store and the old sweep.json as they were
    assert not lock_path(out).exists()
    monkeypatch.setattr(mdlm_interp.record, "record", lambda *a, **k: (calls.append(k["out"]), real_record(*a, **k)))
    paths = run_sweep(grid, [model], n=2, out=out, overwrite=True, progress=False)
    assert len(calls) == 2  # the store finished before the kill was kept, the other one recorded
    assert json.loads((out / "sweep.json").read_text())["settings"]["n"] == 2
    assert all(p.exists() for p in paths) and sorted(os.listdir(tmp_path)) == ["sweep"]  # staging swapped in


def test_a_sweep_is_refused_while_another_writes_the_folder(grid, tiny_checkpoint, tmp_path):
    out = tmp_path / "sweep"
    with held_elsewhere(out):
        with pytest.raises(UsageError, match="being written by another process"):
            run_sweep(grid, [str(tiny_checkpoint("llada"))], n=1, out=out, overwrite=True, progress=False)
    assert not out.exists()


def test_a_foreign_store_is_refused_at_a_store_s_path_and_left_out_elsewhere(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(GRIDS, "paper", GRID)  # the command line offers the paper grid only
    grid = "paper"
    model = str(tiny_checkpoint("llada"))
    out = tmp_path / "sweep"
    first, second = run_sweep(grid, [model], n=1, out=out, progress=False)
    extra = out / "stores" / "dropped" / "other.h5"
    extra.parent.mkdir()
    shutil.copy(first, extra)
    given = []
    import mdlm_interp.analyses.report as report

    monkeypatch.setattr(report, "write_report", lambda paths, out, **k: given.append(list(paths)) or Path(out) / "r.md")
    monkeypatch.setattr(report, "console_table", lambda folder: "table")
    result = run_cli("sweep", grid, "--model", model, "--n", "1", "--out", out, "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "left out 1 file(s)" in result.stderr and str(extra) in result.stderr
    assert given == [[first, second]]
    shutil.copy(first, second)  # a complete store of other settings (masks 1) where masks 3 belongs
    with pytest.raises(UsageError, match="is not a store of this sweep"):
        run_sweep(grid, [model], n=1, out=out, progress=False)
