"""Faults: SIGKILL at random moments then --resume, a reader during a write, a second writer, damaged
and foreign stores, and --overwrite runs that fail or are killed.

The killed writers and the concurrent writer are real processes, forked from the test process (it has
torch imported already, so a child starts in milliseconds); readers and resumes run in-process.
"""

import os
import random
import signal
import struct
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import mdlm_interp.record
from cli_run import run_cli
from mdlm_interp.cli import main
from mdlm_interp.errors import UsageError
from mdlm_interp.outputs import holder
from mdlm_interp.store import open_store

COMMIT_ROWS = 64  # the writer's default rows per chunk and commit
ROWS = 2 * 2 * 40  # tasks x masks x n


def record_args(checkpoint, out, batch_size, *extra):
    return ["record", "--model", str(checkpoint), "--task", "adjective+largest,verb+smallest", "--masks", "1,3",
            "--n", "40", "--n-relevant", "4", "--n-distractor", "8", "--batch-size", str(batch_size),
            "--no-progress", "--out", str(out), *extra]


def spawn(args) -> int:
    """Fork a process that runs ``mdlm-interp ARGS`` silently; return its pid."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 3
        try:
            quiet = os.open(os.devnull, os.O_WRONLY)
            os.dup2(quiet, 1)
            os.dup2(quiet, 2)
            code = main([str(a) for a in args])
        finally:
            os._exit(code)
    return pid


def kill(pid: int) -> None:
    """SIGKILL the child ``pid`` and reap it (it may have ended, and been reaped, already)."""
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def wait(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def datasets(path) -> dict:
    with h5py.File(path, "r", locking=False) as file:
        out = {}
        file.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        return out


def assert_identical(a, b) -> None:
    """Two stores hold bit-identical datasets."""
    first, second = datasets(a), datasets(b)
    assert first.keys() == second.keys()
    for name in first:
        x, y = first[name], second[name]
        assert x.shape == y.shape, name
        if x.dtype == object:
            for xi, yi in zip(x, y):
                np.testing.assert_array_equal(xi, yi, err_msg=name)
        else:
            assert x.tobytes() == y.tobytes(), name


def assert_one_line_error(result, message: str = "") -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def summary_json(path) -> str:
    result = run_cli("summary", path, "--json")
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def references(tiny_checkpoint, tmp_path_factory):
    """Uninterrupted stores for batch sizes 7 (does not divide the commit size) and 8 (does)."""
    folder = tmp_path_factory.mktemp("references")
    out = {}
    for batch_size in (7, 8):
        path = folder / f"full{batch_size}.h5"
        result = run_cli(*record_args(tiny_checkpoint("llada"), path, batch_size))
        assert result.returncode == 0, result.stderr
        out[batch_size] = path
    assert COMMIT_ROWS % 7 and not COMMIT_ROWS % 8
    return out


@pytest.mark.parametrize("batch_size,seed", [(7, 0), (7, 1), (7, 5), (8, 2), (8, 7)])
def test_sigkill_at_a_random_moment_then_resume_equals_the_uninterrupted_run(batch_size, seed, references,
                                                                             tiny_checkpoint, tmp_path):
    """The kill lands a random time (0-0.4 s) after the run has committed a random number of chunks
    (0, 1 or 2): in start-up, mid-batch, mid-commit or after the end. Then --resume (with the same
    batch size; another is refused) gives a bit-identical store."""
    full = references[batch_size]
    out = tmp_path / "killed.h5"
    args = record_args(tiny_checkpoint("llada"), out, batch_size)
    rng = random.Random(seed)
    after_rows, delay = rng.choice([0, COMMIT_ROWS, 2 * COMMIT_ROWS]), rng.uniform(0.0, 0.4)
    pid = spawn(args)
    while committed(out) < after_rows and not os.waitpid(pid, os.WNOHANG)[0]:
        time.sleep(0.005)
    time.sleep(delay)
    kill(pid)
    assert holder(out) is None  # the kernel released the dead writer's lock
    if out.exists():
        again = run_cli(*args)
        assert_one_line_error(again, "--resume")
        with open_store(out) as store:
            # whole chunks, or every row (killed between the last commit and marking the store complete)
            assert store.n_rows % COMMIT_ROWS == 0 or store.n_rows == planned_rows(full)
        other = run_cli(*record_args(tiny_checkpoint("llada"), out, batch_size + 1, "--resume"))
        assert_one_line_error(other, "settings.batch_size is")
    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_identical(out, full)
    assert summary_json(out) == summary_json(full)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed.h5"]  # no lock, building or pending file left


@pytest.mark.parametrize("batch_size", [7, 8])
def test_a_resumed_run_computes_the_batches_of_the_uninterrupted_run(batch_size, tiny_checkpoint, tmp_path,
                                                                     monkeypatch):
    """Batch composition (hence padding, hence floats) must not depend on where a run was interrupted:
    at batch size 7 the uninterrupted run has the batch [63, 70), which a resume from row 64 must
    compute again rather than start [64, 71)."""
    batches = []
    real = mdlm_interp.record.plan_columns
    monkeypatch.setattr(mdlm_interp.record, "plan_columns",
                        lambda config, causal, planned, rows: batches.append(rows) or real(config, causal, planned, rows))
    args = record_args(tiny_checkpoint("llada"), tmp_path / "full.h5", batch_size)
    assert run_cli(*args).returncode == 0
    uninterrupted, batches[:] = list(batches), []
    args = record_args(tiny_checkpoint("llada"), tmp_path / "cut.h5", batch_size)
    restore = fail_after_a_commit(monkeypatch, batches=COMMIT_ROWS // batch_size + 2)
    with pytest.raises(RuntimeError):
        run_cli(*args)
    restore()
    batches.clear()
    assert committed(tmp_path / "cut.h5") == COMMIT_ROWS and run_cli(*args, "--resume").returncode == 0
    first = uninterrupted.index(batches[0])
    assert batches == uninterrupted[first:] and batches[0].start <= COMMIT_ROWS < batches[0].stop
    assert_identical(tmp_path / "cut.h5", tmp_path / "full.h5")


def test_a_reader_reads_committed_rows_while_another_process_writes(references, tiny_checkpoint, tmp_path):
    full = references[8]
    out = tmp_path / "live.h5"
    args = record_args(tiny_checkpoint("llada"), out, 8)
    with open_store(full) as store:
        expected = {"examples": store.examples, "attention": store.attention["mask_mass_from_answer"],
                    "lens": store.lens["p_answer"]}
    tokens = datasets(full)["tokens/input_ids"]
    pid = spawn(args)
    seen, refused = set(), []
    deadline = time.time() + 300
    while not os.waitpid(pid, os.WNOHANG)[0]:
        assert time.time() < deadline, "the writer did not finish"
        if not out.exists():
            time.sleep(0.01)
            continue
        with open_store(out) as store:
            n = store.n_rows
            seen.add((n, store.attrs["status"]))
            assert len(store.examples) == n
            if n:
                assert store.examples.equals(expected["examples"].iloc[:n])
                np.testing.assert_array_equal(store.attention["mask_mass_from_answer"], expected["attention"][:n])
                np.testing.assert_array_equal(store.lens["p_answer"], expected["lens"][:n])
                np.testing.assert_array_equal(store.tokens(n - 1), tokens[n - 1])
        if 0 < n < ROWS and not refused:
            summary = run_cli("summary", out)
            assert summary.returncode == 0 and f"{n} of {ROWS} rows (running)" in summary.stdout, summary.stderr
            for flag in ("--overwrite", "--resume"):  # a second writer is refused and takes nothing away
                refused.append(run_cli(*args, flag))
        time.sleep(0.02)
    assert any(0 < n < ROWS for n, _ in seen), seen
    for result in refused:
        assert_one_line_error(result, "is being written by another process (pid ")
    assert_identical(out, full)


# ---- --overwrite -------------------------------------------------------------------------------

def fail_after_a_commit(monkeypatch, batches: int = 10):
    """Make the recording's forward pass raise on its ``batches``-th batch (after a commit at batch size 8)."""
    calls = []
    real = mdlm_interp.record.record_batch

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == batches:
            raise RuntimeError("out of memory, say")
        return real(*args, **kwargs)

    monkeypatch.setattr(mdlm_interp.record, "record_batch", failing)
    return lambda: monkeypatch.setattr(mdlm_interp.record, "record_batch", real)


def test_a_failed_overwrite_leaves_the_old_store_intact(references, tiny_checkpoint, tmp_path, monkeypatch):
    old = tmp_path / "s.h5"
    old.write_bytes(references[8].read_bytes())
    before = old.read_bytes()
    overwrite = record_args(tiny_checkpoint("llada"), old, 8, "--seed", "1", "--overwrite")
    restore = fail_after_a_commit(monkeypatch)
    with pytest.raises(RuntimeError, match="out of memory"):
        run_cli(*overwrite)
    restore()
    assert old.read_bytes() == before
    assert summary_json(old) == summary_json(references[8])
    assert run_cli(*overwrite).returncode == 0  # a new overwrite starts again and replaces the old store
    with open_store(old) as store:
        assert store.attrs["settings"]["seed"] == 1 and store.attrs["status"] == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]


def test_a_killed_overwrite_leaves_the_old_store_and_resumes(references, tiny_checkpoint, tmp_path):
    old = tmp_path / "s.h5"
    old.write_bytes(references[8].read_bytes())
    before = old.read_bytes()
    new_args = record_args(tiny_checkpoint("llada"), old, 8, "--seed", "1")
    pending = tmp_path / "s.overwrite.h5"
    pid = spawn([*new_args, "--overwrite"])
    deadline = time.time() + 120
    while time.time() < deadline and not os.waitpid(pid, os.WNOHANG)[0]:
        if pending.exists():
            with open_store(pending) as store:
                if store.n_rows >= COMMIT_ROWS:
                    break
        time.sleep(0.01)
    kill(pid)
    assert pending.exists() and old.read_bytes() == before
    assert summary_json(old) == summary_json(references[8])
    resumed = run_cli(*new_args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert not pending.exists()
    fresh = tmp_path / "fresh.h5"
    assert run_cli(*record_args(tiny_checkpoint("llada"), fresh, 8, "--seed", "1")).returncode == 0
    assert_identical(old, fresh)


def test_the_store_names_its_dtype_without_torch(references):
    with open_store(references[8]) as store:
        assert store.attrs["dtype"] == "float32" and store.attrs["settings"]["dtype"] == "float32"
        assert store.attrs["settings"]["batch_size"] == 8


# ---- damaged and foreign stores ------------------------------------------------------------------

def global_heaps(data: bytes) -> list:
    """Return the [start, end) byte ranges of HDF5 global heap collections ("GCOL"), which hold the
    variable-length strings and arrays and, unlike every other part of the file, carry no checksum."""
    ranges, at = [], data.find(b"GCOL")
    while at != -1:
        ranges.append((at, at + struct.unpack("<Q", data[at + 8:at + 16])[0]))
        at = data.find(b"GCOL", at + 4)
    return ranges


def chunk_offset(path, dataset: str) -> int:
    with h5py.File(path, "r", locking=False) as file:
        info = file[dataset].id.get_chunk_info(0)
        return info.byte_offset + info.size // 2


def planned_rows(path) -> int:
    """Return the rows of the complete store at ``path``."""
    with open_store(path) as store:
        return store.n_rows


def committed(path) -> int:
    """Return the rows a store has committed (0 while it does not exist yet)."""
    if not path.exists():
        return 0
    with open_store(path) as store:
        return store.n_rows


def check_refused(path, message: str, tiny_checkpoint) -> None:
    """summary, open_store and record --resume all refuse ``path`` in one line and leave it as it was."""
    before = path.read_bytes()
    assert_one_line_error(run_cli("summary", path), message)
    with pytest.raises(UsageError, match=message):
        with open_store(path) as store:
            store.examples
    assert_one_line_error(run_cli(*record_args(tiny_checkpoint("llada"), path, 8, "--resume")), message)
    assert path.read_bytes() == before


def damage(source, target, edit) -> Path:
    target.write_bytes(source.read_bytes())
    edit(target)
    return target


def flip(offset: int):
    def edit(path):
        data = bytearray(path.read_bytes())
        data[offset] ^= 0x10
        path.write_bytes(bytes(data))
    return edit


def edit_h5(change):
    def edit(path):
        with h5py.File(path, "r+", locking=False) as file:
            change(file)
    return edit


@pytest.mark.parametrize("name,edit,message", [
    ("truncated half", lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "is damaged"),
    ("truncated tail", lambda p: p.write_bytes(p.read_bytes()[:-100]), "is damaged"),
    ("text", lambda p: p.write_text("not a store"), "not an HDF5 file"),
    ("empty", lambda p: p.write_bytes(b""), "not an HDF5 file"),
    ("foreign hdf5", lambda p: (p.unlink(), h5py.File(p, "w").close()), "not an mdlm-interp store"),
    ("other schema", edit_h5(lambda f: f.attrs.modify("schema_version", 99)), "schema version 99"),
    ("settings not json", edit_h5(lambda f: f.attrs.modify("settings", "{not json")), "settings is not valid JSON"),
    ("settings a list", edit_h5(lambda f: f.attrs.modify("settings", "[1, 2]")), "settings is not a JSON object"),
    ("missing dataset", edit_h5(lambda f: f.__delitem__("lens/rank")), "dataset lens/rank is missing"),
    ("short dataset", edit_h5(lambda f: f["gradients/mask_mean"].resize(100, axis=0)), "has 100 rows"),
    ("counter past the plan", edit_h5(lambda f: f.attrs.modify("n_rows_done", np.int64(10 ** 6))), "outside"),
    ("flipped gzip chunk", "examples/p_answer", "cannot read examples/p_answer"),
])
def test_damaged_and_foreign_stores_are_one_line_and_untouched(name, edit, message, references, tiny_checkpoint,
                                                               tmp_path):
    full = references[8]
    if isinstance(edit, str):
        edit = flip(chunk_offset(full, edit))
    check_refused(damage(full, tmp_path / "bad.h5", edit), message, tiny_checkpoint)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("killed", [False, True])
def test_random_bit_flips_give_the_right_answer_or_one_line(killed, references, tiny_checkpoint, tmp_path):
    """Flips anywhere but in global heaps (no checksum there, see ``global_heaps``): summary prints what
    the undamaged store gives, or one line and exit 2. A killed run's store is read as an SWMR reader,
    where HDF5 would retry a bad checksum for minutes by default."""
    source = references[8]
    if killed:
        source = tmp_path / "killed.h5"
        pid = spawn(record_args(tiny_checkpoint("llada"), source, 8))
        while committed(source) < 2 * COMMIT_ROWS:
            time.sleep(0.01)
        kill(pid)
        with open_store(source) as store:
            assert store.attrs["status"] == "running" and store.file.id.get_intent() & h5py.h5f.ACC_SWMR_READ
    data = source.read_bytes()
    expected = summary_json(source)
    heaps = global_heaps(data)
    outcomes = set()
    for seed in range(40):
        rng = random.Random(seed)
        damaged = bytearray(data)
        for _ in range(rng.choice([1, 1, 4])):
            offset = rng.randrange(len(damaged))
            while any(start <= offset < end for start, end in heaps):
                offset = rng.randrange(len(damaged))
            damaged[offset] ^= 1 << rng.randrange(8)
        path = tmp_path / "flipped.h5"
        path.write_bytes(bytes(damaged))
        result = run_cli("summary", path, "--json")
        if result.returncode == 0:
            assert result.stdout == expected, seed
        else:
            assert_one_line_error(result)
        outcomes.add(result.returncode)
    assert outcomes == {0, 2}


def test_resume_of_a_store_with_a_missing_dataset_changes_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    # the case of the issue: before, resume recomputed rows, then crashed and left the file inconsistent
    out = tmp_path / "s.h5"
    args = record_args(tiny_checkpoint("llada"), out, 8)
    restore = fail_after_a_commit(monkeypatch)
    with pytest.raises(RuntimeError):
        run_cli(*args)
    restore()
    assert committed(out) == COMMIT_ROWS
    with h5py.File(out, "r+", locking=False) as file:
        del file["attention/mask_mass_from_context"]
    before = out.read_bytes()
    assert_one_line_error(run_cli(*args, "--resume"), "dataset attention/mask_mass_from_context is missing")
    assert_one_line_error(run_cli("summary", out), "dataset attention/mask_mass_from_context is missing")
    assert out.read_bytes() == before
