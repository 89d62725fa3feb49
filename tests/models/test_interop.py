"""TransformerLens and nnsight on the hooked decoder, each checked against an independent computation.

The independent side never goes through the utility under test: RMSNorm, unembedding, head outputs
and patched forward passes are written out here from the parameters (``manual_forward``).
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from mdlm_interp import load_model
from mdlm_interp.errors import UsageError
from mdlm_interp.models.transformer import HookedDecoder, rotary_tables
from mdlm_interp.tasks import PromptConfig, sample_prompt, single_token_words, tokenize_prompt

ORGANISMS = ["organism-llada", "organism-dream", "organism-llama"]
_loaded = {}


def organism(name):
    if name not in _loaded:
        _loaded[name] = load_model(name)
    return _loaded[name]


def patching_pair(lm):
    """Return (clean ids, corrupted ids, read position, clean answer id, corrupted answer id or None).

    Diffusion organisms: the filler control (clean) against 30 masks (corrupted), equal lengths.
    The causal organism: the same examples with another query (a counterfactual answer).
    """
    words = single_token_words(lm.tokenizer)
    prompt = sample_prompt(PromptConfig("adjective+largest", 2, 4), seed=0, words=words)
    if lm.spec.causal:
        other = dataclasses.replace(prompt, query=sample_prompt(prompt.config, seed=1, words=words).query)
        clean, corrupt = (tokenize_prompt(p, lm.tokenizer, causal=True, masks=0) for p in (prompt, other))
        wrong = corrupt.answer_id
    else:
        clean, corrupt = (tokenize_prompt(prompt, lm.tokenizer, mask_token_id=lm.mask_token_id, masks=30, filler=f)
                          for f in (" .", None))
        wrong = None
    assert len(clean.input_ids) == len(corrupt.input_ids)
    read = clean.answer_position + lm.spec.prediction_offset
    return torch.tensor([clean.input_ids]), torch.tensor([corrupt.input_ids]), read, clean.answer_id, wrong


def rms(x, eps):
    """sqrt(mean(x^2) + eps) over the last axis, keeping it: [..., 1]."""
    return (x.double().pow(2).mean(-1, keepdim=True) + eps).sqrt()


def manual_forward(model, ids, edit=None):
    """Run ``model`` block by block without hooks; ``edit(layer, resid)`` may replace the input of
    block ``layer`` (``layer == n_layers``: the final residual stream, before ``ln_final``).

    Returns (logits, [the input of every block]).
    """
    cfg = model.cfg
    cos, sin = rotary_tables(torch.arange(ids.shape[1]).expand(ids.shape[0], -1), cfg.d_head, cfg.rope_theta)
    x = F.embedding(ids, model.embed.weight)
    inputs = []
    for layer in range(cfg.n_layers + 1):
        if edit is not None:
            x = edit(layer, x)
        if layer == cfg.n_layers:
            return model.unembed(model.ln_final(x)), inputs
        inputs.append(x)
        x = model.blocks[layer](x, cos, sin, None)


# ---------------------------------------------------------------- config, views, hooks (tiny models)


def test_config_has_transformer_lens_names_and_tracks_the_device(tiny_model):
    lm = tiny_model("llama")
    cfg = lm.model.cfg
    assert lm.config is cfg
    assert (cfg.n_ctx, cfg.d_vocab_out, cfg.n_key_value_heads) == (cfg.max_seq_len, cfg.d_vocab, cfg.n_kv_heads)
    assert cfg.n_key_value_heads < cfg.n_heads  # the tiny preset has grouped-query attention
    assert (cfg.normalization_type, cfg.attn_only, cfg.positional_embedding_type) == ("RMS", False, "rotary")
    assert cfg.attention_dir == "causal" and tiny_model("llada").config.attention_dir == "bidirectional"
    assert cfg.device == "cpu" == str(lm.model.W_E.device)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d_model = 3
    fresh = HookedDecoder(cfg)
    assert fresh.cfg is not cfg and fresh.cfg == cfg
    fresh.cfg.explicit_attention = True
    assert not cfg.explicit_attention  # settings are per model
    fresh.to("meta")
    assert fresh.cfg.device == "meta" and cfg.device == "cpu"


@pytest.mark.parametrize("family", ["llama", "dream"])
def test_weight_views_compute_what_the_projections_compute_and_share_their_storage(family, tiny_model):
    lm = tiny_model(family)
    cfg, attn, mlp = lm.config, lm.model.blocks[1].attn, lm.model.blocks[1].mlp
    group = cfg.n_heads // cfg.n_kv_heads
    x = torch.randn(5, cfg.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        q = attn.q_proj(x).view(5, cfg.n_heads, cfg.d_head)
        k = attn.k_proj(x).view(5, cfg.n_kv_heads, cfg.d_head)
        v = attn.v_proj(x).view(5, cfg.n_kv_heads, cfg.d_head)
        torch.testing.assert_close(torch.einsum("pm,hmd->phd", x, attn.W_Q) + attn.b_Q, q)
        torch.testing.assert_close(torch.einsum("pm,hmd->phd", x, attn._W_K) + attn._b_K, k)
        torch.testing.assert_close(torch.einsum("pm,hmd->phd", x, attn._W_V) + attn._b_V, v)
        for head in range(cfg.n_heads):  # query head h reads key/value head h // group
            torch.testing.assert_close(torch.einsum("pm,md->pd", x, attn.W_K[head]) + attn.b_K[head], k[:, head // group])
            torch.testing.assert_close(torch.einsum("pm,md->pd", x, attn.W_V[head]) + attn.b_V[head], v[:, head // group])
        z = torch.randn(5, cfg.n_heads, cfg.d_head, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(torch.einsum("phd,hdm->pm", z, attn.W_O), attn.o_proj(z.reshape(5, -1)))
        torch.testing.assert_close(x @ lm.model.W_U, lm.model.unembed(x))
        torch.testing.assert_close(F.silu(x @ mlp.W_gate) * (x @ mlp.W_in) @ mlp.W_out, mlp(x))
        assert torch.equal(lm.model.b_U, torch.zeros(cfg.d_vocab))
    assert lm.model.W_E is lm.model.embed.weight
    shared = [(attn.W_Q, attn.q_proj.weight), (attn._W_K, attn.k_proj.weight), (attn._W_V, attn.v_proj.weight),
              (attn.W_O, attn.o_proj.weight), (lm.model.W_U, lm.model.unembed.weight), (mlp.W_in, mlp.up_proj.weight),
              (mlp.W_gate, mlp.gate_proj.weight), (mlp.W_out, mlp.down_proj.weight)]
    if cfg.qkv_bias:
        shared += [(attn.b_Q, attn.q_proj.bias), (attn._b_K, attn.k_proj.bias)]
    else:
        assert not attn.b_Q.any() and attn.b_K.shape == (cfg.n_heads, cfg.d_head)
    for view, parameter in shared:
        assert view.data_ptr() == parameter.data_ptr()


def test_editing_a_weight_view_edits_the_model(tiny_checkpoint):
    lm = load_model(tiny_checkpoint("llada"))
    ids = torch.randint(0, 200, (1, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = lm.model(ids)
        lm.model.blocks[0].attn.W_O[2] = 0
        after = lm.model(ids)
        out = lm.model.blocks[0].attn.o_proj.weight
    d = lm.config.d_head
    assert not out[:, 2 * d:3 * d].any() and out[:, :2 * d].any()
    assert (before - after).abs().max() > 1e-4


def test_mlp_and_norm_hooks_hold_what_transformer_lens_names_them(tiny_model):
    lm = tiny_model("dream")
    mlp, ln2 = lm.model.blocks[1].mlp, lm.model.blocks[1].ln2
    ids = torch.randint(0, 200, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain = lm.model(ids)
        logits, cache = lm.model.run_with_cache(ids)
        normalized = cache["blocks.1.ln2.hook_normalized"]
        torch.testing.assert_close(cache["blocks.1.mlp.hook_pre"], normalized @ mlp.gate_proj.weight.T)
        torch.testing.assert_close(cache["blocks.1.mlp.hook_pre_linear"], normalized @ mlp.up_proj.weight.T)
        post = cache["post", 1]
        torch.testing.assert_close(post, F.silu(cache["pre", 1]) * cache["blocks.1.mlp.hook_pre_linear"])
        torch.testing.assert_close(cache["mlp_out", 1], post @ mlp.down_proj.weight.T)
        resid_mid = cache["resid_mid", 1]
        torch.testing.assert_close(cache["blocks.1.ln2.hook_scale"], rms(resid_mid, ln2.eps).float())
        torch.testing.assert_close(cache["scale"], rms(cache["resid_post", 1], lm.config.norm_eps).float())
        # reading the new hooks changes no number; a changed scale is used, returned or edited in place
        read_only, _ = lm.model.run_with_cache(ids, names_filter=lambda name: "scale" in name or ".mlp." in name)
        assert torch.equal(read_only, plain)
        for edit in (lambda scale, hook: 2 * scale, lambda scale, hook: scale.mul_(2)):  # new tensor, in place
            seen = {}
            lm.model.run_with_hooks(ids, fwd_hooks=[
                ("blocks.1.ln2.hook_scale", edit),
                ("blocks.1.ln2.hook_normalized", lambda x, hook: seen.setdefault("x", x))])
            torch.testing.assert_close(seen["x"], normalized / 2)


def test_head_results_are_opt_in_and_sum_to_the_attention_output(tiny_model):
    lm = tiny_model("llama")
    model, cfg = lm.model, lm.config
    ids = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        plain, cache = model.run_with_cache(ids)
        assert "blocks.0.attn.hook_result" not in cache.keys()
        model.set_use_attn_result(True)
        try:
            logits, with_result = model.run_with_cache(ids)
            zeroed = model.run_with_hooks(ids, fwd_hooks=[("blocks.0.attn.hook_result", zero_head(1))])
        finally:
            model.set_use_attn_result(False)
        z_zeroed = model.run_with_hooks(ids, fwd_hooks=[("blocks.0.attn.hook_z", zero_head(1))])
    result = with_result["result", 0]
    assert result.shape == (2, 12, cfg.n_heads, cfg.d_model)
    z, w = cache["z", 0], model.blocks[0].attn.o_proj.weight
    for head in range(cfg.n_heads):
        torch.testing.assert_close(result[:, :, head], z[:, :, head] @ w[:, head * cfg.d_head:(head + 1) * cfg.d_head].T)
    torch.testing.assert_close(result.sum(2), cache["attn_out", 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(zeroed, z_zeroed, atol=1e-5, rtol=0)
    assert (zeroed - plain).abs().max() > 1e-3


def zero_head(head):
    def hook(activation, hook):
        activation = activation.clone()
        activation[:, :, head] = 0
        return activation
    return hook


def test_explicit_attention_setting_skips_the_fused_kernel_and_keeps_the_logits(tiny_model, monkeypatch):
    lm = tiny_model("llada")
    ids = torch.randint(0, 200, (1, 9), generator=torch.Generator().manual_seed(5))
    calls = []
    fused = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or fused(*a, **k))
    with torch.no_grad():
        fast = lm.model(ids)
        assert len(calls) == lm.config.n_layers  # the fast path is the default
        with lm.model.explicit_attention():
            explicit = lm.model(ids)
            assert lm.config.explicit_attention
        assert len(calls) == lm.config.n_layers and not lm.config.explicit_attention
        lm.model(ids)
    assert len(calls) == 2 * lm.config.n_layers
    torch.testing.assert_close(explicit, fast, atol=1e-5, rtol=0)


def test_tokens_and_strings(tiny_model):
    llada, dream = organism("organism-llada"), organism("organism-dream")
    tokenizer = llada.tokenizer
    tokens = llada.model.to_tokens("Input: merry")
    assert tokens.tolist() == [[tokenizer.bos_token_id] + tokenizer.encode("Input: merry", add_special_tokens=False)]
    assert tokens[0, 0] == tokenizer.convert_tokens_to_ids("<|startoftext|>")
    assert dream.model.to_tokens("Input: merry").tolist() == [dream.tokenizer.encode("Input: merry", add_special_tokens=False)]
    batch = llada.model.to_tokens(["merry bell", "bell merry"], prepend_bos=False)
    assert batch.shape == (2, 2) and batch[0, 0] == batch[1, 1]
    assert llada.model.to_string(batch) == [tokenizer.decode(row) for row in batch.tolist()]
    assert llada.model.to_str_tokens(batch[0]) == ["merry", "bell"]
    assert llada.model.to_single_token(" merry") == tokenizer.convert_tokens_to_ids("merry")
    with pytest.raises(UsageError):
        llada.model.to_single_token("merry bell")
    with pytest.raises(UsageError):
        llada.model.to_tokens(["merry", "merry bell"])
    with pytest.raises(UsageError):
        tiny_model("qwen2").model.to_tokens("hello", prepend_bos=True)  # Qwen2 has no BOS
    ids = torch.tensor([[3, 4, 5], [6, 7, 8]])
    directions = llada.model.tokens_to_residual_directions(ids)
    assert directions.shape == (2, 3, llada.config.d_model)
    torch.testing.assert_close(directions[1, 2], llada.model.unembed.weight[8] * llada.model.ln_final.weight)
    merry = tokenizer.convert_tokens_to_ids("merry")
    assert torch.equal(llada.model.tokens_to_residual_directions(" merry"),
                       llada.model.tokens_to_residual_directions(torch.tensor(merry)))


def test_run_with_cache_returns_an_activation_cache(tiny_model):
    from transformer_lens import ActivationCache

    lm = tiny_model("dream")
    ids = torch.randint(0, 200, (1, 6), generator=torch.Generator().manual_seed(6))
    _, cache = lm.model.run_with_cache(ids)
    _, plain = lm.model.run_with_cache(ids, return_cache_object=False)
    _, single = lm.model.run_with_cache(ids, remove_batch_dim=True)
    assert isinstance(cache, ActivationCache) and type(plain) is dict and cache.keys() == plain.keys()
    assert torch.equal(cache["resid_pre", -1], plain["blocks.1.hook_resid_pre"])
    assert torch.equal(single["pattern", 0], plain["blocks.0.attn.hook_pattern"][0])


# ---------------------------------------------------------------- ActivationCache on the organisms


@pytest.mark.parametrize("name", ORGANISMS)
def test_accumulated_resid_with_ln_is_the_logit_lens(name):
    lm = organism(name)
    model, cfg = lm.model, lm.config
    clean, _, read, answer, _ = patching_pair(lm)
    with torch.no_grad():
        logits, cache = model.run_with_cache(clean)
        stack, labels = cache.accumulated_resid(apply_ln=True, return_labels=True)
        lens = stack[:, 0, read] @ model.W_U
        _, inputs = manual_forward(model, clean)
    assert labels == [f"{l}_pre" for l in range(cfg.n_layers)] + ["final_post"]
    streams = [x[0, read] for x in inputs] + [cache["resid_post", -1][0, read]]
    expected = torch.stack([(s / rms(s, cfg.norm_eps)).float() * model.ln_final.weight for s in streams]) @ model.W_U
    torch.testing.assert_close(lens, expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(lens[-1], logits[0, read])
    readout = cache.logit_lens(return_type="logits", positions=read)  # TransformerLens' one-call logit lens
    assert readout.labels == labels
    torch.testing.assert_close(readout.values[:, 0], expected.float(), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name", ORGANISMS)
def test_decompose_resid_and_logit_attrs_add_up_to_the_answer_logit(name):
    lm = organism(name)
    model, cfg = lm.model, lm.config
    clean, _, read, answer, _ = patching_pair(lm)
    with torch.no_grad():
        logits, cache = model.run_with_cache(clean)
        parts, labels = cache.decompose_resid(pos_slice=read, return_labels=True)
        attrs = cache.logit_attrs(parts, torch.tensor([answer]), pos_slice=read)
        rival = logits[0, read].topk(2).indices[1] if logits[0, read].argmax() == answer else logits[0, read].argmax()
        diff = cache.logit_attrs(parts, torch.tensor([answer]), incorrect_tokens=torch.tensor([rival]), pos_slice=read)
    assert labels == ["embed"] + [f"{l}_{kind}_out" for l in range(cfg.n_layers) for kind in ("attn", "mlp")]
    final = cache["resid_post", -1][0, read]
    torch.testing.assert_close(parts.sum(0)[0], final, atol=1e-4, rtol=1e-5)
    # by hand: each part through the final RMSNorm's (shared) scale and weight onto the answer's unembedding row
    direction = (model.ln_final.weight * model.unembed.weight[answer]).double()
    by_hand = (parts[:, 0].double() / rms(final, cfg.norm_eps)) @ direction
    torch.testing.assert_close(attrs[:, 0].double(), by_hand, atol=1e-4, rtol=1e-5)
    # the prediction for the answer token is read where the family reads it (Dream, Llama: one position earlier)
    torch.testing.assert_close(attrs.sum(), logits[0, read, answer], atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(diff.sum(), logits[0, read, answer] - logits[0, read, rival], atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("name", ORGANISMS)
def test_stack_head_results_splits_each_attention_output_by_head(name):
    lm = organism(name)
    model, cfg = lm.model, lm.config
    clean, _, read, answer, _ = patching_pair(lm)
    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
        heads, labels = cache.stack_head_results(return_labels=True, pos_slice=read)
    assert heads.shape == (cfg.n_layers * cfg.n_heads, 1, cfg.d_model)
    assert labels[:cfg.n_heads + 1] == [f"L0H{h}" for h in range(cfg.n_heads)] + ["L1H0"]
    for layer in range(cfg.n_layers):
        z = cache["z", layer][0, read]
        weight = model.blocks[layer].attn.o_proj.weight
        for head in range(cfg.n_heads):
            by_hand = weight[:, head * cfg.d_head:(head + 1) * cfg.d_head] @ z[head]
            torch.testing.assert_close(heads[layer * cfg.n_heads + head, 0], by_hand, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(heads[layer * cfg.n_heads:(layer + 1) * cfg.n_heads, 0].sum(0),
                                   cache["attn_out", layer][0, read], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name", ORGANISMS)
def test_stack_neuron_results_splits_each_mlp_output_by_neuron(name):
    lm = organism(name)
    model, cfg = lm.model, lm.config
    clean, _, read, answer, _ = patching_pair(lm)
    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
        neurons, labels = cache.stack_neuron_results(cfg.n_layers, pos_slice=read, return_labels=True)
        _, inputs = manual_forward(model, clean)
    assert neurons.shape == (cfg.n_layers * cfg.d_mlp, 1, cfg.d_model) and labels[cfg.d_mlp] == "L1N0"
    for layer, block in enumerate(model.blocks):
        x = inputs[layer][0, read]
        x = x + cache["attn_out", layer][0, read]
        h = (x / rms(x, cfg.norm_eps)).float() * block.ln2.weight
        acts = F.silu(block.mlp.gate_proj.weight @ h) * (block.mlp.up_proj.weight @ h)  # [d_mlp]
        by_hand = acts[:, None] * block.mlp.down_proj.weight.T  # [d_mlp, d_model]
        mine = neurons[layer * cfg.d_mlp:(layer + 1) * cfg.d_mlp, 0]
        torch.testing.assert_close(mine, by_hand, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(mine.sum(0), cache["mlp_out", layer][0, read], atol=1e-4, rtol=1e-5)


def test_full_resid_decomposition_adds_heads_neurons_and_embedding_up_to_the_final_stream():
    lm = organism("organism-dream")
    cfg = lm.config
    clean, _, read, _, _ = patching_pair(lm)
    with torch.no_grad():
        _, cache = lm.model.run_with_cache(clean)
        parts, labels = cache.get_full_resid_decomposition(pos_slice=read, return_labels=True)
    n_heads, n_neurons = cfg.n_layers * cfg.n_heads, cfg.n_layers * cfg.d_mlp
    assert parts.shape[0] == n_heads + n_neurons + 2 and labels[-2:] == ["embed", "bias"]
    assert labels[n_heads] == "L0N0" and not parts[-1].any()  # no bias writes to the residual stream
    torch.testing.assert_close(parts.sum(0), cache["resid_post", -1][:, read], atol=1e-4, rtol=1e-5)


# ---------------------------------------------------------------- transformer_lens.patching and nnsight


def metric_for(read, answer, wrong):
    """Clean answer's log-probability (diffusion pair) or logit difference to the counterfactual (causal)."""
    if wrong is None:
        return lambda logits: logits[0, read].log_softmax(-1)[answer]
    return lambda logits: logits[0, read, answer] - logits[0, read, wrong]


@pytest.mark.parametrize("name", ORGANISMS)
def test_patching_the_residual_stream_equals_a_patched_manual_forward(name):
    from transformer_lens import patching

    lm = organism(name)
    model, cfg = lm.model, lm.config
    clean, corrupt, read, answer, wrong = patching_pair(lm)
    metric = metric_for(read, answer, wrong)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        grid = patching.get_act_patch_resid_pre(model, corrupt, clean_cache, metric)
        _, clean_inputs = manual_forward(model, clean)
        n = clean.shape[1]
        positions = sorted(set(range(0, n, 7)) | {read - 1, read, read + 1, n - 1} & set(range(n)))
        rows = torch.arange(len(positions))
        expected = torch.empty(cfg.n_layers, len(positions))
        for layer in range(cfg.n_layers):  # one batched manual forward per layer: row i patches positions[i]
            def patch(l, x, layer=layer):
                if l != layer:
                    return x
                x = x.clone()
                x[rows, positions] = clean_inputs[layer][0, positions]
                return x
            logits, _ = manual_forward(model, corrupt.expand(len(positions), -1), edit=patch)
            expected[layer] = torch.stack([metric(logits[i:i + 1]) for i in rows])
    assert grid.shape == (cfg.n_layers, n)
    torch.testing.assert_close(grid[:, positions], expected, atol=2e-4, rtol=1e-4)
    assert grid.max() - grid.min() > 1e-2  # patching moves the metric somewhere


@pytest.mark.parametrize("name", ORGANISMS + ["tiny-llama"])
def test_patching_head_outputs_equals_moving_their_share_of_the_attention_output(name, tiny_model):
    from transformer_lens import patching

    lm = tiny_model("llama") if name == "tiny-llama" else organism(name)  # the tiny model has grouped-query attention
    model, cfg = lm.model, lm.config
    if name == "tiny-llama":
        clean, corrupt = torch.randint(0, 200, (2, 1, 15), generator=torch.Generator().manual_seed(7))
        read, answer, wrong = 14, 5, 6
    else:
        clean, corrupt, read, answer, wrong = patching_pair(lm)
    metric = metric_for(read, answer, wrong)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        _, corrupt_cache = model.run_with_cache(corrupt)
        grid = patching.get_act_patch_attn_head_out_all_pos(model, corrupt, clean_cache, metric)
        _, corrupt_inputs = manual_forward(model, corrupt)
        expected = torch.empty(cfg.n_layers, cfg.n_heads)
        for layer, block in enumerate(model.blocks):
            for head in range(cfg.n_heads):
                # o_proj is linear: the patched attention output is the corrupted one plus this head's change
                columns = block.attn.o_proj.weight[:, head * cfg.d_head:(head + 1) * cfg.d_head]
                change = (clean_cache["z", layer][:, :, head] - corrupt_cache["z", layer][:, :, head]) @ columns.T

                def patch(l, x, layer=layer, change=change, block=block):
                    if l != layer + 1:
                        return x
                    mid = corrupt_inputs[layer] + corrupt_cache["attn_out", layer] + change
                    return mid + block.mlp(block.ln2(mid))
                expected[layer, head] = metric(manual_forward(model, corrupt, edit=patch)[0])
    torch.testing.assert_close(grid, expected, atol=2e-4, rtol=1e-4)


def test_nnsight_reads_patterns_and_patches_a_head_like_transformer_lens_hooks():
    from nnsight import NNsight

    lm = organism("organism-llada")
    model = lm.model
    clean, corrupt, read, answer, _ = patching_pair(lm)
    traced = NNsight(model)
    with torch.no_grad():
        with model.explicit_attention(), traced.trace(corrupt):
            pattern = traced.blocks[2].attn.hook_pattern.output.save()
        with traced.trace(clean):
            z_clean = traced.blocks[0].attn.hook_z.output.save()
        with traced.trace(corrupt):
            traced.blocks[0].attn.hook_z.output[:, :, 1] = z_clean[:, :, 1]
            patched = traced.output.save()
        with traced.trace(corrupt):  # an in-place edit of the final norm's scale takes effect
            traced.ln_final.hook_scale.output[:] = 2 * traced.ln_final.hook_scale.output
            halved = traced.output.save()
        _, cache = model.run_with_cache(corrupt)
        _, clean_z = model.run_with_cache(clean, names_filter="blocks.0.attn.hook_z")  # the fused path, as in nnsight

        def from_clean(z, hook):
            z[:, :, 1] = clean_z["z", 0][:, :, 1]
            return z
        expected = model.run_with_hooks(corrupt, fwd_hooks=[("blocks.0.attn.hook_z", from_clean)])
    assert not model.cfg.explicit_attention
    torch.testing.assert_close(pattern, cache["pattern", 2])
    assert torch.equal(patched, expected)
    torch.testing.assert_close(halved, model(corrupt) / 2)
    metric = metric_for(read, answer, None)
    assert metric(patched) - metric(model(corrupt)) > 1.0  # head 0.1 matters for this pair
