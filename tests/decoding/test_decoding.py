"""Iterative unmasking: LLaDA's and Dream's samplers against step-by-step references written here from the
official samplers' description, the per-step callback and hooks, seeds, and the --decode setting."""

import numpy as np
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


def hand_confidence(logits_row, alg):
    """Dream's confidence of one position from its (shifted) logits [vocab], computed here from the formulas."""
    probs = logits_row.double().softmax(-1)
    top = probs.sort(descending=True).values
    return {"maskgit_plus": top[0], "topk_margin": top[0] - top[1],
            "entropy": (probs * torch.log(probs + 1e-10)).sum()}[alg].item()


def test_each_dream_confidence_reveals_its_own_best_positions(tiny_model):
    """Every step reveals the masked positions with the best confidence by the algorithm's own formula
    (top-1, top-1 minus top-2, negative entropy of the prediction read one position earlier), and the
    three formulas give three different unmasking orders on the same prompts."""
    lm = tiny_model("dream")
    prompt, _ = equal_length_pair(lm)
    orders = {}
    for alg in ("maskgit_plus", "topk_margin", "entropy"):
        order = []

        def check(step, state, alg=alg, order=order):
            for row in range(state.ids.shape[0]):
                masked = (state.input_ids[row] == lm.mask_token_id).nonzero()[:, 0].tolist()
                mine = {i: hand_confidence(state.logits[row, i - 1], alg) for i in masked}
                revealed = state.unmasked[row].nonzero()[:, 0].tolist()
                for i in masked:
                    assert state.confidence[row, i].item() == pytest.approx(mine[i], rel=1e-4, abs=1e-6)
                best = sorted(masked, key=lambda i: -mine[i])[:len(revealed)]
                assert sorted(mine[i] for i in revealed) == pytest.approx(sorted(mine[i] for i in best), abs=1e-6)
                assert all(state.ids[row, i] == state.logits[row, i - 1].argmax() for i in revealed)
                order.append(revealed)

        dream_generate(lm, prompt, steps=8, max_new_tokens=8, alg=alg, on_step=check)
        orders[alg] = order
        assert sum(map(len, order)) == 2 * 8  # every mask of both rows revealed once
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


# ---- record --decode ----

def task_prompts(lm, conditions):
    """Tokenized task prompts, one per (masks, filler, placement, n_distractor)."""
    from mdlm_interp.tasks import PromptConfig, sample_prompt, single_token_words, tokenize_prompt

    words = single_token_words(lm.tokenizer)
    return [tokenize_prompt(sample_prompt(PromptConfig("adjective+largest", 4, n_distractor, placement), seed=i,
                                          words=words), lm.tokenizer, mask_token_id=lm.mask_token_id, masks=masks,
                            filler=" ." if filler else None)
            for i, (masks, filler, placement, n_distractor) in enumerate(conditions)]


def decode_alone(lm, tp, decode: DecodeConfig) -> dict:
    """Decode one unpadded prompt with the sampler and compute, the slow way, what record keeps per step."""
    ids = torch.tensor(tp.input_ids)[None]
    slot, readout = tp.answer_position, tp.answer_position + lm.spec.prediction_offset
    n = max(tp.spans["masks"][1], slot + 1) - slot
    after = torch.zeros(ids.shape[1], dtype=torch.bool)
    after[tp.spans["masks"][0]:tp.spans["masks"][1]] = True
    trace = {"masks_left": [], "predicted": [], "p_answer": [], "mass": [], "unmask_step": -1, "confidence": None}

    def on_step(step, state):
        still = state.input_ids[0] == lm.mask_token_id
        trace["masks_left"].append(int(still[slot:slot + n].sum()))
        probs = state.logits[0, readout].softmax(-1)
        trace["predicted"].append(int(probs.argmax()) if still[slot] else -1)
        trace["p_answer"].append(float(probs[tp.answer_id]) if still[slot] else float("nan"))
        _, cache = lm.model.run_with_cache(state.input_ids)
        trace["mass"].append(torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][0, :, readout][:, still & after].sum(-1)
                                          for l in range(lm.config.n_layers)]))
        if state.unmasked[0, slot] and trace["unmask_step"] < 0:
            trace["unmask_step"], trace["confidence"] = step, float(state.confidence[0, slot])

    final = decode.run(lm.model, ids, mask_token_id=lm.mask_token_id, prediction_offset=lm.spec.prediction_offset,
                       gen_start=slot, gen_length=n, on_step=on_step)
    trace["decoded"] = int(final[0, slot])
    return trace


@pytest.mark.parametrize("family,decode,from_queries", [("llada", "llada:block=2", True),
                                                        ("dream", "dream:steps=3,alg=topk_margin", True),
                                                        ("dream", "dream:steps=3,alg=entropy", False)])
def test_record_decode_equals_decoding_each_row_alone(tiny_model, monkeypatch, family, decode, from_queries):
    from mdlm_interp.hooks import decode_trace
    from mdlm_interp.record import RecordConfig, record_batch, subject_from

    if not from_queries:  # the attention row from hook_pattern, as for modules without rotated q/k hooks
        monkeypatch.setattr(decode_trace, "supports_query_rows", lambda module: False)
    lm = tiny_model(family)
    conditions = [(4, False, "random", 6), (4, False, "random", 12), (6, False, "query-at:2", 6),
                  (4, True, "random", 6), (2, False, "random", 6)]
    prompts = task_prompts(lm, conditions)
    config = RecordConfig(record=["attention"], masks=[2, 4, 6], top_k=5, n_relevant=4, decode=decode)
    columns = record_batch(subject_from(lm), prompts, config)
    steps = columns["decode/masks_left"].shape[1]
    assert steps == config.decode_steps() == (6 if family == "llada" else 3)
    for row, tp in enumerate(prompts):
        alone = decode_alone(lm, tp, config.decode)
        n = len(alone["masks_left"])
        assert columns["decode/steps"][row] == n
        assert columns["decode/predicted_id"][row] == alone["decoded"]
        assert columns["decode/correct"][row] == (alone["decoded"] == tp.answer_id)
        assert columns["decode/unmask_step"][row] == alone["unmask_step"]
        assert columns["decode/confidence"][row] == pytest.approx(alone["confidence"], rel=1e-5)
        assert columns["decode/masks_left"][row].tolist() == alone["masks_left"] + [-1] * (steps - n)
        assert columns["decode/step_predicted_id"][row].tolist() == alone["predicted"] + [-1] * (steps - n)
        np.testing.assert_allclose(columns["decode/step_p_answer"][row][:n], alone["p_answer"], rtol=1e-5)
        np.testing.assert_allclose(columns["decode/mask_mass_from_answer"][row][:n], torch.stack(alone["mass"]),
                                   atol=1e-6)
        assert np.isnan(columns["decode/mask_mass_from_answer"][row][n:]).all()
        unmasked = alone["unmask_step"]
        predicted = alone["predicted"][:unmasked + 1]
        settle = max([s + 1 for s, p in enumerate(predicted) if p != alone["decoded"]], default=0)
        assert columns["decode/settle_step"][row] == settle <= unmasked
        if not conditions[row][1]:  # step 0 reads the same canvas as the one-step prediction
            assert columns["decode/step_p_answer"][row][0] == pytest.approx(columns["examples/p_answer"][row], rel=1e-5)
            np.testing.assert_allclose(columns["decode/mask_mass_from_answer"][row][0],
                                       columns["attention/mask_mass_from_answer"][row], atol=1e-6)
    assert (columns["decode/masks_left"][:, 0] == [4, 4, 6, 1, 2]).all()


def test_record_command_decodes_and_refuses_what_it_cannot(tmp_path, tiny_checkpoint):
    from mdlm_interp.store import open_store

    from cli_run import run_cli

    common = ["--task", "adjective+largest", "--n", "2", "--n-relevant", "4", "--n-distractor", "6", "--no-progress"]
    out = tmp_path / "decoded.h5"
    result = run_cli("record", "--model", tiny_checkpoint("dream"), "--masks", "1,3", "--record", "lens",
                     "--decode", "dream:alg=entropy", "--out", out, *common)
    assert result.returncode == 0, result.stderr
    assert "decoded acc" in result.stdout
    with open_store(out) as store:
        assert store.groups == ("examples", "tokens", "lens", "decode")
        assert store.dims["steps"] == 3
        assert store.attrs["settings"]["decode"] == {"sampler": "dream", "steps": None, "alg": "entropy", "eps": 1e-3}
        assert store.decode["steps"].tolist() == [1, 1, 3, 3]
        assert store.decode["mask_mass_from_answer"].shape == (4, 3, 2, 4)
    plain = tmp_path / "plain.h5"
    assert run_cli("record", "--model", tiny_checkpoint("dream"), "--record", "lens", "--out", plain,
                   *common).returncode == 0
    with open_store(plain) as store:
        assert "decode" not in store.groups and "decode" not in store.attrs["settings"]
    from mdlm_interp.analyses import load
    from mdlm_interp.analyses.iterative import decode_trajectory, iterative_accuracy

    recordings, _ = load([out, plain]).with_groups(("decode",))
    table = iterative_accuracy(recordings)
    assert list(table["masks"]) == [1, 3] and list(table["n"]) == [2, 2] and list(table["steps"]) == [1, 3]
    assert set(table["decoder"]) == {"dream alg=entropy eps=0.001"}
    assert len(decode_trajectory(recordings)) == 1 + 3
    for args, named in [(["--model", tiny_checkpoint("llama"), "--decode", "llada"], "causal"),
                        (["--model", "/nonexistent", "--decode", "llada:alg=x"], "--decode llada takes"),
                        (["--model", "/nonexistent", "--masks", "6", "--decode", "llada:block=4"], "does not divide")]:
        result = run_cli("record", *args, "--out", tmp_path / "refused.h5", *common)
        assert result.returncode == 2 and named in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "refused.h5").exists()


# ---- mdlm-interp generate ----

def test_generate_command_prints_the_decode_and_traces_every_step(tmp_path, tiny_checkpoint, tiny_model):
    import h5py

    from cli_run import run_cli
    from mdlm_interp.decoding import generate_text

    lm = tiny_model("llada")
    trace = tmp_path / "trace.h5"
    result = run_cli("generate", "--model", tiny_checkpoint("llada"), "--prompt", PROMPTS[0], "--prompt", PROMPTS[2],
                     "--gen-length", "6", "--steps", "4", "--block-length", "3", "--keep-special", "--show-steps",
                     "--trace", trace)
    assert result.returncode == 0, result.stderr
    ids, mask = prompt_batch(lm, [PROMPTS[0], PROMPTS[2]])
    expected = llada_generate(lm, ids, steps=4, gen_length=6, block_length=3, attention_mask=mask)
    texts = [lm.tokenizer.decode(row[ids.shape[1]:].tolist()) for row in expected]
    lines = result.stdout.splitlines()
    assert lines[-2:] == [f"[0] {texts[0]}", f"[1] {texts[1]}"]
    assert sum(line.startswith("step ") for line in lines) == 4 * 2
    assert generate_text(lm, [PROMPTS[0], PROMPTS[2]], gen_length=6, steps=4, block_length=3,
                         skip_special_tokens=False).texts == texts
    with h5py.File(trace, "r") as file:
        assert file["ids"].shape == (5, 2, ids.shape[1] + 6)
        assert (file["ids"][0][:, ids.shape[1]:] == lm.mask_token_id).all()
        assert (file["ids"][-1] == expected.numpy()).all()
        unmasked = file["unmasked"][()]
        assert (unmasked.sum(0)[:, ids.shape[1]:] == 1).all() and not unmasked[:, :, :ids.shape[1]].any()
        assert (unmasked.sum(-1) == [[2, 2], [1, 1], [2, 2], [1, 1]]).all()  # two blocks of 3 in 2 steps each
        assert (file["block"][()] == [0, 0, 1, 1]).all()
        assert (file["attention_mask"][()][:, ids.shape[1]:] == 1).all()
        assert list(file["text"].asstr()[()]) == [lm.tokenizer.decode(row[ids.shape[1]:].tolist(),
                                                                      skip_special_tokens=True) for row in expected]
        assert file.attrs["family"] == "llada" and file.attrs["weights_fingerprint"] == lm.fingerprint()
        assert '"sampler": "llada"' in file.attrs["settings"] and file.attrs["seed"] == 0


def test_generate_command_refuses_bad_requests_before_loading(tmp_path, tiny_checkpoint):
    from cli_run import run_cli

    existing = tmp_path / "existing.h5"
    existing.write_text("keep")
    for args, named in [(["--model", tiny_checkpoint("llama")], "causal"),
                        (["--model", tiny_checkpoint("llada"), "--alg", "entropy"], "not an option of the llada"),
                        (["--model", tiny_checkpoint("dream"), "--block-length", "2"], "not an option of the dream"),
                        (["--model", tiny_checkpoint("llada"), "--trace", existing], "exists"),
                        (["--model", tiny_checkpoint("llada"), "--gen-length", "6", "--block-length", "4"], "divide"),
                        (["--model", "/nonexistent"], "nonexistent")]:
        result = run_cli("generate", "--prompt", PROMPTS[0], *args)
        assert result.returncode == 2 and named in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    assert existing.read_text() == "keep"


# ---- the analysis: iterative against one-step accuracy ----

def test_iterative_accuracy_and_trajectory_tables(tmp_path):
    from synthetic_stores import HEADS, LAYERS, write_store

    from mdlm_interp.analyses import load
    from mdlm_interp.analyses.iterative import ANALYSIS, decode_trajectory, iterative_accuracy
    from mdlm_interp.analyses.registry import analyses

    nan = float("nan")
    attention = lambda per_step: np.tile(np.asarray(per_step, float)[:, None, None], (1, LAYERS, HEADS))  # noqa: E731
    four = [  # masks 4, steps 4: (one-step correct, decoded correct, unmask step, settle step, p_answer, attention)
        (False, True, 3, 2, [0.1, 0.2, 0.6, 0.9], [0.4, 0.3, 0.2, 0.1]),
        (False, True, 3, 0, [0.3, 0.5, 0.7, 0.7], [0.2, 0.2, 0.1, 0.0]),
        (True, True, 1, 1, [0.4, 0.6, nan, nan], [0.2, 0.2, 0.1, 0.0]),
        (False, False, 3, 3, [0.2, 0.1, 0.1, 0.2], [0.2, 0.2, 0.1, 0.0])]
    rows = [{"task": "adjective+largest", "prompt": i, "masks": 1, "correct": True, "steps": 1, "unmask_step": 0,
             "step_p_answer": [0.9, nan, nan, nan], "masks_left": [1, -1, -1, -1],
             "decode_attention": attention([0, nan, nan, nan])} for i in range(2)]
    rows += [{"task": "adjective+largest", "prompt": i, "masks": 4, "correct": one, "decoded_correct": decoded,
              "unmask_step": unmask, "settle_step": settle, "step_p_answer": p, "decode_attention": attention(mass)}
             for i, (one, decoded, unmask, settle, p, mass) in enumerate(four)]
    decode = {"sampler": "llada", "steps": None, "block": None, "cfg_scale": 0.0}
    groups = ("examples", "tokens", "decode")
    store = write_store(tmp_path / "s.h5", rows, groups=groups, decode=decode)
    plain = write_store(tmp_path / "plain.h5", rows, groups=("examples", "tokens"), model_id="m/plain")
    recordings = load([store])
    table = iterative_accuracy(recordings).set_index("masks")
    assert set(table["decoder"]) == {"llada block=masks cfg_scale=0.0"}
    assert table.loc[4, "n"] == 4 and table.loc[4, "steps"] == 4
    assert table.loc[4, "one_step_accuracy"] == 0.25 and table.loc[4, "iterative_accuracy"] == 0.75
    assert table.loc[4, "gain"] == pytest.approx(0.5) and table.loc[4, "gain_low"] <= 0.5 <= table.loc[4, "gain_high"]
    assert table.loc[4, "iterative_low"] == pytest.approx(0.3006418, abs=1e-6)  # Wilson, 3 of 4
    assert table.loc[4, "settle_step"] == pytest.approx(1.5) and table.loc[4, "settle_fraction"] == pytest.approx(0.375)
    assert table.loc[4, "unmask_step"] == pytest.approx(2.5) and table.loc[4, "answer_last"] == 0.75
    assert table.loc[1, "gain"] == 0 and table.loc[1, "one_step_accuracy"] == 1 and table.loc[1, "steps"] == 1
    steps = decode_trajectory(recordings).set_index(["masks", "step"])
    assert list(steps.loc[4, "n_masked"]) == [4, 4, 3, 3] and len(steps.loc[1]) == 1
    assert steps.loc[(4, 2), "p_answer"] == pytest.approx((0.6 + 0.7 + 0.1) / 3)
    assert steps.loc[(4, 0), "mask_attention"] == pytest.approx((0.4 + 0.6) / 4)
    assert steps.loc[(4, 3), "masks_left"] == 1 and steps.loc[(1, 0), "step_fraction"] == 1
    assert ANALYSIS in analyses()
    tables = ANALYSIS.tables(recordings)
    figures = ANALYSIS.figures(tables)
    assert [len(f.figure.axes) for f in figures] == [2, 2]
    assert [line.get_label() for line in figures[0].figure.axes[0].lines] == [
        "model llada block=masks cfg_scale=0.0: iterative", "model llada block=masks cfg_scale=0.0: one step"]
    assert "0.250 [0.046, 0.699] at 4 masks against 0.750 [0.301, 0.954] decoded in 4 steps" in \
        ANALYSIS.paragraph(tables)
    # a store decoded in 2 steps is a condition of its own; stores without /decode are left out with a note
    fixed = write_store(tmp_path / "fixed.h5", [{**r, "steps": min(r["steps"] if "steps" in r else 4, 2)}
                                                for r in rows], groups=groups, decode={**decode, "steps": 2})
    both = load([store, fixed])
    table = iterative_accuracy(both)  # 1 mask in 1 step is the same decode in both stores: counted once
    assert list(zip(table["masks"], table["steps"], table["n"])) == [(1, 1, 2), (4, 2, 4), (4, 4, 4)]
    assert any("2 rows decoded twice" in note for note in both.notes)
    from mdlm_interp.analyses import write_report

    report = write_report([store, plain], tmp_path / "report").read_text()
    assert "Iterative against one-step decoding" in report and "Stores without /decode are left out" in report
    assert (tmp_path / "report" / "tables" / "iterative_accuracy.csv").exists()
