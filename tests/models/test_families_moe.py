"""The 2026 families (Qwen3, LLaDA-MoE, LLaDA2, the A2D conversions) against transformers' own models,
their mixture-of-experts hooks, their checkpoints' bad input, and the commands run on each unchanged."""

import json

import h5py
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (Glm4MoeConfig, Glm4MoeForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM)

from cli_run import run_cli
from mdlm_interp.models.hook_names import hook_name
from mdlm_interp.models.moe import MoEMLP
from mdlm_interp.models.transformer import DecoderConfig

NEW_FAMILIES = ["qwen3", "lladamoe", "llada2", "a2d-qwen3", "a2d-qwen2", "a2d-llama"]

# Our module names -> Hugging Face's (Llama / Qwen / GLM-4-MoE layout), written out here from
# docs/models.md, independent of the toolkit's own maps.
HF_BLOCK = {"ln1": "input_layernorm", "ln2": "post_attention_layernorm", "attn.q_proj": "self_attn.q_proj",
            "attn.k_proj": "self_attn.k_proj", "attn.v_proj": "self_attn.v_proj", "attn.o_proj": "self_attn.o_proj",
            "attn.q_norm": "self_attn.q_norm", "attn.k_norm": "self_attn.k_norm", "mlp.gate_proj": "mlp.gate_proj",
            "mlp.up_proj": "mlp.up_proj", "mlp.down_proj": "mlp.down_proj", "mlp.gate": "mlp.gate",
            "mlp.shared_expert.gate_proj": "mlp.shared_experts.gate_proj",
            "mlp.shared_expert.up_proj": "mlp.shared_experts.up_proj",
            "mlp.shared_expert.down_proj": "mlp.shared_experts.down_proj"}
HF_TOP = {"embed": "model.embed_tokens", "ln_final": "model.norm", "unembed": "lm_head"}


def hf_state(model) -> dict:
    """Our weights under transformers' names: experts stacked (gate_up_proj [E, 2I, H], down_proj [E, H, I]),
    the expert bias as DeepSeek-V3's e_score_correction_bias."""
    state, experts = {}, {}
    for name, tensor in model.state_dict().items():
        module, _, kind = name.rpartition(".")
        if module in HF_TOP:
            state[f"{HF_TOP[module]}.{kind}"] = tensor
            continue
        _, layer, rest = module.split(".", 2)
        if ".experts." in f".{rest}.":
            _, expert, projection = rest.split(".", 3)[1:]
            experts.setdefault(int(layer), {}).setdefault(int(expert), {})[projection] = tensor
        elif kind == "expert_bias":
            state[f"model.layers.{layer}.mlp.gate.e_score_correction_bias"] = tensor
        else:
            state[f"model.layers.{layer}.{HF_BLOCK[rest]}.{kind}"] = tensor
    for layer, by_expert in experts.items():
        ordered = [by_expert[e] for e in sorted(by_expert)]
        state[f"model.layers.{layer}.mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([e["gate_proj"], e["up_proj"]]) for e in ordered])
        state[f"model.layers.{layer}.mlp.experts.down_proj"] = torch.stack([e["down_proj"] for e in ordered])
    return state


def reference_model(lm):
    """The transformers model computing what the tiny model of ``lm``'s family should (random weights copied in)."""
    cfg = lm.config
    shape = dict(vocab_size=cfg.d_vocab, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
                 num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
                 intermediate_size=cfg.d_mlp, rms_norm_eps=cfg.norm_eps, max_position_embeddings=cfg.max_seq_len,
                 tie_word_embeddings=cfg.tie_embeddings)
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    family = lm.spec.family
    if family in ("qwen3", "a2d-qwen3"):
        ref = Qwen3ForCausalLM(Qwen3Config(**shape, head_dim=cfg.d_head, rope_parameters=rope))
    elif family == "a2d-qwen2":
        ref = Qwen2ForCausalLM(Qwen2Config(**shape, rope_parameters=rope))
    elif family == "a2d-llama":
        ref = LlamaForCausalLM(LlamaConfig(**shape, rope_parameters=rope))
    elif family == "lladamoe":  # Qwen3-MoE: QK norm and softmax top-k routing, not renormalised here
        ref = Qwen3MoeForCausalLM(Qwen3MoeConfig(
            **shape, head_dim=cfg.d_head, rope_parameters=rope, num_experts=cfg.n_experts,
            num_experts_per_tok=cfg.n_experts_per_tok, moe_intermediate_size=cfg.d_expert, norm_topk_prob=False,
            decoder_sparse_step=1, mlp_only_layers=[]))
    else:  # llada2: GLM-4-MoE = QK norm, partial RoPE, DeepSeek-V3 group-limited routing, shared experts
        ref = Glm4MoeForCausalLM(Glm4MoeConfig(
            **shape, head_dim=cfg.d_head, rope_parameters={**rope, "partial_rotary_factor": cfg.partial_rotary_factor},
            use_qk_norm=True, n_routed_experts=cfg.n_experts, num_experts_per_tok=cfg.n_experts_per_tok,
            moe_intermediate_size=cfg.d_expert, n_shared_experts=cfg.d_shared // cfg.d_expert, n_group=cfg.n_group,
            topk_group=cfg.topk_group, routed_scaling_factor=cfg.routed_scaling_factor, norm_topk_prob=True,
            first_k_dense_replace=cfg.n_layers - len(cfg.moe_layers)))
    missing, unexpected = ref.load_state_dict(hf_state(lm.model), strict=False)
    assert not unexpected and all(name.endswith("lm_head.weight") for name in missing), (missing, unexpected)
    return ref.eval()


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_logits_match_transformers_with_padding_on_both_sides(family, tiny_model):
    lm = tiny_model(family)
    ref = reference_model(lm)
    n = 23
    ids = torch.randint(0, lm.config.d_vocab, (2, n), generator=torch.Generator().manual_seed(1))
    valid = torch.ones(2, n, dtype=torch.bool)
    valid[0, :5] = False  # row 0 padded on the left, row 1 on the right
    valid[1, -4:] = False
    allowed = valid[:, None, None, :].expand(2, 1, n, n)
    if lm.spec.causal:
        allowed = allowed & torch.ones(n, n, dtype=torch.bool).tril()
    allowed = allowed | ~valid[:, None, :, None]  # padded rows see every key (their outputs are ignored)
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = ref(ids, attention_mask=allowed, position_ids=positions).logits
        ours = lm.model(ids, attention_mask=valid.long())
        if not lm.spec.causal:  # the reference really runs bidirectionally
            causal = ref(ids, attention_mask=allowed & torch.ones(n, n, dtype=torch.bool).tril() | ~valid[:, None, :, None],
                         position_ids=positions).logits
            assert (causal[valid] - expected[valid]).abs().max() > 1e-3
    torch.testing.assert_close(ours[valid], expected[valid], atol=2e-5, rtol=0)


def test_softmax_routing_with_expert_bias_and_shared_expert_by_hand():
    """LLaDA-MoE's options transformers has no model for: the expert bias joins the softmax scores (and so
    the weights), and a shared expert is added beside the routed ones."""
    cfg = DecoderConfig(d_model=16, n_layers=1, n_heads=2, n_kv_heads=2, d_head=8, d_mlp=32, d_vocab=10,
                        max_seq_len=64, rope_theta=1e4, norm_eps=1e-5, n_experts=4, n_experts_per_tok=2, d_expert=8,
                        d_shared=12, moe_layers=(0,), router_bias=True)
    moe = MoEMLP(cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in moe.parameters():
            param.copy_(torch.randn(param.shape) * 0.3)
        x = torch.randn(2, 5, 16)
        expected = torch.zeros(2, 5, 16)
        for b in range(2):
            for t in range(5):
                biased = (x[b, t] @ moe.gate.weight.T).softmax(-1) + moe.gate.expert_bias
                weights, chosen = biased.topk(2)
                for weight, expert in zip(weights, chosen):
                    e = moe.experts[int(expert)]
                    expected[b, t] += weight * e.down_proj(torch.nn.functional.silu(e.gate_proj(x[b, t])) * e.up_proj(x[b, t]))
                s = moe.shared_expert
                expected[b, t] += s.down_proj(torch.nn.functional.silu(s.gate_proj(x[b, t])) * s.up_proj(x[b, t]))
        torch.testing.assert_close(moe(x), expected, atol=1e-5, rtol=0)


def test_moe_hooks_shapes_and_a_zero_weight_removes_the_expert(tiny_model):
    lm = tiny_model("llada2")  # layer 1: 8 experts, top 2, one shared expert
    cfg, model = lm.config, lm.model
    ids = torch.randint(0, 200, (2, 9), generator=torch.Generator().manual_seed(5))
    names = [hook_name(kind, 1) for kind in ("router_logits", "topk_indices", "topk_weights", "expert_out", "shared_out")]
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids, names_filter=lambda name: name in names)
        plain = model(ids)
        torch.testing.assert_close(logits, plain, atol=0, rtol=0)  # hooks change nothing
        router, chosen, weights, expert_out, shared = (cache[name] for name in names)
        assert router.shape == (2, 9, cfg.n_experts) and router.dtype == torch.float32
        assert chosen.shape == weights.shape == (2, 9, 2) and chosen.dtype == torch.int64
        assert expert_out.shape == (2, 9, 2, cfg.d_model) and shared.shape == (2, 9, cfg.d_model)
        # the weights are the normalised sigmoid scores times the routed scaling factor
        scores = router.sigmoid().gather(-1, chosen)
        torch.testing.assert_close(weights, scores / scores.sum(-1, keepdim=True) * 2.5)
        mlp_out = model.run_with_cache(ids, names_filter=lambda n: n == "blocks.1.hook_mlp_out")[1]["blocks.1.hook_mlp_out"]
        torch.testing.assert_close(mlp_out, (weights[..., None] * expert_out).sum(2) + shared, atol=1e-6, rtol=0)

        def drop_first(tensor, hook):
            tensor = tensor.clone()
            tensor[..., 0] = 0
            return tensor

        with model.hooks(fwd_hooks=[(names[2], drop_first)]):
            ablated = model.run_with_cache(ids, names_filter=lambda n: n == "blocks.1.hook_mlp_out")[1]
        ablated = ablated["blocks.1.hook_mlp_out"]
        torch.testing.assert_close(mlp_out - ablated, weights[..., :1, None].mul(expert_out[..., :1, :]).sum(2),
                                   atol=1e-6, rtol=0)
        patched = model.run_with_hooks(ids, fwd_hooks=[(names[3], lambda t, hook: torch.zeros_like(t))])
        assert (patched - plain).abs().max() > 1e-4  # each expert's output is patchable


def copy_checkpoint(source, target):
    target.mkdir()
    for file in source.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


def test_unknown_routing_fields_and_missing_experts_are_one_line_errors(tiny_checkpoint, tmp_path):
    odd = copy_checkpoint(tiny_checkpoint("llada2"), tmp_path / "odd")
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "moe_router_topk_scaling": 3.0}))
    result = run_cli("model", "info", odd)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "routing field(s) moe_router_topk_scaling" in result.stderr
    (odd / "config.json").write_text(json.dumps({**config, "n_group": 3}))  # 8 experts in 3 groups
    result = run_cli("model", "info", odd)
    assert result.returncode == 2 and "routing that cannot work" in result.stderr

    gone = copy_checkpoint(tiny_checkpoint("lladamoe"), tmp_path / "gone")
    tensors = load_file(str(gone / "model.safetensors"))
    del tensors["model.layers.1.mlp.experts.3.up_proj.weight"]
    save_file(tensors, str(gone / "model.safetensors"))
    result = run_cli("record", "--model", gone, "--n", "1", "--out", tmp_path / "x.h5")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "missing 1 tensor(s), e.g. model.layers.1.mlp.experts.3.up_proj.weight" in result.stderr
    assert not (tmp_path / "x.h5").exists()


def test_llada2_checkpoint_fuses_q_k_v_and_keeps_the_real_names(tiny_checkpoint, tiny_model):
    path, lm = tiny_checkpoint("llada2"), tiny_model("llada2")
    tensors = load_file(str(path / "model.safetensors"))
    fused = tensors["model.layers.0.attention.query_key_value.weight"]
    attn = lm.model.blocks[0].attn
    torch.testing.assert_close(fused, torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
    for name in ("model.word_embeddings.weight", "model.layers.0.attention.dense.weight",
                 "model.layers.0.attention.query_layernorm.weight", "model.layers.0.mlp.gate_proj.weight",
                 "model.layers.1.mlp.gate.weight", "model.layers.1.mlp.gate.expert_bias",
                 "model.layers.1.mlp.experts.7.down_proj.weight", "model.layers.1.mlp.shared_experts.up_proj.weight"):
        assert name in tensors, name
    config = json.loads((path / "config.json").read_text())
    assert (config["first_k_dense_replace"], config["num_shared_experts"], config["n_group"]) == (1, 1, 4)
    info = json.loads(run_cli("model", "info", path, "--json").stdout)
    assert info["attention"] == "block" and info["moe"]["moe_layers"] == [1] and info["moe"]["router"] == "sigmoid_grouped"


SMALL = ("--task", "adjective+largest", "--n-relevant", "2", "--n-distractor", "3", "--n", "1", "--no-progress")


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_commands_run_unchanged_on_every_new_family(family, tiny_checkpoint, tmp_path):
    model = tiny_checkpoint(family)
    causal = family == "qwen3"
    masks = () if causal else ("--masks", "1,50")
    recorded = run_cli("record", "--model", model, *SMALL, *masks, "--record", "attention", "--out", tmp_path / "r.h5")
    assert recorded.returncode == 0, recorded.stderr
    with h5py.File(tmp_path / "r.h5", "r") as store:
        assert store.attrs["family"] == family
    if causal:
        refused = run_cli("generate", "--model", model, "--prompt", " big", "--gen-length", "2")
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
        return
    heads = run_cli("heads", tmp_path / "r.h5", "--json")
    assert heads.returncode == 0, heads.stderr
    assert {(row["layer"], row["head"]) for row in json.loads(heads.stdout)} == {(l, h) for l in range(2) for h in range(4)}
    patched = run_cli("patch", "--model", model, *SMALL, "--corrupt-masks", "3", "--last-k", "1", "--out", tmp_path / "p.h5")
    assert patched.returncode == 0, patched.stderr
    ablated = run_cli("ablate", "--model", model, *SMALL, "--heads", "0.1", "--masks", "1,3", "--out", tmp_path / "a.h5")
    assert ablated.returncode == 0, ablated.stderr
    blocks = ("--block-length", "4") if family == "llada2" else ()  # its own sampler, llada2_block: blocks of 32
    generated = run_cli("generate", "--model", model, "--prompt", " big", "--gen-length", "4", *blocks)
    assert generated.returncode == 0 and generated.stdout.strip(), generated.stderr


def test_dream_coder_names_its_own_bos_and_loads_as_dream(tiny_checkpoint, tmp_path):
    """Dream-Coder-v0's config.json gives bos_token_id 151665 (<|beginoftext|>), Dream-v0's 151643
    (<|endoftext|>); everything else is Dream's (docs/models.md)."""
    from mdlm_interp import load_model

    coder = copy_checkpoint(tiny_checkpoint("dream"), tmp_path / "coder")
    tokenizer_config = json.loads((coder / "tokenizer_config.json").read_text())
    bos_id = max(int(i) for i in tokenizer_config["added_tokens_decoder"]) + 1
    tokenizer_config["added_tokens_decoder"][str(bos_id)] = {
        "content": "<|beginoftext|>", "special": True, "lstrip": False, "rstrip": False, "normalized": False}
    (coder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    config = json.loads((coder / "config.json").read_text())
    (coder / "config.json").write_text(json.dumps({**config, "bos_token_id": bos_id}))
    lm = load_model(coder)
    assert lm.spec.family == "dream" and lm.spec.special_tokens["bos"] == "<|beginoftext|>"
    assert lm.tokenizer.bos_token_id == bos_id and lm.spec.prediction_offset == -1
    (coder / "config.json").write_text(json.dumps({**config, "bos_token_id": lm.mask_token_id}))
    result = run_cli("model", "info", coder)
    assert result.returncode == 2 and "bos_token_id" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_sharded_bfloat16_llada2_checkpoint_loads_strictly(tiny_model, tmp_path):
    from mdlm_interp import load_model
    from mdlm_interp.models.random_checkpoint import write_random_checkpoint
    from mdlm_interp.tasks import tokenizer_corpus

    path = write_random_checkpoint("llada2", tmp_path / "bf16", tokenizer_corpus(), dtype=torch.bfloat16,
                                   max_shard_bytes=200_000)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    lm = load_model(path, dtype="bfloat16")
    reference = tiny_model("llada2").model  # the same seed in float32
    for name, param in lm.model.named_parameters():
        assert param.dtype == torch.bfloat16
        torch.testing.assert_close(param.float(), reference.get_parameter(name).bfloat16().float(), atol=0, rtol=0)
    ids = torch.randint(0, 200, (1, 12), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.isfinite(lm.model(ids).float()).all()
