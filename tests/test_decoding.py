"""Iterative unmasking: LLaDA's and Dream's samplers against step-by-step references written here from the
official samplers' description, the per-step callback and hooks, seeds, and the --decode setting."""

import pytest
import torch

from mdlm_interp.decoding import DecodeConfig, dream_generate, llada_generate, tokens_per_step
from mdlm_interp.errors import UsageError

PROMPTS = [" happy dog, 7, 3\nOutput:", " run\nOutput: cat, 5", " big"]


def prompt_batch(lm, texts, side="left"):
    """Return (ids [2, width], attention mask or None) of the texts, padded on ``side``."""
    encoded = [lm.tokenizer.encode(text, add_special_tokens=False) for text in texts]
    width = max(map(len, encoded))
    pad = lm.tokenizer.convert_tokens_to_ids(lm.spec.special_tokens["pad"])
    ids = torch.full((len(encoded), width), pad)
    valid = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, seq in enumerate(encoded):
        where = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, where] = torch.tensor(seq)
        valid[row, where] = 1
    return ids, (None if bool(valid.all()) else valid)


def equal_length_pair(lm):
    """Two different prompts of the same number of tokens (no padding)."""
    first = lm.tokenizer.encode(PROMPTS[0], add_special_tokens=False)
    second = lm.tokenizer.encode(PROMPTS[1], add_special_tokens=False)
    n = min(len(first), len(second))
    return torch.tensor([first[:n], second[-n:]]), None


# ---- the official LLaDA sampler, step by step (generate.py of ML-GSAI/LLaDA, read as facts) ----

def reference_llada(model, prompt, attention_mask, mask_id, steps, gen_length, block_length, cfg_scale=0.0):
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, :prompt.shape[1]] = prompt
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, torch.ones(prompt.shape[0], gen_length, dtype=torch.long)], 1)
    prompt_index = x != mask_id
    num_blocks = gen_length // block_length
    steps = steps // num_blocks
    for num_block in range(num_blocks):
        start = prompt.shape[1] + num_block * block_length
        block_mask_index = x[:, start:start + block_length] == mask_id
        mask_num = block_mask_index.sum(dim=1, keepdim=True)
        num_transfer_tokens = torch.zeros(x.shape[0], steps, dtype=torch.int64) + mask_num // steps
        for i in range(x.shape[0]):
            num_transfer_tokens[i, :int(mask_num[i] % steps)] += 1
        for i in range(steps):
            mask_index = x == mask_id
            with torch.no_grad():
                if cfg_scale > 0:
                    un_x = x.clone()
                    un_x[prompt_index] = mask_id
                    both_mask = None if attention_mask is None else torch.cat([attention_mask, attention_mask])
                    logits, un_logits = model(torch.cat([x, un_x]), attention_mask=both_mask).chunk(2)
                    logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
                else:
                    logits = model(x, attention_mask=attention_mask)
            x0 = logits.argmax(-1)
            p = torch.softmax(logits.to(torch.float64), dim=-1)
            x0_p = torch.gather(p, -1, x0[..., None])[..., 0]
            x0_p[:, start + block_length:] = float("-inf")
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, float("-inf"))
            transfer_index = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(confidence.shape[0]):
                transfer_index[j, torch.topk(confidence[j], k=int(num_transfer_tokens[j, i])).indices] = True
            x[transfer_index] = x0[transfer_index]
    return x


# ---- the official Dream sampler, step by step (generation_utils.py, _sample, read as facts) ----

def reference_dream(model, prompt, attention_mask, mask_id, steps, max_new_tokens, alg, eps=1e-3):
    x = torch.nn.functional.pad(prompt, (0, max_new_tokens), value=mask_id)
    if attention_mask is not None and torch.any(attention_mask == 0):
        attention_mask = torch.nn.functional.pad(attention_mask, (0, max_new_tokens), value=1)
    else:
        attention_mask = None
    timesteps = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        mask_index = x == mask_id
        with torch.no_grad():
            logits = model(x, attention_mask=attention_mask)
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        mask_logits = logits[mask_index]
        t, s = timesteps[i], timesteps[i + 1]
        probs = torch.softmax(mask_logits, dim=-1)
        confidence, x0 = probs.max(dim=-1)
        if alg == "topk_margin":
            ordered = torch.sort(probs, dim=-1, descending=True).values
            confidence = ordered[:, 0] - ordered[:, 1]
        elif alg == "entropy":
            confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
        num_mask_token = mask_index.sum() / mask_index.shape[0]
        number_transfer_tokens = int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)
        full_confidence = torch.full_like(x, float("-inf"), dtype=logits.dtype)
        full_confidence[mask_index] = confidence
        if number_transfer_tokens > 0:
            transfer_index = torch.topk(full_confidence, number_transfer_tokens).indices
            x_ = torch.zeros_like(x) + mask_id
            x_[mask_index] = x0
            rows = torch.arange(x.size(0))[:, None].expand_as(transfer_index)
            x[rows, transfer_index] = x_[rows, transfer_index]
    return x


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("steps,gen_length,block_length,cfg_scale", [
    (8, 8, 8, 0.0),  # one token per step
    (3, 8, 8, 0.0),  # 3, 3, 2 tokens per step
    (4, 8, 4, 0.0),  # two blocks, semi-autoregressive
    (4, 6, 3, 0.5),  # classifier-free guidance
])
def test_llada_sampler_matches_the_official_steps(tiny_model, padded, steps, gen_length, block_length, cfg_scale):
    lm = tiny_model("llada")
    prompt, mask = prompt_batch(lm, PROMPTS[:2]) if padded else equal_length_pair(lm)
    assert (mask is not None) == padded
    got = llada_generate(lm, prompt, steps=steps, gen_length=gen_length, block_length=block_length,
                         cfg_scale=cfg_scale, attention_mask=mask)
    want = reference_llada(lm.model, prompt, mask, lm.mask_token_id, steps, gen_length, block_length, cfg_scale)
    assert torch.equal(got, want)
    assert not (got == lm.mask_token_id).any()
    assert torch.equal(got[:, :prompt.shape[1]], prompt)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])
def test_dream_sampler_matches_the_official_steps(tiny_model, padded, alg):
    lm = tiny_model("dream")
    prompt, mask = prompt_batch(lm, PROMPTS[:2]) if padded else equal_length_pair(lm)
    got = dream_generate(lm, prompt, steps=5, max_new_tokens=8, alg=alg, attention_mask=mask)
    want = reference_dream(lm.model, prompt, mask, lm.mask_token_id, 5, 8, alg)
    assert torch.equal(got, want)
    assert not (got == lm.mask_token_id).any()


def test_the_three_dream_confidences_decode_in_different_orders(tiny_model):
    """The confidence algorithms are not the same function in disguise: their unmasking orders differ."""
    lm = tiny_model("dream")
    prompt, _ = equal_length_pair(lm)
    orders = {}
    for alg in ("maskgit_plus", "topk_margin", "entropy"):
        order = []
        dream_generate(lm, prompt, steps=8, max_new_tokens=8, alg=alg,
                       on_step=lambda step, state: order.append(state.unmasked.nonzero().tolist()))
        orders[alg] = order
    assert len({str(order) for order in orders.values()}) == 3


def test_padding_side_does_not_change_the_decode(tiny_model):
    lm = tiny_model("llada")
    left = llada_generate(lm, *prompt_batch(lm, PROMPTS[:2], "left")[:1], steps=4, gen_length=4, block_length=4,
                          attention_mask=prompt_batch(lm, PROMPTS[:2], "left")[1])
    ids, mask = prompt_batch(lm, PROMPTS[:2], "right")
    right = llada_generate(lm, ids, steps=4, gen_length=4, block_length=4, attention_mask=mask)
    assert torch.equal(left[:, -4:], right[:, -4:])


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_on_step_sees_every_step_and_hooks_fire_once_per_step(tiny_model, family):
    lm = tiny_model(family)
    prompt, mask = prompt_batch(lm, PROMPTS[:2])
    fired, seen = [], []

    def count(activation, hook):
        fired.append(hook.name)

    def on_step(step, state):
        seen.append(step)
        assert len(fired) == step + 1  # the hook fired once for this step's forward pass, before the callback
        assert state.logits.shape[:2] == state.input_ids.shape
        was_mask = state.input_ids == lm.mask_token_id
        changed = state.ids != state.input_ids
        assert torch.equal(state.unmasked, was_mask & (state.ids != lm.mask_token_id))
        assert torch.equal(changed, state.unmasked)
        assert torch.isfinite(state.confidence[state.unmasked]).all()
        unmasked.append(state.unmasked)

    unmasked = []
    run = dict(llada=lambda: llada_generate(lm, prompt, steps=6, gen_length=6, block_length=3, attention_mask=mask,
                                            on_step=on_step),
               dream=lambda: dream_generate(lm, prompt, steps=6, max_new_tokens=6, alg="entropy",
                                            attention_mask=mask, on_step=on_step))[family]
    with lm.model.hooks(fwd_hooks=[("blocks.1.attn.hook_pattern", count)]):
        out = run()
    assert seen == list(range(6)) and len(fired) == 6
    every = torch.stack(unmasked)  # [step, batch, pos]
    assert (every.sum(0) <= 1).all()  # no position is revealed twice
    assert torch.equal(every.any(0), (torch.arange(out.shape[1]) >= prompt.shape[1]).expand(2, -1))  # all generated
    if family == "llada":  # one token per step, and the second block only after the first
        assert (every.sum(-1) == 1).all()
        first_block = every[:, :, prompt.shape[1]:prompt.shape[1] + 3].any(-1)
        assert first_block[:3].all() and not first_block[3:].any()


def test_same_generator_same_ids_at_temperature_above_zero(tiny_model):
    llada, dream = tiny_model("llada"), tiny_model("dream")
    prompt, mask = prompt_batch(llada, PROMPTS[:2])
    dream_prompt, dream_mask = prompt_batch(dream, PROMPTS[:2])

    def sample(seed):
        g = torch.Generator().manual_seed(seed)
        return [llada_generate(llada, prompt, steps=4, gen_length=8, block_length=4, temperature=1.0,
                               remasking="random", attention_mask=mask, generator=g),
                dream_generate(dream, dream_prompt, steps=4, max_new_tokens=8, alg="origin", temperature=1.0,
                               top_p=0.95, attention_mask=dream_mask, generator=g),
                dream_generate(dream, dream_prompt, steps=4, max_new_tokens=8, alg="maskgit_plus", temperature=0.8,
                               top_k=50, alg_temp=0.5, attention_mask=dream_mask, generator=g)]

    first, again, other = sample(0), sample(0), sample(1)
    for a, b, c in zip(first, again, other):
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
        assert not (a == llada.mask_token_id).any()


def test_tokens_per_step_spreads_the_remainder_over_the_first_steps():
    assert tokens_per_step(torch.tensor([7, 2, 0]), 3).tolist() == [[3, 2, 2], [1, 1, 0], [0, 0, 0]]


def test_sampler_arguments_are_checked(tiny_model):
    lm = tiny_model("llada")
    prompt, _ = equal_length_pair(lm)
    with pytest.raises(UsageError, match="divide"):
        llada_generate(lm, prompt, steps=4, gen_length=6, block_length=4)
    with pytest.raises(UsageError, match="multiple"):
        llada_generate(lm, prompt, steps=3, gen_length=8, block_length=4)
    with pytest.raises(UsageError, match="alg"):
        dream_generate(tiny_model("dream"), prompt, steps=3, max_new_tokens=4, alg="greedy")
    with pytest.raises(UsageError, match="mask token"):
        llada_generate(tiny_model("llama"), prompt, steps=2, gen_length=2, block_length=2)


def test_decode_setting_parses_and_checks():
    assert DecodeConfig.parse("llada") == DecodeConfig("llada")
    config = DecodeConfig.parse("llada:steps=10,block=5,cfg=0.5")
    assert config.settings() == {"sampler": "llada", "steps": 10, "block": 5, "cfg_scale": 0.5}
    assert DecodeConfig.parse("dream:steps=masks,alg=entropy").settings() == \
        {"sampler": "dream", "steps": None, "alg": "entropy", "eps": 1e-3}
    assert DecodeConfig("llada").steps_for(20) == 20
    DecodeConfig.parse("llada:block=5").check([5, 10, 50])
    for bad, named in [("gpt:steps=3", "sampler"), ("llada:alg=entropy", "takes"), ("dream:steps=x", "number"),
                       ("dream:alg=origin", "greedily"), ("llada:steps=0", "at least 1")]:
        with pytest.raises(UsageError, match=named):
            DecodeConfig.parse(bad)
    with pytest.raises(UsageError, match="divide"):
        DecodeConfig.parse("llada:block=4").check([1, 8])
    with pytest.raises(UsageError, match="multiple"):
        DecodeConfig.parse("llada:steps=3,block=2").check([4])
