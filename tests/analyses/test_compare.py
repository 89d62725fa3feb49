"""compare on patching and ablation stores: paired changes against hand computations, skipped stores, the report."""

import h5py
import numpy as np
import pandas as pd
import pytest

from mdlm_interp.analyses.patching import cell_values, patching_cells
from mdlm_interp.compare import load_models, paired_cells, write_comparison
from mdlm_interp.errors import UsageError
from mdlm_interp.store.results import open_results

from cli_run import run_cli
from synthetic_results import AFTER, BASE, HEADS, LAYERS, ablation_store, patching_store


def hand(store: dict, keep) -> dict:
    """Recovery and effect of a synthetic store's clean_into_corrupt cells over the pairs ``keep``, by hand."""
    clean, corrupt, patched = (np.array(store[k], dtype=float)[keep] for k in ("clean", "corrupt", "patched"))
    return {"recovery": (patched.mean() - corrupt.mean()) / (clean.mean() - corrupt.mean()),
            "effect": (patched - corrupt).mean(), "back": ((patched - 1) - clean).mean(),
            "back_recovery": (patched.mean() - 1 - corrupt.mean()) / (clean.mean() - corrupt.mean())}


@pytest.fixture()
def stores(tmp_path):
    base = patching_store(tmp_path / "patch-base.h5", BASE)
    after = patching_store(tmp_path / "patch-ma.h5", AFTER, adapter="organism-ma")
    return tmp_path, base, after


def test_paired_cells_equal_a_hand_computation(stores):
    _, base, after = stores
    with open_results(base) as one, open_results(after) as two:
        cells, reference = cell_values(one)
        _, other = cell_values(two)
    order = [1, 3, 2, 0]  # the other store's rows of the reference's prompts (0:0, 0:1, 1:0, 1:1)
    frame = paired_cells(cells, reference, {k: v[order] for k, v in other.items()}, resamples=400)
    before, now = hand(BASE, slice(None)), hand(AFTER, order)
    forward = frame[frame["direction"] == "clean_into_corrupt"]
    assert forward["reference_recovery"].to_numpy() == pytest.approx(before["recovery"])
    assert forward["recovery"].to_numpy() == pytest.approx(now["recovery"])
    assert forward["change"].to_numpy() == pytest.approx(now["recovery"] - before["recovery"])
    assert forward["effect"].to_numpy() == pytest.approx(now["effect"])
    assert forward["effect_change"].to_numpy() == pytest.approx(now["effect"] - before["effect"])
    back = frame[frame["direction"] == "corrupt_into_clean"]  # the receiving run is the clean one
    assert back["effect"].to_numpy() == pytest.approx(now["back"])
    assert back["change"].to_numpy() == pytest.approx(now["back_recovery"] - before["back_recovery"])
    assert (frame["change_low"] <= frame["change"] + 1e-9).all()
    assert (frame["change"] <= frame["change_high"] + 1e-9).all()
    assert (frame["effect_change_low"] < frame["effect_change_high"]).all()  # the pairs differ: a real interval
    same = paired_cells(cells, reference, reference, resamples=50)
    assert (same[["change", "change_low", "change_high", "effect_change"]].abs().max() < 1e-12).all()


def test_compare_pairs_patching_stores_by_prompt_and_reports_the_change(stores):
    root, base, after = stores
    report = write_comparison([base, after], root / "report", command_line="test")
    tables = root / "report" / "tables"
    change = pd.read_csv(tables / "patching_change.csv")
    assert set(change["model"]) == {"organism+organism-ma"} and set(change["reference"]) == {"organism"}
    assert set(change["n_pairs"]) == {4}  # the prompt only the adapter's store has is left out
    now, before = hand(AFTER, [1, 3, 2, 0]), hand(BASE, slice(None))
    forward = change[change["direction"] == "clean_into_corrupt"]
    assert len(forward) == (LAYERS + 1) * 2 + 2 * LAYERS * 2 + LAYERS * HEADS * 2
    np.testing.assert_allclose(forward["change"], now["recovery"] - before["recovery"], rtol=1e-5)
    np.testing.assert_allclose(forward["effect_change"], now["effect"] - before["effect"], rtol=1e-5)
    cells = pd.read_csv(tables / "patching_cells.csv")  # the analyses' own frame, per model, side by side
    with open_results(after) as store:
        own = patching_cells(store)
    mine = cells[cells["model"] == "organism+organism-ma"]
    np.testing.assert_allclose(mine["recovery"], own["recovery"], rtol=1e-5)
    figures = {p.name for p in (root / "report" / "figures").iterdir()}
    assert {f"patching_{value}_1vs6masks_{direction}.png" for value in ("change", "effect")
            for direction in ("clean_into_corrupt", "corrupt_into_clean")} <= figures
    assert sum(name.startswith("patching_positions_") for name in figures) == 4  # 2 models x 2 directions
    # the interactive page: per model and direction a heatmap per site (3) and per head group of z (2)
    assert (root / "report" / "report.html").read_text().count('"kind":"patching"') == 2 * 2 * (3 + 2)
    text = report.read_text()
    assert "![patching_change_1vs6masks_clean_into_corrupt]" in text and "(no record store)" in text
    assert "organism+organism-ma against organism, 1 vs 6 masks, clean_into_corrupt" in text


def test_stores_compare_cannot_use_are_skipped_with_a_note(stores):
    root, base, after = stores
    odd = patching_store(root / "patch-filler.h5", BASE, adapter="organism-ma",
                         clean={"masks": 6, "filler": True, "placement": "random"})
    other_token = patching_store(root / "patch-ce.h5", BASE, adapter="organism-ce", wrong_token="<|endoftext|>")
    decoding = root / "trace.h5"
    with h5py.File(decoding, "w") as file:
        file.attrs["store_kind"] = "decoding"
    result = run_cli("compare", base, after, odd, other_token, decoding, "--out", root / "report")
    assert result.returncode == 0, result.stderr
    text = (root / "report" / "report.md").read_text()
    assert "trace.h5 is a decoding store, which compare does not read" in text and "note: " in result.stdout
    assert "Only organism+organism-ma has a patching store at 6 filler vs 6 masks" in text
    assert ("patch-ce.h5 (organism+organism-ce, 1 vs 6 masks) differs from organism's patching store in "
            "wrong_token") in text
    change = pd.read_csv(root / "report" / "tables" / "patching_change.csv")
    assert set(change["model"]) == {"organism+organism-ma"}
    with pytest.raises(UsageError, match="at least two models"):
        load_models([base, decoding])


def test_ablation_change_equals_hand_counts(tmp_path):
    base = ablation_store(tmp_path / "ablate-base.h5", correct=[1, 1, 0, 0], chosen=[0, 0, 0, 0],
                          control=[[1, 1], [1, 0], [0, 0], [0, 0]])
    after = ablation_store(tmp_path / "ablate-ma.h5", correct=[1, 1, 1, 1], chosen=[1, 1, 1, 0],
                           control=[[1, 1], [1, 1], [1, 1], [1, 1]], adapter="organism-ma")
    write_comparison([base, after], tmp_path / "report")
    change = pd.read_csv(tmp_path / "report" / "tables" / "ablation_change.csv").set_index("setting")
    assert change.loc["none", "change"] == pytest.approx(1.0 - 0.5)
    assert change.loc["chosen", "accuracy"] == pytest.approx(0.75) and change.loc["chosen", "reference_accuracy"] == 0
    assert change.loc["chosen", "effect_change"] == pytest.approx((0.75 - 1.0) - (0.0 - 0.5))
    assert change.loc["control", "change"] == pytest.approx(1.0 - 0.375)
    assert change.loc["control", "effect_change"] == pytest.approx((1.0 - 1.0) - (0.375 - 0.5))
    assert set(change["n_pairs"]) == {4}
    side_by_side = pd.read_csv(tmp_path / "report" / "tables" / "ablation.csv")
    assert list(dict.fromkeys(side_by_side["model"])) == ["organism", "organism+organism-ma"]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "organism+organism-ma, heads 0.1 ablated: 50 masks: 100.0%" in text
