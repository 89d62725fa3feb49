"""Splicing an SAE into the tiny LLaDA model: the reconstruction replaces the activation where asked,
and the answer loss with a lossless SAE is the plain loss."""

import pytest
import torch
from planted import lossless

from mdlm_interp.batching import collate
from mdlm_interp.errors import UsageError
from mdlm_interp.models.hook_names import hook_name
from mdlm_interp.representations.sae import SAEShape, SparseAutoencoder
from mdlm_interp.representations.splice import answer_loss_with_sae, site_width, splice_hooks
from mdlm_interp.tasks import PromptConfig, sample_prompt, single_token_words, tokenize_prompt

SITE = hook_name("resid_post", 0)



@pytest.fixture(scope="module")
def setup(tiny_model):
    lm = tiny_model("llada")
    words = single_token_words(lm.tokenizer)
    prompts = [tokenize_prompt(sample_prompt(PromptConfig("adjective+largest", 3, 4, "random"), seed, words),
                               lm.tokenizer, mask_token_id=lm.mask_token_id, masks=3) for seed in range(4)]
    return lm, collate(prompts, lm.spec.prediction_offset)


def test_site_width_reads_any_site(setup):
    lm, _ = setup
    cfg = lm.model.cfg
    assert site_width(lm.model, SITE) == cfg.d_model
    assert site_width(lm.model, hook_name("z", 1)) == cfg.n_heads * cfg.d_head
    with pytest.raises(UsageError, match="unknown site"):
        site_width(lm.model, "blocks.99.hook_resid_post")


def test_the_reconstruction_replaces_the_activation_at_the_chosen_positions(setup):
    lm, batch = setup
    sae = SparseAutoencoder(SAEShape("topk", lm.model.cfg.d_model, 64, k=4)).initialize(0)
    positions = batch.layout.masks
    seen = {}

    def keep(activation, hook):
        seen[len(seen)] = activation.clone()

    with torch.no_grad():
        lm.model.run_with_hooks(batch.input_ids, fwd_hooks=[(SITE, keep)])
        lm.model.run_with_hooks(batch.input_ids, fwd_hooks=[*splice_hooks(SITE, sae, positions), (SITE, keep)])
        assert torch.equal(seen[1][~positions], seen[0][~positions])
        assert torch.allclose(seen[1][positions], sae(seen[0][positions]), atol=1e-6)
        assert not torch.allclose(seen[1][positions], seen[0][positions])


def test_answer_loss_with_a_lossless_sae_is_the_plain_loss(setup):
    lm, batch = setup
    d = lm.model.cfg.d_model
    same = answer_loss_with_sae(lm.model, batch, SITE, lossless(d))
    assert same["loss_with_sae"] == pytest.approx(same["loss"], abs=1e-5) and same["accuracy_with_sae"] == same["accuracy"]
    noisy = answer_loss_with_sae(lm.model, batch, SITE, SparseAutoencoder(SAEShape("topk", d, 8, k=1)).initialize(0))
    assert noisy["loss"] == same["loss"] and abs(noisy["loss_with_sae"] - noisy["loss"]) > 1e-3
    with pytest.raises(UsageError, match=f"width is {d + 1}"):
        answer_loss_with_sae(lm.model, batch, SITE, lossless(d + 1))
