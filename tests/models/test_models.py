"""The hooked decoder against Hugging Face transformers, and its hooks, padding and readout."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from conftest import FAMILY_NAMES

# LLaDA -> Llama names, written out here from docs/models.md (independent of the toolkit's own map).
LLADA_TOP = {"model.transformer.wte": "model.embed_tokens", "model.transformer.ln_f": "model.norm",
             "model.transformer.ff_out": "lm_head"}
LLADA_BLOCK = {"attn_norm": "input_layernorm", "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
               "v_proj": "self_attn.v_proj", "attn_out": "self_attn.o_proj", "ff_norm": "post_attention_layernorm",
               "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "ff_out": "mlp.down_proj"}


def llada_to_llama(state: dict) -> dict:
    out = {}
    for name, tensor in state.items():
        base, _, kind = name.rpartition(".")
        if base in LLADA_TOP:
            out[f"{LLADA_TOP[base]}.{kind}"] = tensor
        else:
            _, _, _, layer, *rest = base.split(".")
            out[f"model.layers.{layer}.{LLADA_BLOCK['.'.join(rest)]}.{kind}"] = tensor
    return out


def reference_model(family: str, path):
    """Build the transformers model that computes what ``family`` should, from the same safetensors."""
    config = json.loads((path / "config.json").read_text())
    state = load_file(str(path / "model.safetensors"))
    if family in ("llama", "qwen2"):
        cls = LlamaForCausalLM if family == "llama" else Qwen2ForCausalLM
        return cls.from_pretrained(str(path), dtype=torch.float32).eval()
    if family == "dream":
        ref = Qwen2ForCausalLM(Qwen2Config(
            hidden_size=config["hidden_size"], num_hidden_layers=config["num_hidden_layers"],
            num_attention_heads=config["num_attention_heads"], num_key_value_heads=config["num_key_value_heads"],
            intermediate_size=config["intermediate_size"], vocab_size=config["vocab_size"],
            rope_theta=config["rope_theta"], rms_norm_eps=config["rms_norm_eps"],
            max_position_embeddings=config["max_position_embeddings"], tie_word_embeddings=False))
        ref.load_state_dict(state, strict=True)
        return ref.eval()
    ref = LlamaForCausalLM(LlamaConfig(
        hidden_size=config["d_model"], num_hidden_layers=config["n_layers"], num_attention_heads=config["n_heads"],
        num_key_value_heads=config["n_kv_heads"], intermediate_size=config["mlp_hidden_size"],
        vocab_size=config["embedding_size"], rope_theta=config["rope_theta"], rms_norm_eps=config["rms_norm_eps"],
        max_position_embeddings=config["max_sequence_length"], tie_word_embeddings=False))
    ref.load_state_dict(llada_to_llama(state), strict=True)
    return ref.eval()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_logits_match_transformers_reference(family, tiny_checkpoint, tiny_model):
    lm = tiny_model(family)
    ref = reference_model(family, tiny_checkpoint(family))
    ids = torch.randint(0, lm.config.d_vocab, (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        if lm.spec.causal:
            expected = ref(ids).logits
        else:  # a 4-D all-True mask makes transformers' Llama/Qwen2 bidirectional
            expected = ref(ids, attention_mask=torch.ones(2, 1, 37, 37, dtype=torch.bool)).logits
            causal = ref(ids).logits
            assert (causal - expected).abs().max() > 1e-2  # the reference really is bidirectional
        ours = lm.model(ids)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_single_runs(family, side, tiny_model):
    lm = tiny_model(family)
    gen = torch.Generator().manual_seed(2)
    lengths = [9, 14, 5]
    sequences = [torch.randint(0, 200, (n,), generator=gen) for n in lengths]
    width = max(lengths)
    ids = torch.full((3, width), 7)
    mask = torch.zeros(3, width, dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, span], mask[row, span] = seq, 1
    with torch.no_grad():
        batched = lm.model(ids, attention_mask=mask)
        for row, seq in enumerate(sequences):
            single = lm.model(seq[None])[0]
            valid = mask[row].bool()
            assert torch.isfinite(batched[row]).all()
            torch.testing.assert_close(batched[row][valid], single, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_explicit_attention_path_equals_sdpa(family, tiny_model):
    lm = tiny_model(family)
    ids = torch.randint(0, 200, (2, 20), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, :6] = 0
    seen = []
    hooks = [(f"blocks.{l}.attn.hook_pattern", lambda x, hook: seen.append(hook.name)) for l in range(2)]
    with torch.no_grad():
        fast = lm.model(ids, attention_mask=mask)
        explicit = lm.model.run_with_hooks(ids, attention_mask=mask, fwd_hooks=hooks)
        fast_nomask = lm.model(ids)
        explicit_nomask = lm.model.run_with_hooks(ids, fwd_hooks=hooks)
    assert seen == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"] * 2
    torch.testing.assert_close(explicit, fast, atol=1e-5, rtol=0)
    torch.testing.assert_close(explicit_nomask, fast_nomask, atol=1e-5, rtol=0)


DESIGN_HOOKS = ["hook_embed", "ln_final.hook_normalized"] + [
    f"blocks.{{l}}.{name}" for name in
    ["hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
     "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z"]
]


@pytest.mark.parametrize("family", ["llada", "llama"])
def test_run_with_cache_exposes_every_hook_and_patterns_are_distributions(family, tiny_model):
    lm = tiny_model(family)
    cfg = lm.config
    ids = torch.randint(0, 200, (2, 11), generator=torch.Generator().manual_seed(4))
    logits, cache = lm.model.run_with_cache(ids)
    for template in DESIGN_HOOKS:
        for layer in range(cfg.n_layers):
            assert template.format(l=layer) in cache, template
    pattern = cache["blocks.1.attn.hook_pattern"]
    assert pattern.shape == (2, cfg.n_heads, 11, 11)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, cfg.n_heads, 11))
    assert cache["blocks.0.attn.hook_k"].shape == (2, 11, cfg.n_kv_heads, cfg.d_head)
    assert cache["blocks.0.attn.hook_z"].shape == (2, 11, cfg.n_heads, cfg.d_head)
    upper = pattern.triu(1)
    if lm.spec.causal:
        assert upper.abs().max() == 0
    else:
        assert upper.abs().max() > 0.01
    # the final residual stream through ln_final and unembed gives the logits
    resid = cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"]
    torch.testing.assert_close(lm.model.unembed(lm.model.ln_final(resid)), logits)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_a_uniform_pattern_gives_the_reference_with_zero_queries(family, tiny_checkpoint, tiny_model):
    """Replacing layer 0's pattern by uniform attention equals the transformers reference whose layer-0
    queries are zero (all scores 0, so every key gets the same weight), bidirectional (a full 4-D mask)."""
    lm = tiny_model(family)
    ref = reference_model(family, tiny_checkpoint(family))
    attention = ref.model.layers[0].self_attn
    with torch.no_grad():
        attention.q_proj.weight.zero_()
        if attention.q_proj.bias is not None:
            attention.q_proj.bias.zero_()
    ids = torch.randint(0, 200, (2, 8), generator=torch.Generator().manual_seed(5))

    def uniform(pattern, hook):
        return torch.full_like(pattern, 1.0 / pattern.shape[-1])

    with torch.no_grad():
        plain = lm.model(ids)
        edited = lm.model.run_with_hooks(ids, fwd_hooks=[("blocks.0.attn.hook_pattern", uniform)])
        expected = ref(ids, attention_mask=torch.ones(2, 1, 8, 8, dtype=torch.bool)).logits
    torch.testing.assert_close(edited, expected, atol=1e-5, rtol=0)
    assert (plain - expected).abs().max() > 1e-3  # the edit is not a no-op on this model


@pytest.mark.parametrize("family,offset", [("llada", 0), ("dream", -1), ("llama", -1), ("qwen2", -1)])
def test_prediction_offset_helper(family, offset, tiny_model):
    lm = tiny_model(family)
    assert lm.spec.prediction_offset == offset
    logits = torch.randn(2, 6, 5)
    positions = torch.tensor([3, 5])
    picked = lm.logits_at(logits, positions)
    torch.testing.assert_close(picked, torch.stack([logits[0, 3 + offset], logits[1, 5 + offset]]))
    several = lm.logits_at(logits, torch.tensor([[1, 2], [4, 5]]))
    torch.testing.assert_close(several[1, 0], logits[1, 4 + offset])
    if offset:
        with pytest.raises(IndexError):
            lm.logits_at(logits, torch.tensor([0, 1]))


def test_mask_ids_follow_the_family(tiny_model):
    assert tiny_model("llada").tokenizer.convert_ids_to_tokens(tiny_model("llada").mask_token_id) == "<|mdm_mask|>"
    assert tiny_model("dream").tokenizer.convert_ids_to_tokens(tiny_model("dream").mask_token_id) == "<|mask|>"
    assert tiny_model("llama").mask_token_id is None and tiny_model("qwen2").mask_token_id is None
