"""compare on patching and ablation stores: paired changes against hand computations, skipped stores, the report."""

import h5py
import numpy as np
import pandas as pd
import pytest

from mdlm_interp.analyses.patching import cell_values, patching_cells
from mdlm_interp.compare import load_models, paired_cells, write_comparison
from mdlm_interp.errors import UsageError
from mdlm_interp.store import Provenance
from mdlm_interp.store.results import ABLATION, PATCHING, open_results, write_results

from cli_run import run_cli

LAYERS, HEADS = 1, 2
GROUPS, HEAD_GROUPS = ["all", "answer"], ["answer", "all"]
TASKS = ["adjective+largest", "verb+smallest"]


def settings(adapter: str | None, **changes) -> dict:
    out = {"n": 2, "seed": 0, "n_relevant": 2, "n_distractor": 3, "placements": ["random"], "wrong_token": None,
           "clean": {"masks": 1, "filler": False, "placement": "random"},
           "corrupt": {"masks": 6, "filler": False, "placement": "random"}, **changes}
    if adapter:
        out["adapter"] = {"path": f"/adapters/{adapter}", "fingerprint": "sha256:" + "cd" * 32}
    return out


def provenance(adapter: str | None = None) -> Provenance:
    identity = settings(adapter).get("adapter")
    return Provenance(command_line="synthetic", model_id="/models/organism", family="llada", dtype="float32",
                      weights_fingerprint="sha256:" + "ab" * 32, task_config={}, seed=0,
                      adapter=adapter or "", adapter_fingerprint=identity["fingerprint"] if identity else "")


def patching_store(path, pairs: dict, adapter=None, **changes):
    """Write a patching store of ``pairs`` (examples: (task index, prompt) per pair; clean, corrupt: the runs'
    logit differences; patched: every clean_into_corrupt cell of pair i holds patched[i], every
    corrupt_into_clean cell patched[i] - 1); ``changes`` replace settings."""
    examples, clean, corrupt, patched = (pairs[k] for k in ("examples", "clean", "corrupt", "patched"))
    rows = len(examples)
    dims = {"directions": 2, "layers": LAYERS, "heads": HEADS, "groups": len(GROUPS), "head_groups": 2}
    columns = {}
    for field in PATCHING.data:
        shape = (rows,) + field.row_shape(dims)
        columns[field.path] = np.zeros(shape, dtype=field.numpy_dtype) if field.dtype != "str" else ["t"] * rows
    columns["pairs/example"] = np.array([t * 2 + p for t, p in examples])
    columns["pairs/task"] = [TASKS[t] for t, _ in examples]
    columns["pairs/clean_logit_diff"] = np.asarray(clean, dtype=np.float32)
    columns["pairs/corrupt_logit_diff"] = np.asarray(corrupt, dtype=np.float32)
    for site in ("resid_pre", "attn_out", "mlp_out", "z"):
        grid = columns[f"patching/{site}_logit_diff"]
        value = np.asarray(patched, dtype=np.float32).reshape(-1, *[1] * (grid.ndim - 1))
        grid[:, 0] = value[:, 0]
        grid[:, 1] = value[:, 0] - 1
        columns[f"attribution/{site}_logit_diff"] = grid.copy()
    attrs = {"directions": ["clean_into_corrupt", "corrupt_into_clean"], "position_groups": GROUPS,
             "head_groups": HEAD_GROUPS}
    return write_results(path, PATCHING, columns, dims=dims, provenance=provenance(adapter),
                         settings=settings(adapter, **changes), attrs=attrs)


def ablation_store(path, correct, chosen, control, adapter=None):
    """Write an ablation store at 50 masks with one mode ("zero"): ``correct`` unablated, ``chosen`` with head 0.1
    ablated, ``control`` [rows, draws] with random heads; examples are prompts 0, 1 of both tasks."""
    rows = len(correct)
    columns = {}
    for field in ABLATION.data:
        shape = (rows,) + field.row_shape({"modes": 1, "draws": 2})
        columns[field.path] = np.zeros(shape, dtype=field.numpy_dtype) if field.dtype != "str" else ["t"] * rows
    columns["examples/example"] = np.arange(rows)
    columns["examples/task"] = [TASKS[i // 2] for i in range(rows)]
    columns["examples/masks"] = np.full(rows, 50)
    columns["examples/correct"] = np.asarray(correct, dtype=bool)
    columns["ablated/correct"] = np.asarray(chosen, dtype=bool)[:, None]
    columns["control/correct"] = np.asarray(control, dtype=bool)[:, :, None]
    attrs = {"heads": ["0.1"], "head_selection": "0.1", "ranking": None, "modes": ["zero"],
             "control_heads": [["0.0"], ["1.1"]]}
    return write_results(path, ABLATION, columns, dims={"modes": 1, "draws": 2}, provenance=provenance(adapter),
                         settings=settings(adapter), attrs=attrs)


# the reference's pairs in task order; the other model's in another order, with one prompt the reference lacks
BASE = {"examples": [(0, 0), (0, 1), (1, 0), (1, 1)], "clean": [4, 6, 5, 5], "corrupt": [0, 2, -1, -1],
        "patched": [1, 3, 2, 0]}
AFTER = {"examples": [(1, 1), (0, 0), (1, 0), (0, 1), (1, 2)], "clean": [6, 5, 7, 6, 9], "corrupt": [5, 4, 4, 3, 9],
         "patched": [6, 4, 7, 4, 0]}


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
