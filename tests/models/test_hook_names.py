"""hook_name: every name it builds is a hook point of the decoder, in TransformerLens' vocabulary."""

import pytest

from mdlm_interp.errors import UsageError
from mdlm_interp.models.hook_names import HOOK_KINDS, MOE_HOOK_KINDS, hook_name

MODEL_KINDS = {"embed", "scale", "normalized", "ln_final", "final_normalized"}


def test_every_kind_names_a_hook_point_of_the_decoder(tiny_model):
    model, moe_model = tiny_model("llada").model, tiny_model("llada2").model  # llada2's layer 1 is a MoE layer
    for kind in HOOK_KINDS:
        name = hook_name(kind) if kind in MODEL_KINDS else hook_name(kind, 1)
        assert name in (moe_model if kind in MOE_HOOK_KINDS else model).hook_dict, f"{kind} -> {name}"
    assert hook_name("router_logits", 1) not in model.hook_dict


def test_names_match_transformer_lens_get_act_name():
    from transformer_lens.utilities.components_utils import get_act_name

    for kind in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "q", "k", "v", "z",
                 "pattern", "attn_scores", "result", "pre", "post"):
        assert hook_name(kind, 3) == get_act_name(kind, 3)
    assert hook_name("embed") == get_act_name("embed")


@pytest.mark.parametrize("call", [lambda: hook_name("bogus", 0), lambda: hook_name("z"), lambda: hook_name("embed", 0)])
def test_misuse_is_a_usage_error(call):
    with pytest.raises(UsageError):
        call()
