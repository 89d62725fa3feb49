"""The autoregressive families are derived from their diffusion twins, not written out twice."""

from dataclasses import fields

from mdlm_interp.models.families import A2D_LLAMA, A2D_QWEN2, A2D_QWEN3, DREAM, FAMILIES, LLAMA, QWEN2, QWEN3


def differing(a, b) -> set[str]:
    return {f.name for f in fields(a) if getattr(a, f.name) != getattr(b, f.name)}


def test_qwen2_is_dream_read_causally_with_its_own_names_and_tokens():
    assert differing(DREAM, QWEN2) == {"family", "model_types", "architecture", "causal",
                                       "sampler", "special_tokens", "special_id_keys", "alternative_tokens"}
    assert QWEN2.causal and QWEN2.prediction_offset == -1 and QWEN2.sampler is None and QWEN2.mask_token is None
    assert QWEN2.param_names is DREAM.param_names and QWEN2.config_keys is DREAM.config_keys  # shared, not copied


def test_llama_shares_the_hugging_face_layout_and_differs_in_tokens_and_numerics():
    assert differing(QWEN2, LLAMA) == {"family", "model_types", "architecture", "special_tokens", "special_id_keys",
                                       "chat_template", "default_rope_theta", "default_norm_eps", "tokenizer_format",
                                       "qkv_bias", "config_keys"}  # config_keys: attention_bias also biases o
    assert LLAMA.param_names is QWEN2.param_names and LLAMA.causal and LLAMA.qkv_bias is None
    assert list(FAMILIES) == ["llada", "dream", "llama", "qwen2", "qwen3", "lladamoe", "llada2", "a2d-qwen3",
                              "a2d-qwen2", "a2d-llama"]


def test_a2d_families_are_their_sources_read_bidirectionally_with_a_mask():
    for source, a2d in ((QWEN3, A2D_QWEN3), (QWEN2, A2D_QWEN2), (LLAMA, A2D_LLAMA)):
        assert differing(source, a2d) == {"family", "model_types", "architecture", "causal", "prediction_offset",
                                          "sampler", "special_tokens"}
        assert a2d.attention == "bidirectional" and a2d.prediction_offset == 0 and a2d.mask_token == "<|mask|>"
        assert a2d.special_tokens["pad"] == source.special_tokens["eos"] and a2d.param_names is source.param_names
