"""Experts as units: ablating an expert is zeroing its weight by hand, patching its contribution moves exactly
it, and ablate --experts runs on a tiny MoE checkpoint against random experts."""

import copy

import numpy as np
import pytest
import torch

from cli_run import run_cli
from mdlm_interp.errors import UsageError
from mdlm_interp.hooks.experts import (expert_contribution, parse_experts, patch_expert_contribution,
                                       remove_experts)
from mdlm_interp.hooks.routing import moe_layers
from mdlm_interp.models.hook_names import hook_name
from mdlm_interp.store.results import open_results


@pytest.fixture(scope="module")
def moe(tiny_model):
    lm = tiny_model("llada2")
    ids = torch.tensor([lm.tokenizer.encode(" happy dog, 7, 3\nOutput: big", add_special_tokens=False)])
    layer = moe_layers(lm.model)[-1]
    _, cache = lm.model.run_with_cache(ids)
    expert = int(cache[hook_name("topk_indices", layer)][0, -1, 0])  # chosen at the last position
    return lm, ids, layer, expert


def test_removing_an_expert_everywhere_is_zeroing_its_weights(moe):
    lm, ids, layer, expert = moe
    ablated = lm.model.run_with_hooks(ids, fwd_hooks=remove_experts([(layer, expert)]))
    by_hand = copy.deepcopy(lm.model)
    with torch.no_grad():
        by_hand.blocks[layer].mlp.experts[expert].down_proj.weight.zero_()
    expected = by_hand(ids)
    assert torch.allclose(ablated, expected, atol=1e-5)
    assert not torch.allclose(ablated, lm.model(ids), atol=1e-3)


def test_removing_an_expert_at_some_positions_zeroes_only_its_output_there(moe):
    lm, ids, layer, expert = moe
    where = torch.zeros_like(ids, dtype=torch.bool)
    where[0, -3:] = True

    kept = {}

    def keep(indices, hook):
        kept["indices"] = indices

    def zero(out, hook):  # the expert's output set to zero by hand at the chosen positions
        hit = (kept["indices"] == expert) & where[..., None]
        return out.masked_fill(hit[..., None], 0)

    expected = lm.model.run_with_hooks(ids, fwd_hooks=[(hook_name("topk_indices", layer), keep),
                                                       (hook_name("expert_out", layer), zero)])
    ablated = lm.model.run_with_hooks(ids, fwd_hooks=remove_experts([(layer, expert)], where))
    assert torch.allclose(ablated, expected, atol=1e-6)
    everywhere = lm.model.run_with_hooks(ids, fwd_hooks=remove_experts([(layer, expert)]))
    assert not torch.allclose(ablated, everywhere, atol=1e-4)  # the positions matter


def test_patching_an_expert_contribution_moves_exactly_it(moe):
    lm, ids, layer, expert = moe
    donor_ids = ids.clone()
    donor_ids[0, 1] = lm.mask_token_id
    names = [hook_name(kind, layer) for kind in ("topk_indices", "topk_weights", "expert_out", "mlp_out")]
    _, donor = lm.model.run_with_cache(donor_ids, names_filter=names)
    _, receiver = lm.model.run_with_cache(ids, names_filter=names)
    contribution = expert_contribution(*(donor[n] for n in names[:3]), [expert])
    where = torch.zeros_like(ids, dtype=torch.bool)
    where[0, -1] = True
    seen = {}
    hooks = patch_expert_contribution([(layer, expert)], {layer: contribution}, where)
    hooks.append((hook_name("mlp_out", layer), lambda out, hook: seen.setdefault("out", out)))
    lm.model.run_with_hooks(ids, fwd_hooks=hooks)
    own = expert_contribution(*(receiver[n] for n in names[:3]), [expert])
    expected = receiver[names[3]].clone()
    expected[0, -1] += contribution[0, -1] - own[0, -1]
    assert torch.allclose(seen["out"], expected, atol=1e-5)
    assert not torch.allclose(contribution[0, -1], own[0, -1])


def test_expert_specs_are_checked(moe):
    lm = moe[0]
    layers = moe_layers(lm.model)
    assert parse_experts(f"{layers[0]}.1,{layers[0]}.0", layers, 4) == [(layers[0], 0), (layers[0], 1)]
    for bad in ("0.0", f"{layers[0]}.9", "x"):
        with pytest.raises(UsageError, match="--experts"):
            parse_experts(bad, layers, 4)


def test_ablate_experts_command(tmp_path, tiny_checkpoint, moe):
    lm, _, layer, expert = moe
    out = tmp_path / "experts.h5"
    result = run_cli("ablate", "--model", tiny_checkpoint("llada2"), "--experts", f"{layer}.{expert}", "--task",
                     "adjective+largest", "--n", "2", "--n-distractor", "4", "--masks", "1,6", "--control-draws", "2",
                     "--no-progress", "--out", out)
    assert result.returncode == 0, result.stderr
    assert f"ablated experts {layer}.{expert}" in result.stdout and "at the masks only" in result.stdout
    with open_results(out, "ablation") as store:
        assert store.attrs["settings"]["experts"] == f"{layer}.{expert}"
        assert store.attrs["modes"] == ["zero"]
        controls = store.attrs["control_heads"]
        ablated = store.array("ablated/p_answer")[:, 0]
        baseline = store.array("examples/p_answer")
        masks = store.array("examples/masks")
    assert all(f"{layer}.{expert}" not in draw for draw in controls)
    assert np.allclose(ablated[masks == 1], baseline[masks == 1])  # one mask: no mask after the slot to ablate at
    bad = run_cli("ablate", "--model", tiny_checkpoint("llada2"), "--experts", f"{layer}.{expert}", "--modes",
                  "mean", "--out", tmp_path / "x.h5")
    assert bad.returncode == 2 and "for experts; choose from zero" in bad.stderr


def hand_answer_cell(lm, plan, layer: int, expert: int) -> float:
    """The first pair's logit(answer) - logit(wrong) in the 6-mask run with the expert's contribution at the answer
    slot replaced by the 1-mask run's, by hand."""
    from mdlm_interp.circuits.pairs import pair_prompts
    from mdlm_interp.plan import Condition
    from mdlm_interp.subject import subject_from

    prompts = pair_prompts(subject_from(lm), plan, Condition(1, False, "random"), Condition(6, False, "random"))
    runs = {run: torch.tensor([prompts[run][0].input_ids]) for run in ("clean", "corrupt")}
    slot = prompts["clean"][0].answer_position
    kinds = [hook_name(kind, layer) for kind in ("topk_indices", "topk_weights", "expert_out")]
    share = {run: expert_contribution(*(lm.model.run_with_cache(ids, names_filter=kinds)[1][k] for k in kinds),
                                      [expert])[0, slot] for run, ids in runs.items()}

    def swap(out, hook):
        out = out.clone()
        out[0, slot] += share["clean"] - share["corrupt"]
        return out

    logits = lm.model.run_with_hooks(runs["corrupt"], fwd_hooks=[(hook_name("mlp_out", layer), swap)])[0, slot]
    answer = prompts["corrupt"][0].answer_id
    wrong = int(lm.model(runs["corrupt"])[0, slot].scatter(-1, torch.tensor([answer]), float("-inf")).argmax())
    return float(logits[answer] - logits[wrong])


def test_patch_experts_between_mask_counts(moe):
    from mdlm_interp.circuits.experts import patch_experts
    from mdlm_interp.plan import Condition, PromptPlan

    lm, _, layer, expert = moe
    plan = PromptPlan(tasks=["adjective+largest"], n=2, n_distractor=4, masks=(1, 6))
    frame = patch_experts(lm, plan, Condition(1, False, "random"), Condition(6, False, "random"),
                          f"{layer}.{expert}")
    assert set(frame["direction"]) == {"clean_into_corrupt", "corrupt_into_clean"}
    receiver = frame["clean"].where(frame["direction"] == "corrupt_into_clean", frame["corrupt"])
    moved = frame[frame["group"] == "all"]
    assert ((moved["patched"] - receiver[moved.index]).abs() > 1e-6).any()
    cell = frame[(frame["direction"] == "clean_into_corrupt") & (frame["group"] == "answer")].iloc[0]
    assert abs(cell["patched"] - hand_answer_cell(lm, plan, layer, expert)) < 1e-4
    with pytest.raises(UsageError, match="--experts"):
        patch_experts(lm, plan, Condition(1, False, "random"), Condition(6, False, "random"), "0.0")


def test_patch_experts_command_writes_a_store_that_analyze_reads(tmp_path, tiny_checkpoint, moe):
    from mdlm_interp.plan import PromptPlan

    lm, _, layer, expert = moe
    out = tmp_path / "experts.h5"
    result = run_cli("patch", "--model", tiny_checkpoint("llada2"), "--experts", f"{layer}.{expert}", "--task",
                     "adjective+largest", "--n", "2", "--n-distractor", "4", "--clean-masks", "1", "--corrupt-masks",
                     "6", "--no-progress", "--out", out)
    assert result.returncode == 0, result.stderr
    assert f"experts {layer}.{expert} patched (1 vs 6 masks)" in result.stdout and "answer" in result.stdout
    with open_results(out, "expert_patching") as store:
        cells = store.examples
        assert store.attrs["experts"] == [f"{layer}.{expert}"]
    assert set(cells["group"]) >= {"all", "answer", "query"} and len(cells) == 2 * 2 * cells["group"].nunique()
    cell = cells[(cells["direction"] == "clean_into_corrupt") & (cells["group"] == "answer") & (cells["example"] == 0)]
    plan = PromptPlan(tasks=["adjective+largest"], n=2, n_distractor=4, masks=(1, 6))
    assert abs(float(cell["patched"].iloc[0]) - hand_answer_cell(lm, plan, layer, expert)) < 1e-4
    analyzed = run_cli("analyze", out, "--out", tmp_path / "report", "--only", "expert_patching")
    assert analyzed.returncode == 0, analyzed.stderr
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Patching experts between mask configurations" in report and f"expert {layer}.{expert}" in report


def test_patch_experts_refuses_a_dense_model_and_unknown_experts(tmp_path, tiny_checkpoint, moe):
    layer = moe[2]
    for model, experts in ((tiny_checkpoint("llada"), "0.0"), (tiny_checkpoint("llada2"), f"{layer}.99")):
        refused = run_cli("patch", "--model", model, "--experts", experts, "--n", "1", "--corrupt-masks", "3",
                          "--no-progress", "--out", tmp_path / "x.h5")
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert not (tmp_path / "x.h5").exists()
    assert "dense" in run_cli("patch", "--model", tiny_checkpoint("llada"), "--experts", "0.0", "--n", "1",
                              "--out", tmp_path / "x.h5").stderr
