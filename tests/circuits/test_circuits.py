"""Circuits: interventions against hand computations, head ranking, ablation, statistics, result stores, commands."""

import copy
import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from mdlm_interp.analyses import load
from mdlm_interp.analyses.ablation import ablation_effects
from mdlm_interp.analyses.data import Skip
from mdlm_interp.analyses.heads import head_ranking
from mdlm_interp.analyses.patching import attribution_agreement, patching_cells
from mdlm_interp.analyses.stats import spearman, wilson_interval
from mdlm_interp.batching import collate
from mdlm_interp.circuits.ablation import (
    ablation_hooks,
    draw_control_heads,
    parse_heads,
    predict,
    rank_heads,
    run_ablation,
)
from mdlm_interp.circuits.patching import run_patching
from mdlm_interp.circuits.schemas import ABLATION, EXPERT_PATCHING, PATCHING
from mdlm_interp.errors import UsageError
from mdlm_interp.hooks.interventions import patch_positions, remove_attention_to_keys, replace_head_output
from mdlm_interp.record import Condition, RecordConfig, plan_prompts, record, subject_from
from mdlm_interp.store import Provenance, open_store
from mdlm_interp.store.results import open_results, write_results
from mdlm_interp.tasks import PromptConfig, sample_prompt, single_token_words, tokenize_prompt

from cli_run import run_cli
from synthetic_stores import HEADS, LAYERS, write_store

DOCS = Path(__file__).resolve().parents[2] / "docs" / "store.md"
SMALL = ("--task", "adjective+largest", "--n-relevant", "2", "--n-distractor", "3")


def batch_for(lm, masks: int, n: int = 3, placement: str = "random"):
    words = single_token_words(lm.tokenizer)
    prompts = [tokenize_prompt(sample_prompt(PromptConfig("adjective+largest", 2, 3, placement), seed=i, words=words),
                               lm.tokenizer, mask_token_id=lm.mask_token_id, masks=masks) for i in range(n)]
    return collate(prompts, lm.spec.prediction_offset)


def capture(module, batch, names, hooks=()):
    """Run ``batch`` with ``hooks`` and return {name: activation} for ``names`` (captured after the hooks)."""
    kept = {}
    keep = [(name, lambda act, hook: kept.__setitem__(hook.name, act.detach().clone())) for name in names]
    with torch.no_grad():
        module.run_with_hooks(batch.input_ids, attention_mask=batch.attention_mask, fwd_hooks=list(hooks) + keep)
    return kept


def hand_spearman(x, y) -> float:
    """Spearman's rho as Pearson's r of pandas' average ranks."""
    return float(np.corrcoef(pd.Series(x).rank(), pd.Series(y).rank())[0, 1])


# --- interventions ---------------------------------------------------------------------------------------------


def test_removing_attention_to_the_masks_renormalises_the_pattern_as_by_hand(tiny_model):
    lm = tiny_model("llada")
    batch = batch_for(lm, masks=4)
    names = ["blocks.0.attn.hook_pattern"]
    before = capture(lm.model, batch, names)["blocks.0.attn.hook_pattern"]
    keys = batch.layout.masks
    after = capture(lm.model, batch, names, [("blocks.0.attn.hook_attn_scores", remove_attention_to_keys([1], keys))])
    after = after["blocks.0.attn.hook_pattern"]
    # by hand: head 1 keeps its weights on the other keys, divided by what they sum to; other heads unchanged
    kept = before[:, 1] * ~keys[:, None, :]
    expected = before.clone()
    expected[:, 1] = kept / kept.sum(-1, keepdim=True)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-6)
    assert float(after[:, 1][keys[:, None, :].expand_as(after[:, 1])].abs().max()) == 0.0
    assert float(before[:, 1][keys[:, None, :].expand_as(before[:, 1])].sum()) > 0  # there was attention to remove


def test_removing_attention_to_the_masks_in_every_head_gives_the_one_mask_prediction(tiny_model):
    lm = tiny_model("llada")
    heads = [(l, h) for l in range(lm.config.n_layers) for h in range(lm.config.n_heads)]
    many, one = batch_for(lm, masks=6), batch_for(lm, masks=1)
    plain = predict(lm.model, many)
    ablated = predict(lm.model, many, ablation_hooks("attention", heads, many.layout.masks))
    reference = predict(lm.model, one)
    assert not torch.allclose(plain["p_answer"], reference["p_answer"], atol=1e-6)
    torch.testing.assert_close(ablated["p_answer"], reference["p_answer"], rtol=1e-4, atol=1e-6)


def test_zero_ablation_equals_zeroing_the_heads_output_weights(tiny_model):
    lm = tiny_model("llada")
    batch = batch_for(lm, masks=3)
    ablated = predict(lm.model, batch, ablation_hooks("zero", [(1, 2)], batch.layout.masks))
    edited = copy.deepcopy(lm.model)
    d_head = lm.config.d_head
    with torch.no_grad():
        edited.blocks[1].attn.o_proj.weight[:, 2 * d_head:3 * d_head] = 0
    torch.testing.assert_close(ablated["p_answer"], predict(edited, batch)["p_answer"], rtol=1e-5, atol=1e-7)


def test_mean_ablation_puts_the_given_mean_at_every_position(tiny_model):
    lm = tiny_model("llada")
    batch = batch_for(lm, masks=3)
    means = torch.randn(lm.config.n_layers, lm.config.n_heads, lm.config.d_head)
    z = capture(lm.model, batch, ["blocks.0.attn.hook_z"], ablation_hooks("mean", [(0, 0), (0, 3)], None, means))
    z = z["blocks.0.attn.hook_z"]
    assert torch.equal(z[:, :, 0], means[0, 0].expand_as(z[:, :, 0]))
    assert torch.equal(z[:, :, 3], means[0, 3].expand_as(z[:, :, 3]))
    plain = capture(lm.model, batch, ["blocks.0.attn.hook_z"])["blocks.0.attn.hook_z"]
    assert torch.equal(z[:, :, 1:3], plain[:, :, 1:3])


def test_patch_positions_patches_each_variant_where_asked():
    receiver = torch.zeros(3 * 2, 4, 5)  # 3 variants of a batch of 2, 4 positions
    source = torch.arange(2 * 4 * 5, dtype=torch.float32).reshape(2, 4, 5) + 1
    where = torch.zeros(3, 2, 4, dtype=torch.bool)
    where[1, 0, 2] = True
    where[2, :, :] = True
    out = patch_positions(source, where)(receiver).unflatten(0, (3, 2))
    assert out[0].abs().sum() == 0
    assert torch.equal(out[1, 0, 2], source[0, 2]) and out[1].abs().sum() == source[0, 2].sum()
    assert torch.equal(out[2], source)
    per_head = replace_head_output([1], torch.ones(1, 5))(torch.zeros(2, 4, 3, 5))
    assert per_head[:, :, 1].eq(1).all() and per_head[:, :, [0, 2]].eq(0).all()


# --- ablation experiments --------------------------------------------------------------------------------------


def test_parse_heads_and_random_control_heads():
    assert parse_heads("top:3", 4, 4) == (3, [])
    assert parse_heads("2.1, 0.3,2.1", 4, 4) == (None, [(0, 3), (2, 1)])
    for bad in ("top:0", "top:17", "top:x", "4.0", "1", "a.b", ""):
        with pytest.raises(UsageError):
            parse_heads(bad, 4, 4)
    chosen = [(0, 1), (1, 0)]
    draws = draw_control_heads(chosen, 4, 4, draws=20, seed=3)
    assert draws == draw_control_heads(chosen, 4, 4, draws=20, seed=3)
    assert all(len(d) == 2 and len(set(d)) == 2 and not set(d) & set(chosen) for d in draws)
    assert len({tuple(d) for d in draws}) > 5


def test_ablation_store_chosen_heads_control_and_what_a_no_op_must_give(tiny_model, tmp_path):
    lm = tiny_model("llada")
    config = RecordConfig(tasks=("adjective+largest",), masks=(1, 4), n=3, n_relevant=2, n_distractor=3, record=())
    out = run_ablation(lm, config, "top:2", out=tmp_path / "ablate.h5", control_draws=2, progress=False)
    with open_results(out, "ablation") as store:
        examples = store.examples
        ablated_p = store.array("ablated/p_answer")
        control_p = store.array("control/p_answer")
        attrs = store.attrs
        frame = ablation_effects(store, resamples=200)
    assert list(examples["masks"]) == [1, 1, 1, 4, 4, 4]
    assert ablated_p.shape == (6, 3) and control_p.shape == (6, 2, 3)
    # at masks 1 there is nothing after the answer slot: removing attention to it changes nothing
    np.testing.assert_allclose(ablated_p[:3, 0], examples["p_answer"][:3], rtol=1e-5)
    assert not np.allclose(ablated_p[3:, 0], examples["p_answer"][3:], rtol=1e-5)
    # top:2 are the two heads with the most attention from the answer slot to the masks
    ranking = np.array(attrs["ranking"])
    prompts = plan_prompts(subject_from(lm), config, [(Condition(4, False, "random"), 0, i) for i in range(3)])
    batches = [collate(prompts, 0)]  # the store's masks-4 rows
    torch.testing.assert_close(torch.tensor(ranking, dtype=torch.float32), rank_heads(lm.model, batches))
    top = sorted(np.argsort(-ranking.ravel(), kind="stable")[:2])
    assert attrs["heads"] == [f"{i // lm.config.n_heads}.{i % lm.config.n_heads}" for i in top]
    assert all(not set(draw) & set(attrs["heads"]) for draw in attrs["control_heads"])
    assert set(frame["setting"]) == {"none", "chosen", "control"} and len(frame) == 2 * (1 + 2 * 3)
    none = frame[(frame["masks"] == 4) & (frame["setting"] == "none")].iloc[0]
    assert none["accuracy"] == examples["correct"][3:].mean()


# --- head ranking ----------------------------------------------------------------------------------------------


def test_head_ranking_orders_by_mass_and_pairs_losses_by_prompt(tmp_path):
    rng = np.random.default_rng(0)
    n = 12
    p_clean = rng.uniform(0.6, 1.0, n)
    p_corrupt = rng.uniform(0.0, 0.5, n)
    loss = p_clean - p_corrupt
    mass = np.zeros((n, LAYERS, HEADS))
    mass[:, 1, 0] = 0.5 + 0.1 * loss  # most mass, perfectly ordered with the loss
    mass[:, 0, 1] = 0.3 - 0.1 * loss  # second, perfectly reversed
    mass[:, 0, 0] = rng.uniform(0, 0.1, n)
    mass[:, 1, 1] = 0.2
    corrupt = [{"task": "adjective+largest", "prompt": i, "masks": 9, "p_answer": p_corrupt[i], "from_answer": mass[i]}
               for i in range(n)]
    filler = [{**row, "filler": True, "from_answer": np.full((LAYERS, HEADS), 0.01)} for row in corrupt]
    clean = [{"task": "adjective+largest", "prompt": i, "masks": 1, "p_answer": p_clean[i]} for i in reversed(range(n))]
    write_store(tmp_path / "a.h5", corrupt + filler)  # masks 1 in another store, in another order: paired by prompt
    write_store(tmp_path / "b.h5", clean)
    ranking = head_ranking(load([tmp_path / "a.h5", tmp_path / "b.h5"]), resamples=200)["head_ranking"]
    assert list(ranking["head_label"][:3]) == ["1.0", "0.1", "1.1"] and list(ranking["rank"]) == list(range(1, 7))
    top = ranking.set_index("head_label")
    assert top.loc["1.0", "rho"] == pytest.approx(1.0) and top.loc["0.1", "rho"] == pytest.approx(-1.0)
    assert np.isnan(top.loc["1.1", "rho"])  # constant mass: no correlation
    assert top.loc["0.0", "rho"] == pytest.approx(hand_spearman(mass[:, 0, 0], loss))
    assert top.loc["1.0", "p_permutation"] < 0.02 and top.loc["0.0", "p_permutation"] > 0.02
    assert top.loc["1.0", "mask_mass"] == pytest.approx(mass[:, 1, 0].mean())
    assert top.loc["1.0", "mask_mass_low"] <= top.loc["1.0", "mask_mass"] <= top.loc["1.0", "mask_mass_high"]
    assert np.allclose(ranking["filler_mass"], 0.01) and (ranking["n"] == n).all() and (ranking["masks"] == 9).all()
    with pytest.raises(Skip, match="masks 4"):
        head_ranking(load([tmp_path / "a.h5", tmp_path / "b.h5"]), masks=4)


# --- statistics ------------------------------------------------------------------------------------------------


def test_spearman_against_a_hand_computation():
    x = np.array([[3, 1], [1, 1], [2, 5], [2, 0]], dtype=float)  # ties in both columns
    y = np.array([0.1, 0.4, 0.3, 0.2])
    np.testing.assert_allclose(spearman(x, y), [hand_spearman(x[:, c], y) for c in range(2)])
    assert np.isnan(spearman(np.ones((4, 1)), y)).all()


# --- result stores ---------------------------------------------------------------------------------------------


def test_docs_carry_the_result_store_tables():
    docs = DOCS.read_text()
    for kind in (PATCHING, ABLATION, EXPERT_PATCHING):
        assert kind.markdown() in docs, f"paste {kind.name}'s markdown() into docs/store.md"


def provenance():
    return Provenance(command_line="test", model_id="m", family="llada", dtype="float32", weights_fingerprint="f",
                      task_config={}, seed=0)


def ablation_columns(rows: int, modes: int, draws: int) -> dict:
    columns = {}
    for field in ABLATION.data:
        shape = (rows,) + field.row_shape({"modes": modes, "draws": draws})
        columns[field.path] = ["t"] * rows if field.dtype == "str" else np.ones(shape, dtype=field.numpy_dtype)
    return columns


def test_result_store_round_trip_refusals_and_kind_checks(tmp_path):
    path = tmp_path / "a.h5"
    attrs = {"heads": ["0.1"], "head_selection": "0.1", "ranking": None, "modes": ["zero"], "control_heads": []}
    write_results(path, ABLATION, ablation_columns(3, 1, 0), dims={"modes": 1, "draws": 0}, provenance=provenance(),
                  settings={"x": 1}, attrs=attrs)
    with open_results(path) as store:
        assert store.kind is ABLATION and store.n_rows == 3 and store.attrs["ranking"] is None
        assert store.array("control/correct").shape == (3, 0, 1) and list(store.examples["task"]) == ["t"] * 3
    with pytest.raises(UsageError, match="exists"):
        write_results(path, ABLATION, ablation_columns(3, 1, 0), dims={"modes": 1, "draws": 0},
                      provenance=provenance(), settings={}, attrs=attrs)
    bad = ablation_columns(3, 1, 0)
    bad["ablated/p_answer"] = np.ones((3, 2))
    with pytest.raises(ValueError, match="ablated/p_answer"):
        write_results(tmp_path / "b.h5", ABLATION, bad, dims={"modes": 1, "draws": 0}, provenance=provenance(),
                      settings={}, attrs=attrs)
    assert not (tmp_path / "b.h5").exists() and not list(tmp_path.glob(".*tmp"))
    with pytest.raises(UsageError, match="ablation store; expected a patching"):
        open_results(path, "patching")
    with pytest.raises(UsageError, match="ablation store, not a record store"):
        open_store(path)
    with h5py.File(tmp_path / "other.h5", "w") as file:
        file.attrs["x"] = 1
    with pytest.raises(UsageError, match="not an mdlm-interp result store"):
        open_results(tmp_path / "other.h5")


# --- commands --------------------------------------------------------------------------------------------------


def test_patch_command_writes_a_store_that_frames_and_figures_read(tiny_checkpoint, tmp_path):
    model = tiny_checkpoint("llada")
    out = tmp_path / "patch.h5"
    result = run_cli("patch", "--model", model, *SMALL, "--n", "2", "--corrupt-masks", "4", "--last-k", "2",
                     "--out", out, "--no-progress", "--figures", tmp_path / "figures")
    assert result.returncode == 0, result.stderr
    assert "clean_into_corrupt" in result.stdout and "attribution patching" in result.stdout
    with open_results(out, "patching") as store:
        assert store.attrs["settings"]["clean"] == {"masks": 1, "filler": False, "placement": "random"}
        groups = ["all", "relevant", "distractor", "query", "answer", "last:1", "last:2"]
        assert store.attrs["position_groups"] == groups
        frame = patching_cells(store, resamples=50, min_gap=0)  # a tiny random model: a small gap
        final = frame[(frame["site"] == "resid_pre") & (frame["layer"] == store.dims["layers"])
                      & (frame["position"] == "answer")].set_index("direction")["recovery"]
        agreement = attribution_agreement(store)
    for (direction, site), part in frame.groupby(["direction", "site"]):
        keep = np.isfinite(part["recovery"]) & np.isfinite(part["attribution_recovery"])
        exact, estimate = part["recovery"][keep].to_numpy(), part["attribution_recovery"][keep].to_numpy()
        hand = ((exact - exact.mean()) * (estimate - estimate.mean())).sum() / np.sqrt(
            ((exact - exact.mean()) ** 2).sum() * ((estimate - estimate.mean()) ** 2).sum())
        assert agreement[direction][site] == pytest.approx(hand, abs=1e-6), (direction, site)
    assert final["clean_into_corrupt"] == pytest.approx(1, abs=1e-3)
    assert final["corrupt_into_clean"] == pytest.approx(0, abs=1e-3)
    assert len(frame) == 2 * (3 * 7 * 2 + 7 + 2 * 4 * 2)  # directions x (sites x groups x layers + final + heads)
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        f"patching_{kind}_{d}.png" for kind in ("heads", "positions")
        for d in ("clean_into_corrupt", "corrupt_into_clean")]

    for args, message in [
        (("--clean-masks", "4", "--corrupt-masks", "4"), "same condition"),
        (("--clean-filler", "--clean-masks", "1"), "filler run needs"),
        (("--corrupt-masks", "0"), "at least 1"),
        (("--wrong-token", "two words here"), "exactly one"),
    ]:
        failed = run_cli("patch", "--model", model, *SMALL, "--n", "1", "--out", tmp_path / "x.h5", *args)
        assert failed.returncode == 2 and message in failed.stderr and len(failed.stderr.strip().splitlines()) == 1
    causal = run_cli("patch", "--model", tiny_checkpoint("llama"), *SMALL, "--n", "1", "--out", tmp_path / "y.h5")
    assert causal.returncode == 2 and "causal" in causal.stderr
    assert run_cli("patch", "--model", model, "--out", out).returncode == 2  # exists
    assert not (tmp_path / "x.h5").exists()


def test_heads_command_reads_a_record_store(tiny_model, tmp_path):
    lm = tiny_model("llada")
    store_path = record(lm, out=tmp_path / "rec.h5", tasks=("adjective+largest", "verb+smallest"), masks=(1, 4),
                        filler=" .", n=4, n_relevant=2, n_distractor=3, record=("attention",), progress=False)
    result = run_cli("heads", store_path, "--top", "3", "--json", "--figure", tmp_path / "heads.png")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == 3 and [r["rank"] for r in rows] == [1, 2, 3]
    with open_store(store_path) as store:
        examples = store.examples
        mass = store.array("attention/mask_mass_from_answer")
    corrupt = examples[(examples["masks"] == 4) & ~examples["filler"]]
    clean = examples[examples["masks"] == 1].set_index("example").loc[corrupt["example"]]
    loss = clean["p_answer"].to_numpy() - corrupt["p_answer"].to_numpy()
    layer, head = rows[0]["layer"], rows[0]["head"]
    assert rows[0]["head_label"] == f"{layer}.{head}"
    by_head = mass[corrupt.index][:, :, :].mean(0)
    assert by_head[layer, head] == pytest.approx(by_head.max())
    hand = hand_spearman(mass[corrupt.index, layer, head], loss)
    assert rows[0]["rho"] == pytest.approx(hand)
    filler = examples[(examples["masks"] == 4) & examples["filler"]].index
    assert rows[0]["filler_mass"] == pytest.approx(mass[filler, layer, head].mean())
    from PIL import Image

    drawn_by = Image.open(tmp_path / "heads.png").info["Description"]
    assert drawn_by.startswith("mdlm-interp heads ") and "--figure" in drawn_by  # the heads command, not the record one
    table = run_cli("heads", store_path)
    n_heads = lm.config.n_layers * lm.config.n_heads
    assert table.returncode == 0 and "p (Holm)" in table.stdout and len(table.stdout.splitlines()) == 2 + n_heads
    patching_store = run_cli("heads", tmp_path / "nothing.h5")
    assert patching_store.returncode == 2 and "no store" in patching_store.stderr
    one = record(lm, out=tmp_path / "one.h5", tasks=("adjective+largest",), masks=(1,), n=2, n_relevant=2,
                 n_distractor=3, record=("attention",), progress=False)
    failed = run_cli("heads", one)
    assert failed.returncode == 2 and "masks 1 and at a count above 1" in failed.stderr


def test_ablate_command_and_its_bad_input(tiny_checkpoint, tmp_path):
    model = tiny_checkpoint("llada")
    out = tmp_path / "ablate.h5"
    result = run_cli("ablate", "--model", model, *SMALL, "--n", "2", "--heads", "0.1,1.3", "--masks", "1,4",
                     "--modes", "attention,zero", "--control-draws", "2", "--out", out, "--no-progress",
                     "--figure", tmp_path / "ablate.png")
    assert result.returncode == 0, result.stderr
    assert "0.1, 1.3" in result.stdout and "control" in result.stdout
    assert (tmp_path / "ablate.png").stat().st_size > 0
    with open_results(out, "ablation") as store:
        assert store.attrs["modes"] == ["attention", "zero"] and store.attrs["ranking"] is None
        assert store.dims == {"draws": 2, "modes": 2}
    for args, message in [
        (("--heads", "9.0"), "not a head of this model"),
        (("--heads", "top:x"), "integer K"),
        (("--heads", "top:1", "--masks", "1"), "count above 1"),
        (("--heads", "0.1", "--modes", "attention,resample"), "resample"),
        (("--heads", "0.1", "--control-draws", "0"), "control-draws"),
    ]:
        failed = run_cli("ablate", "--model", model, *SMALL, "--n", "1", "--out", tmp_path / "x.h5", *args)
        assert failed.returncode == 2 and message in failed.stderr, failed.stderr
    assert not (tmp_path / "x.h5").exists()


def test_ablation_frame_against_hand_counts(tmp_path):
    n = 10
    columns = ablation_columns(n, 1, 2)
    columns["examples/masks"] = np.full(n, 50)
    columns["examples/correct"] = np.arange(n) < 2  # 2 of 10 without ablation
    columns["ablated/correct"] = (np.arange(n) < 8)[:, None]  # 8 of 10 with the chosen heads ablated
    columns["control/correct"] = np.stack([np.arange(n) < 1, np.arange(n) < 3], 1)[:, :, None]  # draws: 1 and 3
    attrs = {"heads": ["0.1"], "head_selection": "top:1", "ranking": None, "modes": ["attention"],
             "control_heads": [["1.0"], ["2.2"]]}
    path = write_results(tmp_path / "a.h5", ABLATION, columns, dims={"modes": 1, "draws": 2}, provenance=provenance(),
                         settings={}, attrs=attrs)
    with open_results(path) as store:
        frame = ablation_effects(store, resamples=300).set_index("setting")
    assert frame.loc["none", "accuracy"] == 0.2 and frame.loc["chosen", "accuracy"] == 0.8
    assert (frame.loc["chosen", "ci_low"], frame.loc["chosen", "ci_high"]) == pytest.approx(
        tuple(float(v) for v in wilson_interval(8, 10)))
    assert frame.loc["chosen", "delta_accuracy"] == pytest.approx(0.6)
    assert frame.loc["chosen", "delta_low"] > 0.2  # the six examples that flip always move together here
    assert frame.loc["control", "accuracy"] == pytest.approx(0.2)
    assert (frame.loc["control", "draw_min"], frame.loc["control", "draw_max"]) == (0.1, 0.3)
    assert frame.loc["control", "delta_accuracy"] == pytest.approx(0.0)


def test_analyze_reads_patching_ablation_and_record_stores_side_by_side(tiny_model, tmp_path):
    lm = tiny_model("llada")
    config = RecordConfig(tasks=("adjective+largest",), masks=(1, 4), n=2, n_relevant=2, n_distractor=3, record=())
    patch = run_patching(lm, config, Condition(1, False, "random"), Condition(4, False, "random"),
                         out=tmp_path / "patch.h5", last_k=1, progress=False)
    ablate = run_ablation(lm, config, "0.1", out=tmp_path / "ablate.h5", modes=("zero",), control_draws=1,
                          progress=False)
    rec = record(lm, out=tmp_path / "rec.h5", config=RecordConfig(
        tasks=("adjective+largest",), masks=(1, 4), n=3, n_relevant=2, n_distractor=3, record=("attention",)),
        progress=False)
    result = run_cli("analyze", rec, patch, ablate, "--out", tmp_path / "report",
                     "--only", "head_ranking,patching,ablation")
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "report" / "report.md").read_text()
    for title in ("Heads ranked by attention to the masks", "Activation patching between mask configurations",
                  "Ablating heads against random heads"):
        assert f"## {title}" in report
    assert "Skipped" not in report
    tables = tmp_path / "report" / "tables"
    cells = pd.read_csv(tables / "patching_cells.csv")
    with open_results(patch) as store:
        expected = patching_cells(store)
    np.testing.assert_allclose(cells["recovery"], expected["recovery"], rtol=1e-5)
    assert set(cells["model"]) == {Path(lm.source).name} and set(cells["comparison"]) == {"1 vs 4 masks"}
    ablation = pd.read_csv(tables / "ablation.csv")
    assert list(ablation["setting"].unique()) == ["none", "chosen", "control"]
    assert pd.read_csv(tables / "head_ranking.csv")["rank"].tolist() == list(range(1, 9))
    figures = sorted(p.name for p in (tmp_path / "report" / "figures").iterdir())
    assert any(name.startswith("patching_positions_") for name in figures) and any("ablation" in n for n in figures)
    alone = run_cli("analyze", patch, "--out", tmp_path / "alone")
    assert alone.returncode == 0, alone.stderr
    assert "no record store was given" in (tmp_path / "alone" / "report.md").read_text()
