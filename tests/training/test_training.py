"""Training of the model organisms: losses, tokenizer, data, determinism, resume, Dream initialisation, CLI."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from mdlm_interp.models.families import FAMILIES
from mdlm_interp.training.data import DataConfig, sample_batch
from mdlm_interp.training.objectives import (
    EPS,
    apply_masks,
    causal_lm_loss,
    mask_ratios,
    masked_diffusion_loss,
)
from mdlm_interp.training.pretrain import StageConfig, TrainConfig, train
from mdlm_interp.training.vocab import load_fast_tokenizer, special_tokens

from cli_run import run_cli


# ---------------------------------------------------------------- losses


def test_masked_diffusion_loss_matches_a_hand_computation():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.0, 3.0]],
                           [[1.0, 1.0, 1.0], [-2.0, 0.0, 2.0], [0.0, 4.0, 0.0]]])
    targets = torch.tensor([[0, 2, 2], [1, 0, 1]])
    masked = torch.tensor([[True, True, False], [False, True, True]])
    p = torch.tensor([0.5, 0.25])
    normalizer = torch.tensor([3.0, 2.0])

    def nll(row, col):
        values = logits[row, col].tolist()
        return math.log(sum(math.exp(v) for v in values)) - values[targets[row, col]]

    expected = ((nll(0, 0) + nll(0, 1)) / (0.5 * 3) + (nll(1, 1) + nll(1, 2)) / (0.25 * 2)) / 2
    loss = masked_diffusion_loss(logits, targets, masked, p, normalizer)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_masked_diffusion_loss_reads_dream_predictions_one_position_earlier():
    vocab, n = 5, 4
    targets = torch.tensor([[1, 2, 3, 4]])
    masked = torch.tensor([[False, True, False, True]])
    logits = torch.zeros(1, n, vocab)
    for i in range(n):  # logits[:, i] is sharp on the token at i + 1 (a shifted, Dream-like model)
        if i + 1 < n:
            logits[0, i, targets[0, i + 1]] = 30.0
    ones = torch.ones(1)
    shifted = masked_diffusion_loss(logits, targets, masked, ones, ones, prediction_offset=-1)
    unshifted = masked_diffusion_loss(logits, targets, masked, ones, ones, prediction_offset=0)
    assert shifted.item() < 1e-6
    assert unshifted.item() > 10
    expected = sum(F.cross_entropy(logits[0, i - 1], targets[0, i]) for i in (1, 3))
    assert shifted.item() == pytest.approx(expected.item(), abs=1e-6)
    with pytest.raises(ValueError):
        masked_diffusion_loss(logits, targets, torch.tensor([[True, False, False, False]]), ones, ones, -1)


def test_masked_diffusion_loss_takes_one_masking_probability_per_position():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 6, generator=generator)
    targets = torch.randint(0, 6, (2, 5), generator=generator)
    masked = torch.rand(2, 5, generator=generator) < 0.6
    masked[0, 1] = True
    p_row = torch.tensor([0.3, 0.7])
    p_pos = p_row[:, None].expand(2, 5).clone()
    normalizer = torch.tensor([2.0, 4.0])
    same = masked_diffusion_loss(logits, targets, masked, p_pos, normalizer)
    assert same.item() == pytest.approx(masked_diffusion_loss(logits, targets, masked, p_row, normalizer).item())
    p_pos[0, 1] = 1.0  # position (0, 1) weighted 1 instead of 1/0.3
    ce = F.cross_entropy(logits[0, 1], targets[0, 1]).item()
    expected = same.item() - ce / (0.3 * 2) / 2 + ce / (1.0 * 2) / 2
    assert masked_diffusion_loss(logits, targets, masked, p_pos, normalizer).item() == pytest.approx(expected, rel=1e-5)


def test_answer_always_masked_hides_the_answer_slot_and_weights_it_one():
    from mdlm_interp.training.pretrain import training_loss

    spec = FAMILIES["llada"]
    tokenizer = load_fast_tokenizer(spec)
    data = DataConfig("sft", batch_tokens=1500, max_examples=4, curriculum=0, answer_always_masked=True)
    batch, generator = sample_batch(data, spec, tokenizer, seed=0, stage="sft", step=1, progress=1.0)
    assert batch.answer.sum(1).eq(1).all() and not (batch.answer & ~batch.trained).any()
    seen = {}

    def model(ids, attention_mask=None):
        seen["ids"] = ids
        return torch.zeros(*ids.shape, 832)

    loss = training_loss(model, spec, tokenizer.mask_token_id, batch, generator, data)
    assert (seen["ids"][batch.answer] == tokenizer.mask_token_id).all()
    # uniform logits: every masked token costs log(832); the answers alone contribute log(832) / n_response
    answers_only = (math.log(832) / batch.trained.sum(1).float()).mean().item()
    assert loss.item() >= answers_only - 1e-4


def test_causal_loss_is_next_token_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 7, generator=generator)
    ids = torch.randint(0, 7, (2, 6), generator=generator)
    scored = torch.ones(2, 6, dtype=torch.bool)
    scored[:, 0] = False
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 7), ids[:, 1:].reshape(-1))
    assert causal_lm_loss(logits, ids, scored).item() == pytest.approx(expected.item(), rel=1e-6)
    only_last = torch.zeros_like(scored)
    only_last[:, -1] = True
    expected_last = F.cross_entropy(logits[:, -2], ids[:, -1])
    assert causal_lm_loss(logits, ids, only_last).item() == pytest.approx(expected_last.item(), rel=1e-6)
    with pytest.raises(ValueError):
        causal_lm_loss(logits, ids, torch.ones_like(scored))


def test_mask_ratios_are_stratified_and_within_eps_one():
    p = mask_ratios(8, torch.Generator().manual_seed(1))
    t = (p - EPS) / (1 - EPS)
    assert torch.all((t >= torch.arange(8) / 8) & (t < (torch.arange(8) + 1) / 8))
    free = mask_ratios(1000, torch.Generator().manual_seed(1), stratified=False)
    assert free.min() >= EPS and free.max() <= 1


def test_apply_masks_only_touches_maskable_tokens():
    ids = torch.arange(20).reshape(2, 10)
    maskable = torch.zeros(2, 10, dtype=torch.bool)
    maskable[:, 4:7] = True
    noisy, masked = apply_masks(ids, maskable, torch.tensor([1.0, 0.0]), 99, torch.Generator().manual_seed(0))
    assert masked[0].tolist() == maskable[0].tolist() and not masked[1].any()
    assert torch.equal(noisy[0, 4:7], torch.full((3,), 99)) and torch.equal(noisy[1], ids[1])
    assert torch.equal(noisy[~masked], ids[~masked])


# ---------------------------------------------------------------- tokenizer and data


def test_prompts_tokenize_into_exactly_their_words_and_every_word_is_one_token():
    from mdlm_interp.tasks import PromptConfig, sample_prompt, single_token_words, tokenize_prompt, word_lists

    tokenizer = load_fast_tokenizer(FAMILIES["llada"])
    assert single_token_words(tokenizer).counts() == word_lists().counts()
    for digit in "0123456789":
        assert len(tokenizer.encode(f" {digit}", add_special_tokens=False)) == 1
    assert tokenizer.unk_token_id not in tokenizer.encode(FAMILIES["dream"].chat_template.replace("{content}", ""),
                                                          add_special_tokens=False)
    prompt = sample_prompt(PromptConfig("animal+largest", 2, 1), seed=5)
    tp = tokenize_prompt(prompt, tokenizer, mask_token_id=tokenizer.mask_token_id, masks=1)
    text = prompt.text_before
    assert tokenizer.convert_ids_to_tokens(tp.input_ids[:-1]) == [
        piece for piece in text.replace(":", " : ").replace(",", " , ").replace("\n", " \n ").split(" ") if piece
    ]
    assert tokenizer.encode(text, add_special_tokens=False) == tp.input_ids[:-1]


def test_one_vocabulary_serves_every_family(tmp_path):
    from mdlm_interp import load_model
    from mdlm_interp.models.transformer import HookedDecoder
    from mdlm_interp.training.pretrain import write_checkpoint

    vocab = load_fast_tokenizer(FAMILIES["llada"]).get_vocab()
    assert all(token in vocab for token in special_tokens())
    for family in ("llada", "llama", "dream"):
        model = HookedDecoder(FAMILIES[family].preset_config("tiny", 832))
        write_checkpoint(tmp_path / family, model, FAMILIES[family], torch.float32)
        lm = load_model(tmp_path / family)
        assert lm.tokenizer.get_vocab() == vocab
        if family != "llama":
            assert lm.mask_token_id == vocab[FAMILIES[family].mask_token]


def test_sft_batches_train_only_the_responses():
    spec = FAMILIES["llada"]
    tokenizer = load_fast_tokenizer(spec)
    eos = tokenizer.convert_tokens_to_ids(spec.special_tokens["eos"])
    newline, colon = tokenizer.convert_tokens_to_ids("\n"), tokenizer.convert_tokens_to_ids(":")
    words = {i for token, i in tokenizer.get_vocab().items() if token.isalnum()}
    data = DataConfig("sft", batch_tokens=2000, max_examples=6, max_extra=3, curriculum=0, example_answers=False)
    batch, _ = sample_batch(data, spec, tokenizer, seed=0, stage="sft", step=3, progress=1.0)
    for row in range(batch.ids.shape[0]):
        positions = batch.trained[row].nonzero().flatten().tolist()
        assert 1 <= len(positions) <= 4 and positions == list(range(positions[0], positions[-1] + 1))
        assert batch.ids[row, positions[0] - 1].item() == colon and batch.ids[row, positions[0]].item() in words
        assert all(batch.ids[row, i].item() == eos for i in positions[1:])
    turns = DataConfig("sft", batch_tokens=2000, min_examples=3, max_examples=6, max_extra=0, curriculum=0)
    batch, _ = sample_batch(turns, spec, tokenizer, seed=0, stage="sft", step=3, progress=1.0)
    for row in range(batch.ids.shape[0]):
        positions = batch.trained[row].nonzero().flatten().tolist()
        assert len(positions) >= 4  # every example's answer and the query's
        for i in positions:
            assert batch.ids[row, i - 1].item() == colon and batch.ids[row, i].item() in words
            assert i + 1 == batch.valid[row].sum().item() or batch.ids[row, i + 1].item() == newline
    causal, _ = sample_batch(DataConfig("sft", batch_tokens=2000, max_examples=6, example_answers=False),
                             FAMILIES["llama"], load_fast_tokenizer(FAMILIES["llama"]), seed=0, stage="sft", step=3,
                             progress=1.0)
    assert causal.trained.sum(1).eq(1).all()


def test_log_uniform_example_counts_stay_in_bounds_and_favour_short_prompts():
    import random

    from mdlm_interp.training.data import draw_log_uniform

    rng = random.Random(0)
    draws = [draw_log_uniform(rng, 0, 56) for _ in range(20000)]
    assert min(draws) == 0 and max(draws) == 56
    # log(n + 1) uniform on [log 1, log 58): P(n <= 6) = log 8 / log 58, P(n >= 31) = log(58/32) / log 58
    assert sum(d <= 6 for d in draws) / len(draws) == pytest.approx(math.log(8) / math.log(58), abs=0.015)
    assert sum(d >= 31 for d in draws) / len(draws) == pytest.approx(math.log(58 / 32) / math.log(58), abs=0.015)
    assert all(draw_log_uniform(rng, 5, 5) == 5 for _ in range(10))


def test_pretraining_batches_never_train_position_zero_for_shifted_families():
    for family in ("dream", "llama"):
        spec = FAMILIES[family]
        batch, _ = sample_batch(DataConfig("pretrain", batch_tokens=3000, max_examples=8), spec,
                                load_fast_tokenizer(spec), seed=1, stage="pretrain", step=0, progress=0.5)
        assert not batch.trained[:, 0].any()
        assert torch.equal(batch.trained.sum(1), batch.valid.sum(1) - 1)


# ---------------------------------------------------------------- determinism, resume, initialisation


def tiny_config(family: str, seed: int = 0, init=None, steps: int = 4) -> TrainConfig:
    data = dict(batch_tokens=600, max_examples=4)
    return TrainConfig(
        family=family, preset="tiny", seed=seed, init=init, eval_every=0, save_every=2, threads=1,
        stages=(StageConfig("pretrain", steps, 3e-3, DataConfig("pretrain", **data), warmup=1),
                StageConfig("sft", steps, 3e-3, DataConfig("sft", **data), warmup=1)),
    )


def weights(path):
    return (path / "model.safetensors").read_bytes()


@pytest.mark.parametrize("family", ["llada", "llama"])
def test_same_seed_gives_bitwise_identical_weights(tmp_path, family):
    train(tiny_config(family, steps=2), tmp_path / "a", progress=False)
    train(tiny_config(family, steps=2), tmp_path / "b", progress=False)
    train(tiny_config(family, seed=1, steps=2), tmp_path / "c", progress=False)
    assert weights(tmp_path / "a") == weights(tmp_path / "b")
    assert weights(tmp_path / "a") != weights(tmp_path / "c")
    assert not (tmp_path / "a" / "train_state").exists()


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    import mdlm_interp.training.pretrain as pretrain

    config = tiny_config("dream", steps=5)
    train(config, tmp_path / "full", progress=False)
    real = pretrain.sample_batch

    def interrupt(data, spec, tokenizer, seed, stage, step, progress):
        if stage == "sft" and step == 3:
            raise KeyboardInterrupt
        return real(data, spec, tokenizer, seed, stage, step, progress)

    monkeypatch.setattr(pretrain, "sample_batch", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "cut", progress=False)
    state = json.loads((tmp_path / "cut" / "train_state" / "state.json").read_text())
    assert (state["stage"], state["step"]) == (1, 2)
    monkeypatch.setattr(pretrain, "sample_batch", real)
    train(config, tmp_path / "cut", resume=True, progress=False)
    assert weights(tmp_path / "full") == weights(tmp_path / "cut")


def test_resume_refuses_a_different_configuration(tmp_path, monkeypatch):
    import mdlm_interp.training.pretrain as pretrain
    from mdlm_interp.errors import UsageError

    with pytest.raises(UsageError, match="nothing to resume"):
        train(tiny_config("llada"), tmp_path / "none", resume=True, progress=False)
    real = pretrain.sample_batch

    def interrupt(data, spec, tokenizer, seed, stage, step, progress):
        if step == 3:
            raise KeyboardInterrupt
        return real(data, spec, tokenizer, seed, stage, step, progress)

    monkeypatch.setattr(pretrain, "sample_batch", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config("llada"), tmp_path / "cut", progress=False)
    assert (tmp_path / "cut" / "train_state" / "state.json").exists()
    monkeypatch.setattr(pretrain, "sample_batch", real)
    with pytest.raises(UsageError, match="different configuration"):
        train(tiny_config("llada", seed=1), tmp_path / "cut", resume=True, progress=False)


def test_dream_starts_from_the_causal_twin_with_zero_qkv_biases(tmp_path):
    from mdlm_interp import load_model

    twin = tmp_path / "twin"
    train(tiny_config("llama", steps=1), twin, progress=False)
    config = TrainConfig(family="dream", preset="tiny", seed=0, init=str(twin), eval_every=0, save_every=0,
                         stages=(StageConfig("sft", 0, 1e-3, DataConfig("sft")),))
    train(config, tmp_path / "dream", progress=False)
    llama, dream = load_model(twin), load_model(tmp_path / "dream")
    theirs = dict(llama.model.named_parameters())
    for name, param in dream.model.named_parameters():
        if name.endswith("bias"):
            assert not param.any(), name
        else:
            assert torch.equal(param, theirs[name]), name


# ---------------------------------------------------------------- command line


def test_pretrain_cli_help_documents_every_flag():
    out = run_cli("pretrain", "--help")
    assert out.returncode == 0
    for flag in ("--family", "--preset", "--init", "--steps", "--sft-steps", "--seed", "--out", "--resume",
                 "--threads", "--dtype"):
        assert flag in out.stdout


def test_pretrain_cli_writes_a_loadable_checkpoint_with_a_model_card(tmp_path):
    from mdlm_interp import load_model

    out = tmp_path / "cli-llada"
    result = run_cli("pretrain", "--family", "llada", "--preset", "tiny", "--steps", "2", "--sft-steps", "2", "--seed", "0",
                     "--batch-tokens", "600", "--eval-every", "0", "--eval-prompts", "8", "--masks", "1,5",
                     "--no-progress", "--out", str(out))
    assert result.returncode == 0, result.stderr
    card = (out / "README.md").read_text()
    assert "mdlm-interp pretrain --family llada" in card and "masks" in card
    config = json.loads((out / "training_config.json").read_text())
    assert config["config"]["family"] == "llada" and len(config["config"]["stages"]) == 2
    results = json.loads((out / "eval_results.json").read_text())
    assert {r["masks"] for r in results["accuracy"]} == {1, 5}
    assert load_model(out).spec.family == "llada"
