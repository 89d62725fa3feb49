"""compare: models told apart by identity, not folder name; held-in / held-out split only when named; a named
reference; NaN values (issue 19 items 8-9, issue 20, issue 26 items 4 and 8)."""

import json

import h5py
import numpy as np
import pandas as pd

from cli_run import run_cli
from synthetic_stores import write_store

from mdlm_interp.analyses import load
from mdlm_interp.compare import write_comparison


def rows(shift=0, attention=None):
    out = []
    for task in ("adjective+largest", "verb+smallest"):
        for prompt in range(3):
            for masks in (1, 3, 6):
                out.append({"task": task, "prompt": prompt, "masks": masks, "correct": (prompt + masks + shift) % 2 == 0,
                            "from_answer": np.full((2, 3), 0.1 * masks) if attention is None else attention})
    return out


def with_adapter(path, adapter_path, fingerprint):
    """Give the record store at ``path`` an adapter in its settings, as `record --adapter` wrote them before
    the identity attributes existed (``read_identity`` reads it from there)."""
    with h5py.File(path, "r+") as file:
        settings = json.loads(file.attrs["settings"])
        settings["adapter"] = {"path": str(adapter_path), "fingerprint": fingerprint, "merged": False}
        file.attrs["settings"] = json.dumps(settings)
        for name in ("adapter", "adapter_fingerprint"):  # not written before the identity attributes existed
            del file.attrs[name]
    return path


def test_two_adapters_in_folders_of_the_same_name_are_two_models(tmp_path):
    base = write_store(tmp_path / "base.h5", rows())
    one = with_adapter(write_store(tmp_path / "one.h5", rows(1)), tmp_path / "a" / "ma", "sha256:" + "11" * 32)
    two = with_adapter(write_store(tmp_path / "two.h5", rows(2)), tmp_path / "b" / "ma", "sha256:" + "22" * 32)
    recordings = load([base, one, two])
    assert recordings.models() == ["model", "model+ma@11111111", "model+ma@22222222"]
    assert not recordings.notes and len(recordings.rows) == 3 * len(rows())  # nothing "recorded twice"
    report = write_comparison([base, one, two], tmp_path / "out")
    accuracy = pd.read_csv(report.parent / "tables" / "accuracy.csv")
    assert list(dict.fromkeys(accuracy["model"])) == recordings.models()
    provenance = json.loads((report.parent / "provenance.json").read_text())
    assert [s["adapter_fingerprint"] for s in provenance["stores"]] == ["", "sha256:" + "11" * 32, "sha256:" + "22" * 32]
    # the same adapter recorded in two stores is one model: its rows pool and duplicates count once
    again = with_adapter(write_store(tmp_path / "again.h5", rows(1)), tmp_path / "c" / "ma", "sha256:" + "11" * 32)
    assert load([one, again]).models() == ["model+ma"] and "recorded twice" in load([one, again]).notes[0]


def test_categories_split_only_when_an_adapter_names_held_out_ones(tmp_path):
    base = write_store(tmp_path / "base.h5", rows())
    adapter = tmp_path / "adapters" / "ma"
    after = with_adapter(write_store(tmp_path / "after.h5", rows(1)), adapter, "sha256:" + "33" * 32)
    plain = write_comparison([base, after], tmp_path / "plain")
    groups = set(pd.read_csv(plain.parent / "tables" / "accuracy.csv")["group"])
    assert groups == {"all"} and "categories are not split" in plain.read_text()
    adapter.mkdir(parents=True)
    (adapter / "training_config.json").write_text(json.dumps({"config": {}, "provenance": {
        "held_out_categories": ["verb"]}}))
    split = write_comparison([base, after], tmp_path / "split")
    accuracy = pd.read_csv(split.parent / "tables" / "accuracy.csv")
    assert set(accuracy["group"]) == {"all", "held-in", "held-out"}
    held_out = accuracy[(accuracy["group"] == "held-out") & (accuracy["masks"] == 6)]
    assert set(held_out["n"]) == {3}  # the verb task's three prompts
    assert "held-in categories: adjective," in split.read_text() and "verb" not in json.loads(
        (split.parent / "provenance.json").read_text())["held_in"]
    flagged = run_cli("compare", base, after, "--held-in", "verb", "--out", tmp_path / "flag")
    assert flagged.returncode == 0, flagged.stderr
    assert set(pd.read_csv(tmp_path / "flag" / "tables" / "accuracy.csv")["group"]) == {"all", "held-in", "held-out"}


def test_compare_figures_name_the_reference_and_use_integer_head_ticks(tmp_path):
    from mdlm_interp.compare.pairing import load_models
    from mdlm_interp.compare.record import accuracy_figure, accuracy_table, attention_change, change_figure

    base = write_store(tmp_path / "base.h5", rows())
    other = write_store(tmp_path / "other.h5", rows(1), model_id="synthetic/other",
                        fingerprint="sha256:" + "cd" * 32)
    recordings = load_models([base, other])
    figure = accuracy_figure(accuracy_table(recordings), "model")
    assert "reference model" in figure._suptitle.get_text() and "n = 6" in figure._suptitle.get_text()
    labels = figure.axes[0].get_legend_handles_labels()[1] + figure.axes[-1].get_legend_handles_labels()[1]
    assert "model, filler" not in labels  # no filler control recorded: no legend entry for it
    heads = change_figure(attention_change(recordings), "model")
    assert "change against model" in heads._suptitle.get_text()
    assert [t.get_text() for t in heads.axes[0].get_xticklabels()] == ["0", "1", "2"]


def test_nan_values_do_not_crash_compare(tmp_path):
    base = write_store(tmp_path / "base.h5", rows(attention=np.full((2, 3), np.nan)))
    other = write_store(tmp_path / "other.h5", rows(1, attention=np.full((2, 3), np.nan)), model_id="synthetic/other",
                        fingerprint="sha256:" + "cd" * 32)
    result = run_cli("compare", base, other, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "report.md").exists()
