"""Collecting activations at position groups from the tiny LLaDA model, and writing them to a store."""

import numpy as np
import pytest
import torch

from mdlm_interp.batching import collate
from mdlm_interp.errors import UsageError
from mdlm_interp.models.hook_names import hook_name
from mdlm_interp.representations.activation_reader import open_activations
from mdlm_interp.representations.activations import open_activation_writer
from mdlm_interp.representations.collect import collect_activations, store_rows
from mdlm_interp.tasks import PromptConfig, sample_prompt, single_token_words, tokenize_prompt

RESID, Z = hook_name("resid_post", 1), hook_name("z", 0)


@pytest.fixture(scope="module")
def batch_of(tiny_model):
    lm = tiny_model("llada")
    words = single_token_words(lm.tokenizer)
    config = PromptConfig("adjective+largest", 3, 4, "random")
    prompts = [tokenize_prompt(sample_prompt(config, seed, words), lm.tokenizer, mask_token_id=lm.mask_token_id,
                               masks=masks) for seed, masks in ((0, 1), (1, 5), (2, 3))]
    return lm, prompts, collate(prompts, lm.spec.prediction_offset)


def test_collected_rows_are_the_activations_at_the_groups_positions(batch_of):
    lm, prompts, batch = batch_of
    collected = collect_activations(lm.model, batch, [RESID, Z], ["answer", "masks", "context"])
    valid = batch.attention_mask.bool()
    assert len(collected["group"]) == int(valid.sum())  # disjoint groups covering every valid position
    assert collected["group"].count("answer") == 3 and collected["group"].count("masks") == 0 + 4 + 2
    with torch.no_grad():
        _, cache = lm.model.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask_if_padded)
    padded = collected["position"] + torch.as_tensor(batch.starts)[collected["row"]]
    assert torch.allclose(collected["activations"][RESID], cache[RESID][collected["row"], padded], atol=1e-6)
    heads = lm.model.cfg.n_heads * lm.model.cfg.d_head
    assert collected["activations"][Z].shape == (len(collected["group"]), heads)
    answers = [p for p, g in zip(collected["position"].tolist(), collected["group"]) if g == "answer"]
    assert answers == [tp.answer_position for tp in prompts]
    first_wins = collect_activations(lm.model, batch, [RESID], ["context", "relevant"])
    assert batch.layout.relevant.any() and "relevant" not in first_wins["group"]  # relevant tokens are context, asked first


def test_collected_rows_go_to_a_store(batch_of, tmp_path):
    lm, prompts, batch = batch_of
    collected = collect_activations(lm.model, batch, [RESID], ["readout", "masks"])
    writer = open_activation_writer(tmp_path / "acts.h5", sites={RESID: lm.model.cfg.d_model}, dtype="float32",
                                    labels=("masks",), chunk_rows=4)
    writer.append(**store_rows(collected, ["a", "b", "c"], ["masks=1", "masks=5", "masks=3"], {"masks": [1, 5, 3]}))
    writer.finish()
    with open_activations(tmp_path / "acts.h5") as store:
        rows = store.rows()
        assert np.array_equal(store.read(RESID), collected["activations"][RESID].numpy())
        assert store.n_rows == 3 + 6 and list(rows[rows.prompt_key == "b"].masks) == [5.0] * 5
        assert list(rows[rows.prompt_key == "b"].position_group) == ["readout"] + ["masks"] * 4  # LLaDA: offset 0


def test_unknown_sites_and_groups_are_one_line_errors(batch_of):
    lm, _, batch = batch_of
    with pytest.raises(UsageError, match="unknown site"):
        collect_activations(lm.model, batch, ["blocks.99.hook_resid_post"], ["answer"])
    with pytest.raises(UsageError, match="unknown position group"):
        collect_activations(lm.model, batch, [RESID], ["fillerz"])
