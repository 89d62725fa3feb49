"""Partial forward passes (TransformerLens' ``stop_at_layer`` / ``start_at_layer``) and the model's size bounds."""

import pytest
import torch

from mdlm_interp.errors import UsageError
from mdlm_interp.models.hook_names import hook_name


def padded_batch(lm, side: str):
    """Two sequences of different lengths, padded on ``side``: (ids [2, 9], attention mask [2, 9])."""
    torch.manual_seed(0)
    ids = torch.randint(5, lm.config.d_vocab, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    if side == "left":
        mask[1, :3] = 0
    else:
        mask[1, -3:] = 0
    return ids, mask


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("layer", [0, 1, 2, 3])
def test_stop_then_start_equals_one_full_pass(family, side, layer, tiny_model):
    lm = tiny_model(family)
    ids, mask = padded_batch(lm, side)
    with torch.no_grad():
        full = lm.model(ids, attention_mask=mask)
        names = [hook_name("resid_pre", layer), hook_name("resid_post", lm.config.n_layers - 1)]
        _, cache = lm.model.run_with_cache(ids, attention_mask=mask, names_filter=names)  # no pattern hooks: SDPA
        resid = lm.model(ids, attention_mask=mask, stop_at_layer=layer)
        rest = lm.model(resid, attention_mask=mask, start_at_layer=layer)
    n_layers = lm.config.n_layers
    expected = cache[hook_name("resid_pre", layer)] if layer < n_layers else cache[hook_name("resid_post", n_layers - 1)]
    assert resid.shape == (2, 9, lm.config.d_model)
    assert torch.equal(resid, expected)
    assert torch.equal(rest, full)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_partial_pass_fires_only_the_hooks_of_the_part_that_runs(family, tiny_model):
    lm = tiny_model(family)
    ids, mask = padded_batch(lm, "right")
    fired = []

    def seen(activation, hook):
        fired.append(hook.name)

    names = [hook_name("embed"), hook_name("resid_pre", 0), hook_name("z", 0), hook_name("resid_pre", 1),
             hook_name("z", 1)]
    with torch.no_grad():
        resid = lm.model(ids, attention_mask=mask, stop_at_layer=1)
        lm.model.run_with_hooks(resid, attention_mask=mask, start_at_layer=1, fwd_hooks=[(n, seen) for n in names])
    assert fired == [hook_name("resid_pre", 1), hook_name("z", 1)]


def test_final_residual_and_final_logits(tiny_model):
    lm = tiny_model("llada")
    ids, mask = padded_batch(lm, "left")
    with torch.no_grad():
        final = lm.model(ids, attention_mask=mask, stop_at_layer=lm.config.n_layers)
        logits = lm.model(ids, attention_mask=mask)
        two_back = lm.model(ids, attention_mask=mask, stop_at_layer=-1)
        before_last = lm.model(ids, attention_mask=mask, stop_at_layer=lm.config.n_layers - 1)
    assert torch.equal(lm.model.final_logits(final), logits)
    assert torch.equal(two_back, before_last)
    # a single position's logits from the final residual are the full pass's at that position (to rounding:
    # the unembedding multiplies a matrix of another shape)
    torch.testing.assert_close(lm.model.final_logits(final[:, 4]), logits[:, 4], rtol=1e-6, atol=1e-6)


def test_a_residual_stream_without_start_at_layer_is_refused(tiny_model):
    lm = tiny_model("llada")
    ids, mask = padded_batch(lm, "left")
    with torch.no_grad():
        resid = lm.model(ids, attention_mask=mask, stop_at_layer=1)
        with pytest.raises(UsageError, match="start_at_layer"):
            lm.model(resid, attention_mask=mask)
