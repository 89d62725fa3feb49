"""LLaDA2's block sampler against a step-by-step reference written here from the official sampler's description
(LLaDA2MoeModelLM.generate / dllm's LLaDA2Sampler, read as facts), padding, block attention and its checks."""

import pytest
import torch

from mdlm_interp.decoding import LLaDA2SamplerConfig, generate_text, llada2_generate
from mdlm_interp.errors import UsageError
from mdlm_interp.models.hook_names import hook_name

PROMPT = " happy dog, 7, 3\nOutput:"


# ---- the official LLaDA2 sampler, step by step (equal-length prompts, no padding) ----

def block_diffusion_scores(blocks: int, block_length: int):
    """A hook adding the official additive block mask (log of a lower-triangular block matrix) to the scores."""
    allowed = torch.ones(blocks, blocks).tril().repeat_interleave(block_length, 0).repeat_interleave(block_length, 1)

    def hook(scores, hook):
        n = scores.shape[-1]
        return scores + allowed[:n, :n].log()

    return hook


def reference_llada2(model, prompt, mask_id, gen_length, block_length, steps, threshold=0.95, temperature=0.0,
                     top_k=None, minimal_topk=1, generator=None):
    """Return (the decoded ids [batch, prompt + gen_length], [(revealed positions, proposals) per step])."""
    steps = min(steps, gen_length // minimal_topk)
    batch, prompt_length = prompt.shape
    num_blocks = (prompt_length + gen_length + block_length - 1) // block_length
    x = torch.full((batch, num_blocks * block_length), mask_id)
    x[:, :prompt_length] = prompt
    schedule = [block_length // steps + (i < block_length % steps) for i in range(steps)]
    hook = block_diffusion_scores(num_blocks, block_length)
    hooks = [(hook_name("attn_scores", layer), hook) for layer in range(model.cfg.n_layers)]
    history = []
    for num_block in range(prompt_length // block_length, num_blocks):
        end = (num_block + 1) * block_length
        for step in range(steps):
            active = x[:, end - block_length:end] == mask_id
            if not active.any():
                break
            with torch.no_grad():
                logits = model.run_with_hooks(x[:, :end], fwd_hooks=hooks)[:, -block_length:]
            if temperature > 0:
                logits = logits / temperature
            if top_k is not None:
                kth = torch.topk(logits, top_k).values[..., -1:]
                logits = torch.where(logits < kth, float("-inf"), logits)
            probs = logits.softmax(-1)
            if temperature > 0:
                tokens = torch.multinomial(probs.view(-1, probs.shape[-1]), 1, generator=generator).view(batch, -1)
            else:
                tokens = probs.argmax(-1)
            token_prob = probs.gather(-1, tokens[..., None])[..., 0]
            transfer = torch.zeros_like(active)
            for b in range(batch):
                confidence = torch.where(active[b], token_prob[b], float("-inf"))
                sure = (confidence > threshold) & active[b]
                if sure.sum() >= schedule[step]:
                    transfer[b] = sure
                elif schedule[step] > 0:
                    transfer[b, torch.topk(confidence, min(schedule[step], int(active[b].sum()))).indices] = True
            window = x[:, end - block_length:end]
            window[transfer] = tokens[transfer]
            revealed = torch.zeros_like(x, dtype=torch.bool)
            revealed[:, end - block_length:end] = transfer
            history.append((revealed[:, :prompt_length + gen_length], x[:, :prompt_length + gen_length].clone()))
    return x[:, :prompt_length + gen_length], history


@pytest.fixture(scope="module")
def llada(tiny_model):
    return tiny_model("llada")


def encode(lm, text):
    return torch.tensor([lm.tokenizer.encode(text, add_special_tokens=False)])


@pytest.mark.parametrize("gen_length, block_length, steps, threshold", [
    (8, 4, 4, 0.95),  # one token per step; the prompt's last block already holds masks
    (8, 4, 2, 0.95),  # two per step
    (6, 3, 3, 0.0),   # every mask is sure: a block in one step; the 9 prompt tokens fill their blocks
    (8, 8, 3, 0.5),   # an uneven schedule (3, 3, 2)
])
def test_block_sampler_matches_the_official_steps(llada, gen_length, block_length, steps, threshold):
    prompt = encode(llada, PROMPT)
    expected, history = reference_llada2(llada.model, prompt, llada.mask_token_id, gen_length, block_length, steps,
                                        threshold)
    seen = []
    out = llada2_generate(llada, prompt, gen_length=gen_length, block_length=block_length, steps_per_block=steps,
                          threshold=threshold, on_step=lambda step, state: seen.append(state))
    assert torch.equal(out, expected)
    assert len(seen) == len(history)
    for state, (revealed, ids) in zip(seen, history):
        assert torch.equal(state.unmasked, revealed)
        assert torch.equal(state.ids, ids)
    assert [state.step for state in seen] == list(range(len(seen)))


def test_block_sampler_matches_the_official_steps_on_a_tiny_llada2(tiny_model):
    lm = tiny_model("llada2")
    assert lm.spec.sampler == "llada2_block"
    prompt = encode(lm, PROMPT)
    expected, _ = reference_llada2(lm.model, prompt, lm.mask_token_id, 8, 4, 2, threshold=0.2)
    assert torch.equal(generate_text(lm, [PROMPT], gen_length=8, block_length=4, steps_per_block=2,
                                     threshold=0.2).ids, expected)


def test_block_sampler_draws_as_the_official_one(llada):
    prompt = torch.cat([encode(llada, PROMPT)] * 2)  # a batch of equal prompts: independent draws per row
    expected, _ = reference_llada2(llada.model, prompt, llada.mask_token_id, 8, 4, 4, temperature=1.0, top_k=5,
                                  generator=torch.Generator().manual_seed(3))
    out = llada2_generate(llada, prompt, gen_length=8, block_length=4, steps_per_block=4, temperature=1.0, top_k=5,
                          generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, expected)
    assert not torch.equal(out[0], out[1])


def test_padding_on_either_side_decodes_each_prompt_as_alone(llada):
    texts = [PROMPT, " run\nOutput:"]
    alone = [llada2_generate(llada, encode(llada, text), gen_length=8, block_length=4) for text in texts]
    generation = generate_text(llada, texts, sampler="llada2_block", gen_length=8, block_length=4)
    for row, single in enumerate(alone):
        assert torch.equal(generation.ids[row, -8:], single[0, -8:])
    right = torch.full((2, alone[0].shape[1] - 8), 0)
    mask = torch.zeros_like(right)
    for row, single in enumerate(alone):
        n = single.shape[1] - 8
        right[row, :n], mask[row, :n] = single[0, :n], 1
    out = llada2_generate(llada, right, attention_mask=mask, gen_length=8, block_length=4)
    for row, single in enumerate(alone):
        assert torch.equal(out[row, -8:], single[0, -8:])


def test_block_attention_is_bidirectional_inside_a_block_and_causal_across(llada):
    ids = encode(llada, PROMPT)[:, :8]
    model = llada.model
    with model.block_attention(4):
        base = model(ids)
        changed = ids.clone()
        changed[0, 5] = (ids[0, 5] + 1) % model.cfg.d_vocab  # a token of the second block
        after = model(changed)
        left = model(torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1),
                     attention_mask=torch.tensor([[0] * 3 + [1] * 8]))[:, 3:]
    assert torch.allclose(after[0, :4], base[0, :4], atol=1e-6)  # the first block does not see the second
    assert not torch.allclose(after[0, 4], base[0, 4])  # its own block does, before the changed token too
    assert torch.allclose(left, base, atol=1e-5)  # blocks count valid positions: padding moves nothing
    assert model.cfg.block_length is None  # restored on exit
    assert not torch.allclose(model(ids)[0, :4], base[0, :4])  # full attention sees the second block


def test_config_checks_and_caps():
    assert LLaDA2SamplerConfig(gen_length=8, block_length=4).steps_per_block == 4
    assert LLaDA2SamplerConfig(gen_length=8, block_length=4, steps_per_block=6, minimal_topk=2).steps_per_block == 4
    with pytest.raises(UsageError, match="block length 3 must divide the generation length 8"):
        LLaDA2SamplerConfig(gen_length=8, block_length=3)
    with pytest.raises(UsageError, match=r"--threshold must be a number in \[0, 1\]"):
        LLaDA2SamplerConfig(threshold=1.5)


def test_generate_command_uses_the_block_sampler_and_refuses_a_bad_block(tmp_path, tiny_checkpoint):
    from cli_run import run_cli

    result = run_cli("generate", "--model", tiny_checkpoint("llada"), "--sampler", "llada2_block", "--prompt", PROMPT,
                     "--gen-length", "6", "--block-length", "4")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == ("mdlm-interp: error: block length 4 must divide the generation "
                                                      "length 6")
    result = run_cli("generate", "--model", tiny_checkpoint("llada"), "--sampler", "llada2_block", "--prompt", PROMPT,
                     "--gen-length", "4", "--block-length", "2", "--steps-per-block", "1", "--threshold", "0",
                     "--keep-special")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
