"""patch and ablate --resume: a run killed after k batches continues from its committed batches to a store
identical to an uninterrupted run's; partial results are never silently lost or mixed with other settings."""

import json

import pytest
from cli_run import run_cli
from resume_checks import assert_identical, kill_after, one_line_refusal

from mdlm_interp.circuits import patching
from mdlm_interp.store import partial as partial_module
from mdlm_interp.store.partial import partial_path

SMALL = ("--task", "adjective+largest", "--n-relevant", "2", "--n-distractor", "3", "--n", "3", "--batch-size", "1")
COMMANDS = {  # 3 batches for patch; 6 for ablate (3 at 1 mask, then 3 at 3 masks)
    "patch": ("patch", *SMALL, "--corrupt-masks", "3", "--last-k", "1"),
    "ablate": ("ablate", *SMALL, "--heads", "0.1", "--masks", "1,3", "--control-draws", "2"),
}


@pytest.fixture(scope="module")
def uninterrupted(tiny_checkpoint, tmp_path_factory):
    """Return command -> the store of an uninterrupted run."""
    model = tiny_checkpoint("llada")
    folder = tmp_path_factory.mktemp("uninterrupted")
    stores = {}
    for command, args in COMMANDS.items():
        result = run_cli(*args, "--model", model, "--out", folder / f"{command}.h5")
        assert result.returncode == 0, result.stderr
        stores[command] = folder / f"{command}.h5"
    return stores


@pytest.mark.parametrize("command,k", [("patch", 1), ("patch", 2), ("ablate", 2), ("ablate", 4)])
def test_a_run_killed_after_k_batches_resumes_to_the_uninterrupted_store(command, k, tiny_checkpoint, tmp_path,
                                                                          uninterrupted, monkeypatch):
    args = (*COMMANDS[command], "--model", tiny_checkpoint("llada"), "--out", tmp_path / "out.h5")
    with monkeypatch.context() as patch:
        committed = kill_after(patch, k)
        killed = run_cli(*args)
    assert killed.returncode == 130 and committed == list(range(k)), killed.stderr
    assert not (tmp_path / "out.h5").exists()
    assert sorted(p.name for p in partial_path(tmp_path / "out.h5").glob("*.npz")) == [f"{i:05d}.npz" for i in range(k)]

    one_line_refusal(run_cli(*args), "--resume", "--overwrite")  # the batches are not silently discarded
    resumed_batches = []
    original = partial_module.PartialResults.commit
    monkeypatch.setattr(partial_module.PartialResults, "commit",
                        lambda self, index, columns, meta=None: (resumed_batches.append(index),
                                                                 original(self, index, columns, meta)))
    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    total = 3 if command == "patch" else 6
    assert resumed_batches == list(range(k, total))  # the committed batches are taken, not recomputed
    assert not partial_path(tmp_path / "out.h5").exists()
    assert_identical(tmp_path / "out.h5", uninterrupted[command])


def test_patch_resume_skips_the_committed_batches_work_and_a_half_written_one(tiny_checkpoint, tmp_path, uninterrupted, monkeypatch):
    args = (*COMMANDS["patch"], "--model", tiny_checkpoint("llada"), "--out", tmp_path / "out.h5")
    with monkeypatch.context() as patch:
        kill_after(patch, 2)
        assert run_cli(*args).returncode == 130
    # a kill while batch 2 was being written leaves its temporary file, never a batch file
    (partial_path(tmp_path / "out.h5") / ".00002.npz.k1ll3d.tmp").write_bytes(b"PK\x03\x04 cut short")
    calls = []
    original = patching.patch_batch
    monkeypatch.setattr(patching, "patch_batch", lambda *a, **kw: (calls.append(1), original(*a, **kw))[1])
    assert run_cli(*args, "--resume").returncode == 0
    assert len(calls) == 1  # only the third pair was patched
    assert_identical(tmp_path / "out.h5", uninterrupted["patch"])


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_resume_with_other_settings_is_refused_and_keeps_the_batches(command, tiny_checkpoint, tmp_path, monkeypatch):
    args = (*COMMANDS[command], "--model", tiny_checkpoint("llada"), "--out", tmp_path / "out.h5")
    with monkeypatch.context() as patch:
        kill_after(patch, 1)
        assert run_cli(*args).returncode == 130
    folder = partial_path(tmp_path / "out.h5")
    before = sorted(p.name for p in folder.iterdir())
    one_line_refusal(run_cli(*args, "--seed", "1", "--resume"), "cannot resume", "seed")
    one_line_refusal(run_cli(*args, "--batch-size", "2", "--resume"), "cannot resume", "batch_size")
    assert sorted(p.name for p in folder.iterdir()) == before
    assert json.loads((folder / "run.json").read_text())["batch_size"] == 1


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_resume_without_anything_to_resume_or_with_overwrite_is_one_line(command, tiny_checkpoint, tmp_path):
    args = (*COMMANDS[command], "--model", tiny_checkpoint("llada"), "--out", tmp_path / "out.h5")
    one_line_refusal(run_cli(*args, "--resume"), "nothing to resume")
    one_line_refusal(run_cli(*args, "--resume", "--overwrite"), "--resume", "--overwrite")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_overwrite_discards_the_batches_of_a_killed_run(command, tiny_checkpoint, tmp_path, uninterrupted,
                                                        monkeypatch):
    args = (*COMMANDS[command], "--model", tiny_checkpoint("llada"), "--out", tmp_path / "out.h5")
    with monkeypatch.context() as patch:
        kill_after(patch, 1)
        assert run_cli(*args, "--seed", "1").returncode == 130  # batches of other settings
    result = run_cli(*args, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert not partial_path(tmp_path / "out.h5").exists()
    assert_identical(tmp_path / "out.h5", uninterrupted[command])


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_resume_of_a_complete_store_leaves_it_and_refuses_other_settings(command, tiny_checkpoint, tmp_path,
                                                                         uninterrupted, monkeypatch):
    args = (*COMMANDS[command], "--model", tiny_checkpoint("llada"), "--out", tmp_path / "out.h5")
    assert run_cli(*args).returncode == 0
    written = (tmp_path / "out.h5").stat().st_mtime_ns
    monkeypatch.setattr(partial_module.PartialResults, "commit", lambda *a, **kw: pytest.fail("recomputed"))
    again = run_cli(*args, "--resume")
    assert again.returncode == 0 and "wrote" in again.stdout, again.stderr
    assert (tmp_path / "out.h5").stat().st_mtime_ns == written
    one_line_refusal(run_cli(*args, "--seed", "1", "--resume"), "cannot resume", "complete", "seed")


def test_messages_suggest_only_flags_the_command_has(tiny_checkpoint, tmp_path):
    for command, args in COMMANDS.items():
        out = tmp_path / f"{command}.h5"
        assert run_cli(*args, "--model", tiny_checkpoint("llada"), "--out", out).returncode == 0
        refused = run_cli(*args, "--model", tiny_checkpoint("llada"), "--out", out)
        one_line_refusal(refused, "--resume", "--overwrite")
        assert "--resume" in run_cli(command, "--help").stdout


def test_a_killed_overwrite_keeps_the_old_store_until_resume_replaces_it(tiny_checkpoint, tmp_path, uninterrupted,
                                                                        monkeypatch):
    args = (*COMMANDS["ablate"], "--model", tiny_checkpoint("llada"), "--out", tmp_path / "out.h5")
    assert run_cli(*args, "--seed", "1").returncode == 0
    old = (tmp_path / "out.h5").read_bytes()
    with monkeypatch.context() as patch:
        kill_after(patch, 3)
        assert run_cli(*args, "--overwrite").returncode == 130
    assert (tmp_path / "out.h5").read_bytes() == old
    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_identical(tmp_path / "out.h5", uninterrupted["ablate"])
