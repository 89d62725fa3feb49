"""Routing at the masks: the recorder against the experts chosen in a plain forward pass, record on a MoE model,
and the routing analysis (divergence, overlap, figure) on its store."""

import numpy as np
import pytest
import torch

from cli_run import run_cli
from mdlm_interp.analyses import data
from mdlm_interp.analyses.routing import ANALYSIS, chosen_overlap, js_divergence
from mdlm_interp.models.hook_names import hook_name
from mdlm_interp.store import open_store


@pytest.fixture(scope="module")
def moe_store(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("routing") / "moe.h5"
    result = run_cli("record", "--model", tiny_checkpoint("llada2"), "--task", "adjective+largest", "--n", "3",
                     "--n-distractor", "4", "--masks", "1,6", "--filler", " .", "--record", "lens", "--block-length",
                     "0", "--no-progress", "--out", out)
    assert result.returncode == 0, result.stderr
    return out


def test_recorded_routing_is_the_forward_pass_routing(moe_store, tiny_model):
    lm = tiny_model("llada2")
    n_layers, k = lm.config.n_layers, lm.config.n_experts_per_tok
    with open_store(moe_store) as store:
        rows = store.examples
        assert "routing" in store.groups and store.dims["experts"] == lm.config.n_experts
        arrays = {name: store.array(f"routing/{name}") for name in ("answer_weights", "mask_share", "context_share")}
        ids = [store.tokens(row) for row in range(store.n_rows)]
    moe = [layer for layer in range(n_layers) if lm.config.is_moe_layer(layer)]
    assert moe and len(moe) < n_layers  # the first layers are dense: NaN there
    for row, tokens in enumerate(ids):
        _, cache = lm.model.run_with_cache(torch.tensor(tokens)[None].long())
        answer = int(rows["answer_position"][row])
        masks = slice(int(rows["masks_start"][row]), int(rows["masks_end"][row]))
        appended = max(answer + 1, masks.stop)
        for layer in range(n_layers):
            if layer not in moe:
                assert np.isnan(arrays["answer_weights"][row, layer]).all()
                continue
            indices = cache[hook_name("topk_indices", layer)][0]
            weights = cache[hook_name("topk_weights", layer)][0]
            expected = torch.zeros(lm.config.n_experts).index_add_(0, indices[answer], weights[answer].float())
            np.testing.assert_allclose(arrays["answer_weights"][row, layer], expected / expected.sum(), atol=1e-5)
            shares = np.zeros((len(tokens), lm.config.n_experts))
            np.add.at(shares, (np.arange(len(tokens))[:, None], indices.numpy()), 1 / k)
            np.testing.assert_allclose(arrays["context_share"][row, layer], shares[:answer].mean(0)
                                       if appended == len(tokens) else np.r_[shares[:answer], shares[appended:]].mean(0),
                                       atol=1e-5)
            if rows["masks"][row] > 1 and not rows["filler"][row]:
                np.testing.assert_allclose(arrays["mask_share"][row, layer], shares[masks].mean(0), atol=1e-5)
            elif rows["masks"][row] == 1:
                assert np.isnan(arrays["mask_share"][row, layer]).all()


def test_routing_analysis_tables_and_figure(moe_store):
    recordings = data.load([moe_store])
    tables = ANALYSIS.tables(recordings)
    shift, experts = tables["routing_shift"], tables["routing_experts"]
    assert set(shift["masks"]) == {6} and set(shift["base_masks"]) == {1} and (shift["n_pairs"] == 3).all()
    assert ((shift["js"] >= 0) & (shift["js"] <= 1)).all() and (shift["js_low"] <= shift["js_high"]).all()
    answers = experts[experts["masks"] == 6].groupby("layer")["answer_weight"].sum()
    np.testing.assert_allclose(answers, 1.0, atol=1e-5)  # a distribution over the experts per layer
    assert experts[experts["masks"] == 1]["mask_share"].isna().all()  # one mask: none after the answer slot
    assert experts[experts["masks"] == 6]["mask_share"].notna().all()
    figures = ANALYSIS.figures(tables)
    assert figures and figures[0].figure is not None
    assert "layer" in ANALYSIS.paragraph(tables)


def test_divergence_and_overlap_by_hand():
    p = np.array([0.5, 0.5, 0.0, 0.0])
    assert js_divergence(p, p) == 0
    assert js_divergence(p, np.array([0.0, 0.0, 0.5, 0.5])) == pytest.approx(1.0)
    assert chosen_overlap(p, np.array([0.3, 0.0, 0.7, 0.0])) == 0.5
    assert np.isnan(js_divergence(np.full(4, np.nan), p))


def test_routing_on_a_dense_model_is_refused(tmp_path, tiny_checkpoint):
    result = run_cli("record", "--model", tiny_checkpoint("llada"), "--record", "routing", "--n", "1", "--out",
                     tmp_path / "x.h5")
    assert result.returncode == 2 and "needs a mixture-of-experts model" in result.stderr
    assert not (tmp_path / "x.h5").exists()
