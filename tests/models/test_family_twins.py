"""The autoregressive families are derived from their diffusion twins, not written out twice."""

from dataclasses import fields

from mdlm_interp.models.families import DREAM, FAMILIES, LLAMA, QWEN2


def differing(a, b) -> set[str]:
    return {f.name for f in fields(a) if getattr(a, f.name) != getattr(b, f.name)}


def test_qwen2_is_dream_read_causally_with_its_own_names_and_tokens():
    assert differing(DREAM, QWEN2) == {"family", "model_types", "architecture", "causal",
                                       "sampler", "special_tokens", "special_id_keys"}
    assert QWEN2.causal and QWEN2.prediction_offset == -1 and QWEN2.sampler is None and QWEN2.mask_token is None
    assert QWEN2.param_names is DREAM.param_names and QWEN2.config_keys is DREAM.config_keys  # shared, not copied


def test_llama_shares_the_hugging_face_layout_and_differs_in_tokens_and_numerics():
    assert differing(QWEN2, LLAMA) == {"family", "model_types", "architecture", "special_tokens", "special_id_keys",
                                       "chat_template", "default_rope_theta", "default_norm_eps", "tokenizer_format",
                                       "qkv_bias"}
    assert LLAMA.param_names is QWEN2.param_names and LLAMA.causal and LLAMA.qkv_bias is None
    assert list(FAMILIES) == ["llada", "dream", "llama", "qwen2"]
