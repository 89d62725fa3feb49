"""Prompt pairs and patching: position maps, exact patching against plain runs, attribution on a linear model."""

import copy

import numpy as np
import pytest
import torch

from mdlm_interp.circuits.pairs import (
    answer_metrics,
    make_pair,
    pair_prompts,
    position_map,
    readout_logits,
    top_wrong_ids,
)
from mdlm_interp.circuits.patching import (
    DIRECTIONS,
    Receiver,
    Variant,
    all_site_hooks,
    capture,
    exact_patching,
    patch_batch,
    site_hook,
)
from mdlm_interp.analyses.stats import recovery
from mdlm_interp.errors import UsageError
from mdlm_interp.record import Condition, RecordConfig, subject_from

TASKS = ("adjective+largest", "verb+smallest")


def small_config(**fields) -> RecordConfig:
    return RecordConfig(**{"tasks": TASKS, "n": 2, "n_relevant": 2, "n_distractor": 3, "filler": " .",
                           "record": (), **fields})


def pairs_for(lm, clean: Condition, corrupt: Condition, **fields):
    prompts = pair_prompts(subject_from(lm), small_config(**fields), clean, corrupt)
    return make_pair(prompts["clean"], prompts["corrupt"], lm.spec.prediction_offset)


def receivers(lm, pair):
    """Return direction -> (Receiver, receiver run's readout logits, donor run's readout logits)."""
    names = all_site_hooks(len(lm.model.blocks))
    runs = {}
    for run in ("clean", "corrupt"):
        logits, acts = capture(lm.model, pair.batches[run], names, with_grad=False)
        runs[run] = (readout_logits(logits, pair.batches[run]), acts)
    out = {}
    for direction, (receiver, donor) in zip(DIRECTIONS, (("corrupt", "clean"), ("clean", "corrupt"))):
        aligned = {n: pair.aligned(a, receiver) for n, a in runs[donor][1].items()}
        out[direction] = (Receiver(lm.model, pair.batches[receiver], runs[receiver][1], aligned),
                          runs[receiver][0], runs[donor][0])
    return out


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_position_map_matches_prompt_tokens_and_marks_masks_without_counterpart(tiny_model, padding_side):
    lm = tiny_model("llada")
    subject = subject_from(lm)
    config = small_config(placements=("query-at:2",))
    prompts = pair_prompts(subject, config, Condition(2, False, "query-at:2"), Condition(5, False, "query-at:2"))
    clean, corrupt = prompts["clean"][0], prompts["corrupt"][0]
    mapping = position_map(clean, corrupt)
    answer = corrupt.answer_position
    assert mapping[:answer + 2] == list(range(answer + 2))  # prompt, answer slot, the one shared mask
    assert mapping[answer + 2:answer + 5] == [-1, -1, -1]  # masks 3..5 have no counterpart
    after = list(range(answer + 5, len(corrupt.input_ids)))
    assert after and [mapping[t] for t in after] == [t - 3 for t in after]  # examples after the query shift back
    assert all(clean.input_ids[s] == corrupt.input_ids[t] for t, s in enumerate(mapping) if s >= 0 and t != answer + 1)

    pair = make_pair(prompts["clean"], prompts["corrupt"], 0, padding_side=padding_side)
    for receiver, donor in (("corrupt", "clean"), ("clean", "corrupt")):
        ids_r, ids_d = pair.batches[receiver].input_ids, pair.batches[donor].input_ids
        index = pair.maps[receiver]
        for row in range(pair.size):
            matched = index[row] >= 0
            assert matched.sum() == len(pair.prompts["clean"][row].input_ids)  # every clean token has a counterpart
            kinds = pair.batches[receiver].layout.masks[row]
            same = ids_r[row][matched & ~kinds] == ids_d[row][index[row][matched & ~kinds]]
            assert bool(same.all())
        aligned = pair.aligned(ids_d[..., None].float(), receiver)[..., 0]
        assert torch.equal(aligned[index >= 0], ids_d[torch.nonzero(index >= 0)[:, 0], index[index >= 0]].float())


def test_pairs_refuse_a_causal_model_and_different_prompts(tiny_model):
    with pytest.raises(UsageError, match="causal"):
        pair_prompts(subject_from(tiny_model("llama")), small_config(), Condition(1, False, "random"),
                     Condition(5, False, "random"))
    lm = tiny_model("llada")
    prompts = pair_prompts(subject_from(lm), small_config(), Condition(1, False, "random"),
                           Condition(5, False, "random"))
    with pytest.raises(ValueError, match="not the same prompt"):
        position_map(prompts["clean"][0], prompts["corrupt"][1])


def test_metrics_logit_difference_recovery_and_wrong_token():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 1.0, 0.0, 0.0]])
    answers = torch.tensor([1, 0])
    wrong = top_wrong_ids(logits, answers)
    assert wrong.tolist() == [3, 1]  # the best token that is not the answer, even when the answer is top 1
    metrics = answer_metrics(logits, answers, wrong)
    assert metrics["logit_diff"].tolist() == [1.0, 4.0]
    assert torch.allclose(metrics["p_answer"], logits.softmax(-1)[[0, 1], [1, 0]])
    assert metrics["correct"].tolist() == [True, True]
    assert recovery(2.0, 5.0, 1.0) == pytest.approx(0.25)
    assert recovery(1.0, 5.0, 1.0) == 0 and recovery(5.0, 5.0, 1.0) == 1
    assert np.isnan(recovery(3.0, 2.0, 2.0))


@pytest.mark.parametrize("family,layer", [("llada", 0), ("llada", 1), ("llada", 2), ("dream", 1)])
def test_patching_all_positions_of_resid_pre_reproduces_the_other_run_when_lengths_match(tiny_model, family, layer):
    lm = tiny_model(family)
    pair = pairs_for(lm, Condition(4, True, "random"), Condition(4, False, "random"))  # filler control vs masks
    groups = {receiver: pair.position_groups(receiver, 2, appended=True) for receiver in ("clean", "corrupt")}
    for direction, (receiver, own, donor_logits) in receivers(lm, pair).items():
        run = "corrupt" if direction == "clean_into_corrupt" else "clean"
        names, where = groups[run]
        assert bool((where[names.index("all")] == pair.batches[run].layout.valid).all())
        logits = receiver.run(layer, [Variant("resid_pre", (layer, 0), where[names.index("all")])])[0]
        assert not torch.allclose(own, donor_logits, atol=1e-3)  # the two runs differ ...
        torch.testing.assert_close(logits, donor_logits, rtol=1e-5, atol=1e-5)  # ... and the patch gives the donor's


def test_patching_nothing_reproduces_the_receiving_run_at_every_site(tiny_model):
    lm = tiny_model("llada")
    pair = pairs_for(lm, Condition(1, False, "random"), Condition(6, False, "random"))
    n_heads = lm.config.n_heads
    for direction, (receiver, own, _) in receivers(lm, pair).items():
        shape = pair.batches["corrupt" if direction == "clean_into_corrupt" else "clean"].input_ids.shape
        nothing = torch.zeros(shape, dtype=torch.bool)
        for layer in range(receiver.n_layers):
            variants = [Variant(site, (layer, 0), nothing) for site in ("resid_pre", "attn_out", "mlp_out")]
            variants.append(Variant("z", (layer, 0, 0), torch.zeros((*shape, n_heads), dtype=torch.bool)))
            logits = receiver.run(layer, variants)
            for variant_logits in logits:
                torch.testing.assert_close(variant_logits, own, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_patching_the_final_residual_at_the_answer_slot_recovers_fully(tiny_model, family):
    lm = tiny_model(family)
    pair = pairs_for(lm, Condition(1, False, "random"), Condition(6, False, "random"))  # different lengths
    columns, groups, _ = patch_batch(lm.model, pair, last_k=2, attribution=False)
    n_layers = len(lm.model.blocks)
    # the answer slot's prediction is read at the slot (offset 0) or at the token before it (offset -1)
    answer = groups.index("answer" if lm.spec.prediction_offset == 0 else "last:1")
    clean, corrupt = columns["pairs/clean_logit_diff"], columns["pairs/corrupt_logit_diff"]
    final = columns["patching/resid_pre_logit_diff"][:, 0, n_layers, answer]
    np.testing.assert_allclose(recovery(final, clean, corrupt), 1.0, atol=1e-4)
    np.testing.assert_allclose(columns["patching/resid_pre_p_answer"][:, 0, n_layers, answer],
                               columns["pairs/clean_p_answer"], rtol=1e-4, atol=1e-6)
    back = columns["patching/resid_pre_logit_diff"][:, 1, n_layers, answer]  # corrupt into clean
    np.testing.assert_allclose(recovery(back, clean, corrupt), 0.0, atol=1e-4)
    # a position that is not the readout changes nothing at the final residual
    elsewhere = columns["patching/resid_pre_logit_diff"][:, 0, n_layers, groups.index("relevant")]
    np.testing.assert_allclose(elsewhere, corrupt, rtol=1e-5, atol=1e-5)
    assert "appended" not in groups  # 1 mask: nothing after the slot to pair


def test_the_grid_covers_every_site_layer_group_and_head(tiny_model):
    lm = tiny_model("llada")
    pair = pairs_for(lm, Condition(3, True, "random"), Condition(3, False, "random"))
    columns, groups, head_groups = patch_batch(lm.model, pair, last_k=3)
    assert groups == ["all", "relevant", "distractor", "query", "answer", "appended", "last:1", "last:2", "last:3"]
    assert head_groups == ["answer", "all"]
    cfg = lm.config
    assert columns["patching/resid_pre_logit_diff"].shape == (pair.size, 2, cfg.n_layers + 1, len(groups))
    assert columns["patching/attn_out_p_answer"].shape == (pair.size, 2, cfg.n_layers, len(groups))
    assert columns["patching/z_logit_diff"].shape == (pair.size, 2, cfg.n_layers, cfg.n_heads, 2)
    for path, value in columns.items():
        if path.startswith(("patching/", "attribution/")):
            assert np.isfinite(value).all(), path


def test_attribution_patching_equals_exact_patching_where_the_model_is_linear(tiny_model):
    lm = copy.deepcopy(tiny_model("llada"))
    lm.model.ln_final = torch.nn.Identity()  # logits are now linear in the final residual and in the last mlp_out
    lm.model.double()  # float64, so that rounding does not hide how exact the linear case is
    pair = pairs_for(lm, Condition(1, False, "random"), Condition(5, False, "random"))
    columns, _, _ = patch_batch(lm.model, pair, last_k=2, attribution=True)
    receiver = columns["pairs/corrupt_logit_diff"][:, None]

    def relative_error(site, layer):
        """Largest |estimate - exact| over the cells, relative to the largest effect of patching, clean into corrupt."""
        exact = columns[f"patching/{site}_logit_diff"][:, 0, layer]
        estimate = columns[f"attribution/{site}_logit_diff"][:, 0, layer]
        return np.abs(estimate - exact).max() / np.abs(exact - receiver).max()

    last = lm.config.n_layers - 1
    assert relative_error("resid_pre", last + 1) < 1e-9
    assert relative_error("mlp_out", last) < 1e-9
    # through the nonlinear blocks, attribution is only a first-order estimate (the test tells them apart)
    assert relative_error("attn_out", 0) > 1e-5


def test_site_hooks_name_the_final_residual():
    assert site_hook("resid_pre", 4, 4) == "blocks.3.hook_resid_post"
    assert site_hook("resid_pre", 1, 4) == "blocks.1.hook_resid_pre"
    assert site_hook("z", 2, 4) == "blocks.2.attn.hook_z"
    assert site_hook("mlp_out", 0, 4) == "blocks.0.hook_mlp_out"
    assert len(all_site_hooks(4)) == len(set(all_site_hooks(4))) == 5 + 4 * 3


def test_variants_start_at_their_layer_and_share_forward_passes(tiny_model):
    lm = tiny_model("llada")
    pair = pairs_for(lm, Condition(1, False, "random"), Condition(4, False, "random"))
    receiver, _, _ = receivers(lm, pair)["clean_into_corrupt"]
    calls = []
    handles = [block.register_forward_pre_hook(lambda module, args, i=i: calls.append((i, args[0].shape[0])))
               for i, block in enumerate(lm.model.blocks)]
    try:
        _, groups = pair.position_groups("corrupt", 2, appended=False)
        variants = [Variant("mlp_out", (1, g), where) for g, where in enumerate(groups)]
        receiver.run(1, variants)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == [(1, len(variants) * pair.size)]  # block 0 never runs; all variants in one pass


def test_variants_that_patch_nothing_different_are_not_run(tiny_model):
    lm = tiny_model("llada")
    pair = pairs_for(lm, Condition(1, False, "random"), Condition(4, False, "random"))
    receiver, own, _ = receivers(lm, pair)["clean_into_corrupt"]
    _, groups = pair.position_groups("corrupt", 2, appended=False)
    _, head_groups = pair.head_groups("corrupt")
    answers = pair.answer_ids()
    wrong = top_wrong_ids(own, answers)
    out = exact_patching(receiver, groups, head_groups, answers, wrong, max_rows=4)
    # at layer 0 the residual stream is the embeddings of the same tokens in both runs: nothing to patch
    corrupt = answer_metrics(own, answers, wrong)["logit_diff"].double()
    assert torch.allclose(out["resid_pre"]["logit_diff"][:, 0], corrupt[:, None].expand(-1, len(groups)), atol=1e-5)
    n_layers, n_heads = lm.config.n_layers, lm.config.n_heads
    run_variants = sum((2 * len(groups) + n_heads * len(head_groups)) * (n_layers - layer) for layer in range(n_layers))
    run_variants += sum(len(groups) * (n_layers - layer) for layer in range(1, n_layers))  # resid_pre from layer 1
    assert receiver.block_rows == run_variants * pair.size
