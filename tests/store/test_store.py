"""The HDF5 store: schema round trip, resume after a kill, refusals, summary, shard merge, docs."""

import json
import os
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import pytest

from mdlm_interp.cli import main
from mdlm_interp.errors import UsageError
from mdlm_interp.store import Provenance, check_writable, merge_stores, open_store, open_writer, schema
from mdlm_interp.store.summary import summarize
from mdlm_interp.version import __version__

TESTS_DIR = Path(__file__).resolve().parent
DIMS = {"k": 3, "relevant": 2, "layers": 2, "heads": 3, "steps": 2}
PROVENANCE = Provenance(
    command_line="mdlm-interp record --test",
    model_id="organism-llada",
    family="llada",
    dtype="float32",
    weights_fingerprint="sha256:abc123",
    task_config={"task": "adjective+largest", "n_relevant": 2},
    seed=7,
)
SETTINGS = {"masks": [1, 5], "filler": [False, True], "seed": 7}
GROUPS = tuple(g for g in schema.GROUPS if g not in ("blocks", "routing"))  # those of a dense model's record


def make_rows(start: int, stop: int, groups=GROUPS) -> dict:
    """Return a writer batch of rows start..stop-1; every value is a function of its row index and field."""
    batch = {}
    lengths = [5 + r % 7 for r in range(start, stop)]
    for index, field in enumerate(schema.fields(set(groups) | {"examples"})):
        values = []
        for r, length in zip(range(start, stop), lengths):
            rng = np.random.default_rng([r, index])
            shape = field.row_shape(DIMS)
            if field.path == "examples/input_length":
                values.append(length)
            elif field.dtype == "str":
                values.append(f"{field.name}-{r % 3}-é")
            elif field.vlen:
                size = 0 if field.may_be_empty and r % 2 else field.vlen_length(length, DIMS)
                values.append(rng.random(size) * 100 if "float" in field.dtype else rng.integers(0, 9999, size))
            elif field.dtype == "bool":
                values.append(rng.random(shape) < 0.5)
            elif field.dtype.startswith("int"):
                values.append(rng.integers(-5, 100_000, shape))
            else:
                values.append(rng.random(shape))
        batch[field.path] = values if field.dtype == "str" or field.vlen else np.array(values)
    return batch


def new_writer(path, n_planned, groups=GROUPS, settings=SETTINGS, dims=DIMS, **options):
    """Return open_writer(...) with the test provenance."""
    return open_writer(
        path, settings=settings, provenance=PROVENANCE, groups=groups, dims=dims, n_planned=n_planned, **options
    )


def write_store(path, batch_sizes, groups=GROUPS, settings=SETTINGS, rows_per_chunk=4):
    """Write and finish a store of sum(batch_sizes) rows from make_rows; return its path."""
    with new_writer(path, sum(batch_sizes), groups, settings, rows_per_chunk=rows_per_chunk) as writer:
        start = 0
        for size in batch_sizes:
            writer.append(make_rows(start, start + size, groups))
            start += size
        writer.finish()
    return path


def read_all(path) -> dict:
    """Return {dataset path: array} of every recorded dataset of the store at ``path``."""
    with open_store(path) as store:
        return {f.path: store.array(f.path) for f in schema.fields(store.groups)}


def assert_field_equal(field, actual, expected):
    """Assert the values (and element dtypes) of one dataset equal the batch values."""
    assert len(actual) == len(expected), field.path
    if field.vlen:
        for a, e in zip(actual, expected):
            assert a.dtype == field.numpy_dtype, field.path
            np.testing.assert_array_equal(a, np.asarray(e).astype(field.numpy_dtype))
    elif field.dtype == "str":
        assert list(actual) == list(expected), field.path
    else:
        assert actual.dtype == field.numpy_dtype, field.path
        np.testing.assert_array_equal(actual, np.asarray(expected).astype(field.numpy_dtype), err_msg=field.path)


def assert_stores_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for field in schema.fields():
        if field.path in a:
            assert_field_equal(field, a[field.path], b[field.path])


def test_round_trip_of_every_dataset_and_attribute(tmp_path):
    path = write_store(tmp_path / "s.h5", [3, 5, 2, 1])
    expected = make_rows(0, 11)
    with open_store(path) as store:
        assert store.n_rows == 11 and store.groups == GROUPS and store.dims == DIMS
        for field in schema.fields(GROUPS):
            assert_field_equal(field, store.array(field.path), expected[field.path])
        np.testing.assert_array_equal(store.tokens(4), expected["tokens/input_ids"][4])
        np.testing.assert_array_equal(store.tokens(-1), expected["tokens/input_ids"][10])
        np.testing.assert_allclose(store.grad_norms(2), expected["gradients/norms"][2], rtol=1e-6)
        assert store.grad_norms(2).dtype == np.float32
        with pytest.raises(IndexError):
            store.tokens(11)
        assert store.attention["mask_mass_from_answer"].shape == (11, 2, 3)
        assert store.lens["rank"].shape == (11, 3)
        assert set(store.gradients) == {"norms", "mask_mean", "last50_mean", "nonmask_mean"}
        attrs = store.attrs
        for name in ("command_line", "model_id", "family", "dtype", "weights_fingerprint", "seed"):
            assert attrs[name] == getattr(PROVENANCE, name)
        assert attrs["task_config"] == PROVENANCE.task_config
        assert attrs["settings"] == SETTINGS
        assert attrs["dims"] == DIMS
        assert (attrs["schema_version"], attrs["toolkit_version"]) == (schema.SCHEMA_VERSION, __version__)
        assert (attrs["status"], attrs["n_planned"], attrs["n_rows_done"]) == ("complete", 11, 11)
        assert datetime.fromisoformat(attrs["created"]).tzinfo is not None
        assert {a.name for a in schema.ATTRS} - set(attrs) == {"merged_from"}
    with h5py.File(path) as file:
        dataset = file["attention/mask_mass_from_answer"]
        assert (dataset.chunks, dataset.maxshape, dataset.compression) == ((4, 2, 3), (None, 2, 3), "gzip")


def test_examples_dataframe_has_one_column_per_scalar_dataset(tmp_path):
    path = write_store(tmp_path / "s.h5", [6])
    expected = make_rows(0, 6)
    with open_store(path) as store:
        frame = store.examples
    scalar = [f for f in schema.fields(("examples",)) if len(f.shape) == 1]
    assert list(frame.columns) == [f.name for f in scalar]
    assert len(frame) == 6
    assert frame["filler"].dtype == bool and frame["correct"].dtype == bool
    assert frame["p_answer"].dtype == np.float32 and frame["masks"].dtype == np.int32
    assert list(frame["task"]) == expected["examples/task"]
    np.testing.assert_array_equal(frame["row"], expected["examples/row"])


def test_unrecorded_groups_are_absent(tmp_path):
    path = write_store(tmp_path / "s.h5", [5], groups=("attention",))
    with open_store(path) as store:
        assert store.groups == ("examples", "attention")
        assert "tokens" not in store.file and "lens" not in store.file
        with pytest.raises(UsageError, match="no /lens group"):
            store.lens
        with pytest.raises(UsageError, match="no /tokens group"):
            store.tokens(0)
        with pytest.raises(UsageError, match="no /gradients group"):
            store.array("gradients/mask_mean")
        assert set(summarize(store)[0]) >= {"mask_attention"}
        assert not {"grad_mask", "grad_last50", "grad_nonmask"} & set(summarize(store)[0])


def test_malformed_batches_are_rejected(tmp_path):
    with new_writer(tmp_path / "s.h5", 4) as writer:
        good = make_rows(0, 2)
        bad_cases = [
            ({k: v for k, v in good.items() if k != "lens/rank"}, "missing"),
            ({**good, "lens/extra": good["lens/rank"]}, "unexpected"),
            ({**good, "attention/mask_mass_from_answer": np.zeros((2, 3, 2))}, "shape"),
            ({**good, "examples/answer_id": np.zeros(2) + 0.5}, "cannot become"),
            ({**good, "examples/correct": np.ones(2, dtype=np.int64)}, "cannot become"),
            ({**good, "examples/task": [1, 2]}, "str"),
            ({**good, "tokens/input_ids": [np.zeros(3, np.int32)] * 2}, "lengths"),
            ({**good, "examples/p_answer": np.zeros(3)}, "row counts"),
        ]
        for batch, message in bad_cases:
            with pytest.raises(ValueError, match=message):
                writer.append(batch)
        writer.append(make_rows(0, 4))
        with pytest.raises(ValueError, match="planned"):
            writer.append(make_rows(4, 5))


def test_rows_commit_in_whole_chunks_and_close_keeps_only_committed(tmp_path):
    path = tmp_path / "s.h5"
    with new_writer(path, 20, rows_per_chunk=4) as writer:
        assert writer.append(make_rows(0, 3)) == 0
        assert writer.append(make_rows(3, 6)) == 4
        assert writer.append(make_rows(6, 13)) == 12
    with open_store(path) as store:
        assert (store.n_rows, store.attrs["status"]) == (12, "running")
        assert all(len(store.file[f.path]) == 12 for f in schema.fields(GROUPS))
    with new_writer(path, 20, resume=True) as writer:
        assert writer.n_rows_done == 12
        writer.append(make_rows(12, 20))
        writer.finish()
    assert_stores_equal(read_all(path), read_all(write_store(tmp_path / "ref.h5", [20])))


def test_resume_cuts_rows_beyond_the_counter_and_continues_like_an_uninterrupted_run(tmp_path):
    path = tmp_path / "s.h5"
    with new_writer(path, 14, rows_per_chunk=4) as writer:
        writer.append(make_rows(0, 9))  # commits 8
    with h5py.File(path, "r+") as file:  # a kill between the data and the counter, some datasets grown
        for field in schema.fields(GROUPS)[::2]:
            dataset = file[field.path]
            dataset.resize(11, axis=0)
            if not (field.vlen or field.dtype == "str"):
                dataset[8:11] = np.ones((3,) + dataset.shape[1:], dtype=dataset.dtype)
    with open_store(path) as store:
        assert store.n_rows == 8 and len(store.examples) == 8
    with new_writer(path, 14, resume=True) as writer:
        assert writer.n_rows_done == 8
        with h5py.File(path, "r", locking=False) as file:
            assert {len(file[f.path]) for f in schema.fields(GROUPS)} == {8}
        writer.append(make_rows(8, 10))
        writer.append(make_rows(10, 14))
        writer.finish()
    assert_stores_equal(read_all(path), read_all(write_store(tmp_path / "ref.h5", [14], rows_per_chunk=5)))


KILLED_CHILD = r"""
import sys
sys.path.insert(0, sys.argv[2])
from test_store import make_rows, new_writer
writer = new_writer(sys.argv[1], 100_000, resume=True, rows_per_chunk=4)
start = writer.n_rows_done
print(start, flush=True)
while True:
    writer.append(make_rows(start, start + 3))
    start += 3
    print(writer.n_rows_done, flush=True)
"""


def test_sigkill_loses_no_committed_row(tmp_path):
    path = tmp_path / "killed.h5"
    done = 0
    for _ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", KILLED_CHILD, str(path), str(TESTS_DIR)], stdout=subprocess.PIPE, text=True
        )
        assert int(child.stdout.readline()) == done  # resumed where the last kill left it
        for line in child.stdout:
            if int(line) >= done + 8:
                break
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
        with open_store(path) as store:
            assert store.n_rows >= done + 8 and store.n_rows % 4 == 0
            done = store.n_rows
        assert_stores_equal(read_all(path), make_rows(0, done))


def test_existing_file_is_refused_without_resume_or_overwrite(tmp_path):
    path = write_store(tmp_path / "s.h5", [4])
    before = path.read_bytes()
    with pytest.raises(UsageError, match="exists"):
        new_writer(path, 4)
    with pytest.raises(UsageError, match="exists"):
        check_writable(path)
    assert path.read_bytes() == before
    with new_writer(path, 2, settings={"other": 1}, overwrite=True) as writer:
        writer.append(make_rows(0, 2))
        writer.finish()
    with open_store(path) as store:
        assert (store.n_rows, store.attrs["settings"]) == (2, {"other": 1})


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"settings": {**SETTINGS, "masks": [1, 10]}}, "settings.masks"),
        ({"settings": {"masks": [1, 5], "seed": 7}}, "settings.filler"),
        ({"dims": {**DIMS, "heads": 4}}, "dims.heads"),
        ({"groups": tuple(g for g in GROUPS if g != "tokens")}, "groups"),
        ({"n_planned": 9}, "n_planned"),
    ],
)
def test_resume_with_different_settings_is_refused(tmp_path, change, named):
    path = tmp_path / "s.h5"
    with new_writer(path, 8, rows_per_chunk=4) as writer:
        writer.append(make_rows(0, 4))
    before = path.read_bytes()
    arguments = {"n_planned": 8, **change}
    with pytest.raises(UsageError, match=named.replace(".", r"\.")):
        new_writer(path, resume=True, **arguments)
    assert path.read_bytes() == before


def test_resume_of_a_file_that_is_not_a_store_is_refused(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_text("junk")
    with pytest.raises(UsageError, match="cannot resume"):
        new_writer(junk, 4, resume=True)
    assert junk.read_text() == "junk"


def test_unwritable_outputs_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="does not exist"):
        check_writable(tmp_path / "missing" / "s.h5")
    with pytest.raises(UsageError, match="does not exist"):
        new_writer(tmp_path / "file" / "s.h5", 4)
    with pytest.raises(UsageError, match="folder"):
        check_writable(tmp_path)
    with pytest.raises(UsageError, match="exclude"):
        check_writable(tmp_path / "s.h5", resume=True, overwrite=True)
    assert check_writable(tmp_path / "s.h5") == tmp_path / "s.h5"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the probe file is gone


def test_open_store_rejects_what_is_not_a_store(tmp_path):
    (tmp_path / "text.h5").write_text("not hdf5")
    with h5py.File(tmp_path / "plain.h5", "w") as file:
        file["x"] = 1
    for name, message in [("missing.h5", "no store"), ("text.h5", "not an HDF5"), ("plain.h5", "not an mdlm-interp")]:
        with pytest.raises(UsageError, match=message):
            open_store(tmp_path / name)


CONDITION_ROWS = [  # (masks, filler, placement, correct, p, entropy, attention, grad mask/last50/non-mask)
    (1, False, "random", True, 0.5, 1.0, 0.0, (0.3, 0.01, float("nan"))),
    (5, True, "random", False, 0.1, 2.0, 0.2, (0.2, 0.1, float("nan"))),
    (5, False, "relevant-at:0", True, 0.9, 0.5, 0.6, (0.5, 0.05, 0.01)),
    (1, False, "random", False, 0.2, 2.0, 0.0, (0.3, 0.02, 0.1)),
    (5, True, "random", False, 0.3, 4.0, 0.4, (0.4, 0.3, float("nan"))),
    (1, False, "random", True, 0.8, 3.0, 0.0, (0.6, 0.03, 0.2)),
]
EXPECTED_CONDITIONS = [  # by hand from CONDITION_ROWS
    {"masks": 1, "filler": False, "placement": "random", "n": 3, "accuracy": 2 / 3, "p_answer": 0.5,
     "entropy": 2.0, "mask_attention": 0.0, "grad_mask": 0.4, "grad_last50": 0.02, "grad_nonmask": 0.15,
     "decoded_accuracy": 1.0},
    {"masks": 5, "filler": True, "placement": "random", "n": 2, "accuracy": 0.0, "p_answer": 0.2,
     "entropy": 3.0, "mask_attention": 0.3, "grad_mask": 0.3, "grad_last50": 0.2, "grad_nonmask": None,
     "decoded_accuracy": 0.5},
    {"masks": 5, "filler": False, "placement": "relevant-at:0", "n": 1, "accuracy": 1.0, "p_answer": 0.9,
     "entropy": 0.5, "mask_attention": 0.6, "grad_mask": 0.5, "grad_last50": 0.05, "grad_nonmask": 0.01,
     "decoded_accuracy": 0.0},
]  # fmt: skip


def write_condition_store(path):
    batch = make_rows(0, len(CONDITION_ROWS))
    masks, filler, placement, correct, p, entropy, attention, grads = zip(*CONDITION_ROWS)
    batch.update({"examples/masks": np.array(masks), "examples/filler": np.array(filler)})
    batch.update({"examples/placement": list(placement), "examples/correct": np.array(correct)})
    batch.update({"examples/p_answer": np.array(p), "examples/entropy": np.array(entropy)})
    zero_mean = np.array([[-0.1, 0.0, 0.1], [0.1, 0.0, -0.1]])  # layer x head pattern averaging to 0
    batch["attention/mask_mass_from_answer"] = np.array([a + zero_mean for a in attention])
    for name, column in zip(("mask_mean", "last50_mean", "nonmask_mean"), zip(*grads)):
        batch[f"gradients/{name}"] = np.array(column)
    batch["decode/correct"] = np.array([True, True, False, True, False, True])
    with new_writer(path, len(CONDITION_ROWS)) as writer:
        writer.append(batch)
        writer.finish()
    return path


def test_summary_matches_a_hand_computation(tmp_path):
    with open_store(write_condition_store(tmp_path / "s.h5")) as store:
        conditions = summarize(store)
    assert [{k: c[k] for k in ("masks", "filler", "placement", "n")} for c in conditions] == [
        {k: e[k] for k in ("masks", "filler", "placement", "n")} for e in EXPECTED_CONDITIONS
    ]
    for actual, expected in zip(conditions, EXPECTED_CONDITIONS):
        assert actual.keys() == expected.keys()
        for key, value in expected.items():
            assert actual[key] == (pytest.approx(value, rel=1e-5, abs=1e-7) if isinstance(value, float) else value), key


def test_summary_command_json_table_and_errors(tmp_path, capsys):
    path = write_condition_store(tmp_path / "s.h5")
    assert main(["summary", str(path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert list(printed) == ["kind", "conditions"] and printed["kind"] == "record" and len(printed["conditions"]) == 3
    assert printed["conditions"][1]["grad_nonmask"] is None
    assert printed["conditions"][0]["accuracy"] == pytest.approx(2 / 3)
    assert main(["summary", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "6 of 6 rows (complete)" in lines[0] and "organism-llada" in lines[0]
    assert lines[1].split()[:4] == ["placement", "filler", "masks", "n"] and "grad non-mask" in lines[1]
    assert lines[2].split()[:5] == ["random", "no", "1", "3", "0.667"]
    assert len(lines) == 5
    with new_writer(tmp_path / "empty.h5", 4) as writer:
        writer.append(make_rows(0, 3))  # nothing committed yet
    assert main(["summary", str(tmp_path / "empty.h5"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"kind": "record", "conditions": []}
    (tmp_path / "junk.h5").write_text("junk")
    for bad in ("missing.h5", "junk.h5"):
        assert main(["summary", str(tmp_path / bad), "--json"]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and len(captured.err.strip().splitlines()) == 1


def test_merge_equals_concatenation(tmp_path, monkeypatch):
    shards = []
    for rank, sizes in enumerate([[5, 2], [4], [1]]):
        (tmp_path / "shards").mkdir(exist_ok=True)
        settings = {**SETTINGS, "shard": {"rank": rank, "world": 3}}
        shards.append(write_store(tmp_path / "shards" / f"r{rank}.h5", sizes, settings=settings))
    parts = [read_all(s) for s in shards]
    (tmp_path / "out").mkdir()
    merged = merge_stores(shards, tmp_path / "out" / "merged.h5")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # shard paths resolve against the merged file, not the working folder
    with open_store(merged) as store:
        assert (store.n_rows, store.attrs["status"], store.attrs["n_planned"]) == (12, "complete", 12)
        assert store.attrs["settings"] == SETTINGS
        assert store.attrs["merged_from"] == ["../shards/r0.h5", "../shards/r1.h5", "../shards/r2.h5"]
        assert store.file["examples/p_answer"].is_virtual
        assert len(store.examples) == 12
    concatenated = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    assert_stores_equal(read_all(merged), concatenated)
    with pytest.raises(UsageError, match="merged store"):
        new_writer(merged, 12, resume=True)
    shards[2].rename(tmp_path / "gone.h5")
    with pytest.raises(UsageError, match="missing"):
        open_store(merged)


def test_merge_refuses_mismatched_or_incomplete_shards(tmp_path):
    a = write_store(tmp_path / "a.h5", [4])
    b = write_store(tmp_path / "b.h5", [4], settings={**SETTINGS, "seed": 8})
    with pytest.raises(UsageError, match="settings.seed"):
        merge_stores([a, b], tmp_path / "m.h5")
    with new_writer(tmp_path / "c.h5", 8) as writer:
        writer.append(make_rows(0, 4))
    with pytest.raises(UsageError, match="running"):
        merge_stores([a, tmp_path / "c.h5"], tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()


def test_docs_carry_the_schema_tables():
    docs = (TESTS_DIR.parents[1] / "docs" / "store.md").read_text()
    assert schema.markdown() in docs, "regenerate the tables in docs/store.md from schema.markdown()"


def test_summary_orders_placement_slots_as_numbers():
    from mdlm_interp.store.summary import placement_order

    placements = ["relevant-at:10", "random", "relevant-at:5", "query-at:40", "relevant-at:40", "query-at:9",
                  "relevant-at:5,query-at:12", "relevant-at:5,query-at:3"]
    assert sorted(placements, key=placement_order) == [
        "query-at:9", "query-at:40", "random", "relevant-at:5", "relevant-at:5,query-at:3",
        "relevant-at:5,query-at:12", "relevant-at:10", "relevant-at:40"]
