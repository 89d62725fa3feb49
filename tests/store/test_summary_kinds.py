"""`mdlm-interp summary` describes every kind of file the toolkit writes (issue 19 item 7), one describer per kind."""

import json

from cli_run import run_cli
from test_damaged_files import trace_file
from synthetic_stores import write_store
from synthetic_results import BASE, ablation_store, patching_store


def summary(path) -> dict:
    result = run_cli("summary", path, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_summary_of_a_record_store(tmp_path):
    rows = [{"task": "adjective+largest", "prompt": p, "masks": m, "correct": p < 2} for p in range(4) for m in (1, 6)]
    found = summary(write_store(tmp_path / "r.h5", rows))
    assert found["kind"] == "record" and [(c["masks"], c["n"], c["accuracy"]) for c in found["conditions"]] == [
        (1, 4, 0.5), (6, 4, 0.5)]


def test_summary_of_a_patching_store_gives_each_run(tmp_path):
    found = summary(patching_store(tmp_path / "p.h5", BASE))
    assert found["kind"] == "patching"
    clean, corrupt = found["conditions"]
    assert (clean["run"], clean["masks"], clean["n"], clean["logit_diff"]) == ("clean", 1, 4, 5.0)  # mean 4, 6, 5, 5
    assert (corrupt["run"], corrupt["masks"], corrupt["logit_diff"]) == ("corrupt", 6, 0.0)  # mean 0, 2, -1, -1
    table = run_cli("summary", tmp_path / "p.h5").stdout.splitlines()
    assert "patching store, 4 prompt pairs" in table[0] and table[1].split()[0] == "run"


def test_summary_of_an_ablation_store_gives_accuracy_per_mode(tmp_path):
    found = summary(ablation_store(tmp_path / "a.h5", [1, 0, 1, 1], [0, 0, 1, 0], [[1, 0], [0, 0], [1, 1], [0, 1]]))
    assert found == {"kind": "ablation", "conditions": [{"masks": 50, "n": 4, "accuracy": 0.75, "ablated zero": 0.25}]}


def test_summary_of_a_decode_trace(tmp_path):
    found = summary(trace_file(tmp_path / "t.h5"))
    assert found["kind"] == "trace"
    assert [(c["prompt"], c["steps"], c["unmasked"], c["text"]) for c in found["conditions"]] == [
        (0, 3, 3, "a b"), (1, 3, 3, "c")]
    header = run_cli("summary", tmp_path / "t.h5").stdout.splitlines()[0]
    assert "decode trace, 3 steps, 2 prompts" in header


def test_summary_of_a_foreign_hdf5_file_is_one_line(tmp_path):
    import h5py

    with h5py.File(tmp_path / "x.h5", "w") as file:
        file.attrs["store_kind"] = "spectrogram"
    result = run_cli("summary", tmp_path / "x.h5")
    assert result.returncode == 2 and "spectrogram" in result.stderr and len(result.stderr.strip().splitlines()) == 1
