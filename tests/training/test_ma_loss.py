"""The MA-loss trainer: the loss against a hand computation, data checks, batches, the adapter, resume,
fine-tuning pairs from the task suite, adapters on record."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from mdlm_interp.training.ma_loss import ma_loss

from cli_run import run_cli

TESTS_DATA = Path(__file__).resolve().parents[1] / "data"
OPENORCA = TESTS_DATA / "openorca_sample.jsonl"


# ---------------------------------------------------------------- the loss


def softmax(row):
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    return [e / sum(exps) for e in exps]


def hand_ma_loss(l1, l2, targets, masked, p, alpha, beta, offset):
    """The formulas of README.md ("MA-loss fine-tuning") with plain floats and loops: mean over pairs of alpha L_CE + beta L_TV."""
    total_ce = total_tv = 0.0
    for b in range(len(masked)):
        positions = [j for j, m in enumerate(masked[b]) if m]
        n_m = len(positions)
        ce = tv = 0.0
        for j in positions:
            q1, q2 = softmax(l1[b][j + offset]), softmax(l2[b][j + offset])
            ce -= math.log(q1[targets[b][j]]) + math.log(q2[targets[b][j]])
            tv += 0.5 * sum(abs(a - c) for a, c in zip(q1, q2))
        total_ce += ce / (2 * p[b] * n_m)
        total_tv += p[b] * tv / n_m
    batch = len(masked)
    return alpha * total_ce / batch + beta * total_tv / batch, total_ce / batch, total_tv / batch


@pytest.mark.parametrize("offset", [0, -1])
def test_ma_loss_equals_a_hand_computation(offset):
    generator = torch.Generator().manual_seed(3)
    logits_1 = torch.randn(2, 6, 5, generator=generator, dtype=torch.float64)
    logits_2 = torch.randn(2, 9, 5, generator=generator, dtype=torch.float64)  # x2 has three more terminal masks
    targets = torch.tensor([[4, 1, 3, 0, 2], [2, 2, 0, 1, 4]])
    masked = torch.tensor([[False, False, True, True, False], [False, False, False, True, True]])
    masked[1, 2] = True  # pair 0 has 2 masked answer tokens, pair 1 has 3
    p = torch.tensor([0.5, 0.2], dtype=torch.float64)
    result = ma_loss(logits_1, logits_2, targets, masked, p, alpha=0.7, beta=1.9, prediction_offset=offset)
    loss, ce, tv = hand_ma_loss(logits_1.tolist(), logits_2.tolist(), targets.tolist(), masked.tolist(), p.tolist(),
                                0.7, 1.9, offset)
    assert result.ce.item() == pytest.approx(ce, rel=1e-6)
    assert result.tv.item() == pytest.approx(tv, rel=1e-6)
    assert result.loss.item() == pytest.approx(loss, rel=1e-6)
    assert tv > 0.05 and ce > 1.0


def test_ma_loss_scalings_on_a_closed_form_example():
    # one pair, one masked answer token at position 0, two-token vocabulary, answer id 0:
    # x1 predicts (1/2, 1/2), x2 predicts (3/4, 1/4): CE = (log 2 + log 4/3) / (2 p), TV = p * 1/4
    logits_1 = torch.tensor([[[0.0, 0.0]]])
    logits_2 = torch.tensor([[[math.log(3.0), 0.0], [5.0, 5.0]]])
    targets, masked = torch.tensor([[0]]), torch.tensor([[True]])
    for p in (0.25, 0.8):
        result = ma_loss(logits_1, logits_2, targets, masked, torch.tensor([p]))
        assert result.ce.item() == pytest.approx((math.log(2) + math.log(4 / 3)) / (2 * p), rel=1e-6)
        assert result.tv.item() == pytest.approx(p * 0.25, rel=1e-6)


def test_tv_term_is_exactly_zero_for_identical_inputs(tiny_model):
    lm = tiny_model("llada")
    ids = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    ids[:, 8:] = lm.mask_token_id
    masked = torch.zeros(2, 12, dtype=torch.bool)
    masked[:, 8:10] = True
    p = torch.tensor([0.3, 0.9])
    with torch.no_grad():
        same = ma_loss(lm.model(ids), lm.model(ids.clone()), ids, masked, p)
        longer = torch.cat([ids, torch.full((2, 5), lm.mask_token_id)], dim=1)
        different = ma_loss(lm.model(ids), lm.model(longer), ids, masked, p)
    assert same.tv.item() == 0.0 and same.ce.item() > 0
    assert different.tv.item() > 0  # five more terminal masks change the predictions of a bidirectional model


def test_beta_zero_is_the_ce_only_ablation():
    generator = torch.Generator().manual_seed(1)
    logits_1, logits_2 = torch.randn(3, 7, 11, generator=generator), torch.randn(3, 9, 11, generator=generator)
    targets = torch.randint(0, 11, (3, 7), generator=generator)
    masked = torch.zeros(3, 7, dtype=torch.bool)
    masked[:, 4:6] = True
    p = torch.tensor([0.1, 0.5, 1.0])
    logits_1.requires_grad_(True)
    full = ma_loss(logits_1, logits_2, targets, masked, p, alpha=1.0, beta=1.0)
    ce_only = ma_loss(logits_1, logits_2, targets, masked, p, alpha=1.0, beta=0.0)
    assert ce_only.loss.item() == full.ce.item() and full.loss.item() == pytest.approx(full.ce.item() + full.tv.item())
    assert ce_only.tv.item() == full.tv.item() > 0 and not ce_only.tv.requires_grad  # measured, not trained
    ce_grad, = torch.autograd.grad(ce_only.loss, logits_1)
    only_ce, = torch.autograd.grad(full.ce, logits_1)
    assert torch.equal(ce_grad, only_ce)


def test_a_pair_without_masked_answer_tokens_adds_nothing_and_offsets_must_fit():
    logits = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(2))
    targets = torch.zeros(2, 4, dtype=torch.long)
    masked = torch.tensor([[False, True, False, False], [False, False, False, False]])
    both = ma_loss(logits, logits, targets, masked, torch.tensor([0.5, 0.5]))
    alone = ma_loss(logits[:1], logits[:1], targets[:1], masked[:1], torch.tensor([0.5]))
    assert both.ce.item() == pytest.approx(alone.ce.item() / 2)
    with pytest.raises(ValueError, match="offset -1"):
        ma_loss(logits, logits, targets, torch.tensor([[True, False, False, False]] * 2), torch.ones(2),
                prediction_offset=-1)


# ---------------------------------------------------------------- data and batches


def test_openorca_pairs_are_templated_and_end_with_end_of_text(tiny_model):
    from mdlm_interp.training.sft_data import read_pairs

    lm = tiny_model("llada")
    eos = lm.tokenizer.convert_tokens_to_ids(lm.spec.special_tokens["eos"])
    pairs = read_pairs(OPENORCA, lm.tokenizer, eos, lm.spec.chat_template, 2048, 8)
    records = [json.loads(line) for line in OPENORCA.read_text().splitlines()]
    assert [pair.line for pair in pairs] == list(range(1, len(records) + 1))
    first = lm.tokenizer.decode(list(pairs[0].prompt_ids))
    assert first.startswith("<|startoftext|><|start_header_id|>user<|end_header_id|>")
    assert f"{records[0]['system_prompt']}\n\n{records[0]['question']}" in first
    assert first.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert records[1]["question"] + "<|eot_id|>" in lm.tokenizer.decode(list(pairs[1].prompt_ids))  # no system prompt
    for pair, record in zip(pairs, records):
        assert pair.response_ids[-1] == eos
        assert lm.tokenizer.decode(list(pair.response_ids[:-1])) == record["response"]
    plain = read_pairs(OPENORCA, lm.tokenizer, eos, None, 2048, 8)
    assert lm.tokenizer.decode(list(plain[1].prompt_ids)) == records[1]["question"]


def test_batches_mask_only_responses_and_differ_only_in_terminal_masks():
    from mdlm_interp.training.sft_data import Pair, ma_batch

    mask, pad = 99, 98
    pairs = [Pair(tuple(range(1, 1 + n)), tuple(range(50, 50 + k)), i) for i, (n, k) in
             enumerate([(5, 3), (8, 1), (3, 6), (6, 4), (4, 2)])]
    seen_extra = set()
    for index in range(6):
        batch = ma_batch(pairs, index, 3, 0, mask, pad, (0.3, 0.9), (2, 6))
        again = ma_batch(pairs, index, 3, 0, mask, pad, (0.3, 0.9), (2, 6))
        assert all(torch.equal(a, b) for a, b in zip(batch.inputs, again.inputs)) and torch.equal(batch.p, again.p)
        assert ((batch.p >= 0.3) & (batch.p <= 0.9)).all()
        for row in range(3):
            length = int((batch.targets[row] != pad).sum())
            prompt = int((batch.targets[row] < 50).sum())
            l1, l2 = batch.extra[row].tolist()
            assert l1 != l2 and 2 <= min(l1, l2) and max(l1, l2) <= 6
            seen_extra.add((l1, l2))
            masked = batch.masked[row].nonzero().flatten().tolist()
            assert all(prompt <= j < length for j in masked)  # the prompt is never masked
            for copy, extra in ((0, l1), (1, l2)):
                ids, valid = batch.inputs[copy][row], batch.valid[copy][row]
                assert int(valid.sum()) == length + extra
                assert ids[:prompt].tolist() == batch.targets[row, :prompt].tolist()
                noisy = ids[:length]
                assert (noisy[batch.masked[row, :length]] == mask).all()
                keep = ~batch.masked[row, :length]
                assert torch.equal(noisy[keep], batch.targets[row, :length][keep])
                assert (ids[length:length + extra] == mask).all()
            assert torch.equal(batch.inputs[0][row, :length], batch.inputs[1][row, :length])
    assert len(seen_extra) > 5
    # every pair is visited once per epoch
    from mdlm_interp.training.sft_data import batch_indices

    assert sorted(batch_indices(5, 0, 0, 5)) == list(range(5)) and sorted(batch_indices(5, 0, 5, 5)) == list(range(5))


# ---------------------------------------------------------------- train-ma


def sft_file(path: Path, n: int = 2) -> Path:
    from mdlm_interp.tasks import SFT_CATEGORIES, TASK_NAMES, sft_records, sft_tasks, write_jsonl

    with open(path, "w") as out:
        write_jsonl(sft_records(sft_tasks(TASK_NAMES, SFT_CATEGORIES), n, 0, n_relevant=2, n_distractor=2), out)
    return path


def train_args(model, data, out, *flags):
    return ["train-ma", "--model", model, "--data", data, "--out", out, "--steps", "3", "--batch-size", "2",
            "--lr", "0.01", "--warmup", "1", "--extra-masks", "0:6", "--lora-r", "2", "--save-every", "2",
            "--no-chat-template", "--no-progress", *flags]


@pytest.fixture(scope="module")
def trained(tiny_checkpoint, tmp_path_factory):
    """A 3-step train-ma run on the tiny LLaDA: (base checkpoint, adapter dir, data file)."""
    root = tmp_path_factory.mktemp("train-ma")
    data = sft_file(root / "sft.jsonl")
    base = tiny_checkpoint("llada")
    result = run_cli(*train_args(base, data, root / "adapter"))
    assert result.returncode == 0, result.stderr
    return base, root / "adapter", data


def test_train_ma_writes_a_peft_adapter_log_config_and_card(trained):
    from peft import PeftModel
    from safetensors.torch import load_file

    from mdlm_interp import load_model
    from mdlm_interp.models.adapter import adapter_fingerprint

    base, adapter, data = trained
    names = {p.name for p in adapter.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "training_config.json", "train_log.csv",
            "README.md", "training_curve.png", "checkpoints"} <= names and "train_state" not in names
    assert sorted(p.name for p in (adapter / "checkpoints").iterdir()) == ["step-000002"]
    with open(adapter / "train_log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert all(float(r["ce"]) > 0 and float(r["tv"]) >= 0 for r in rows)
    cpu = [float(r["cpu_seconds"]) for r in rows]
    assert cpu == sorted(cpu) and cpu[-1] > 0
    assert all(float(r["loss"]) == pytest.approx(float(r["ce"]) + float(r["tv"]), abs=2e-6) for r in rows)
    record = json.loads((adapter / "training_config.json").read_text())
    assert record["config"]["lora_r"] == 2 and record["config"]["extra_masks"] == [0, 6]
    assert record["provenance"]["base_weights_fingerprint"] == load_model(base).fingerprint()
    assert record["provenance"]["data_fingerprint"].startswith("sha256:")
    assert "train-ma --model" in record["provenance"]["command_line"]
    card = (adapter / "README.md").read_text()
    assert adapter_fingerprint(adapter) in card and "train-ma" in card

    # peft reads it on our decoder, and the LoRA B matrices have moved away from zero
    peft_model = PeftModel.from_pretrained(load_model(base).model, str(adapter))
    stored = load_file(str(adapter / "adapter_model.safetensors"))
    lora_b = [name for name in stored if "lora_B" in name]
    assert lora_b and any(stored[name].abs().max() > 0 for name in lora_b)
    state = dict(peft_model.named_parameters())
    name = lora_b[0].replace(".weight", ".default.weight")
    assert torch.equal(state[name].detach(), stored[lora_b[0]])


def test_load_model_with_an_adapter_changes_predictions_and_merging_keeps_them(trained):
    from mdlm_interp import load_model

    base, adapter, _ = trained
    plain = load_model(base)
    adapted = load_model(base, adapter=adapter)
    merged = load_model(base, adapter=adapter, merge_adapter=True)
    ids = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    ids[:, 15:] = plain.mask_token_id
    with torch.no_grad():
        before, after, folded = plain.model(ids), adapted.model(ids), merged.model(ids)
    assert (after - before).abs().max() > 1e-4
    torch.testing.assert_close(folded, after, atol=1e-4, rtol=1e-4)
    assert adapted.adapter.fingerprint.startswith("sha256:") and not adapted.adapter.merged and merged.adapter.merged
    assert not any(p.requires_grad for p in adapted.model.parameters())
    assert "lora" in type(adapted.model.blocks[0].attn.q_proj).__module__
    assert type(merged.model.blocks[0].attn.q_proj) is torch.nn.Linear


def test_record_names_the_adapter_and_its_fingerprint(trained, tmp_path):
    from mdlm_interp.models.adapter import adapter_fingerprint
    from mdlm_interp.store import open_store

    base, adapter, _ = trained
    out = tmp_path / "after.h5"
    result = run_cli("record", "--model", base, "--adapter", adapter, "--task", "adjective+largest", "--n", "2",
                     "--n-relevant", "2", "--n-distractor", "2", "--masks", "1,3", "--record", "attention",
                     "--no-progress", "--out", out)
    assert result.returncode == 0, result.stderr
    with open_store(out) as store:
        settings = store.attrs["settings"]
        assert settings["adapter"] == {"path": str(adapter), "fingerprint": adapter_fingerprint(adapter),
                                       "merged": False}
        assert "--adapter" in store.attrs["command_line"]
    info = run_cli("model", "info", base, "--adapter", adapter, "--merge-adapter", "--json")
    assert json.loads(info.stdout)["adapter"]["merged"] is True


@pytest.mark.parametrize("argv, message", [
    (["record", "--merge-adapter", "--out", "{tmp}/x.h5"], "--merge-adapter needs --adapter"),
    (["record", "--adapter", "{tmp}/nowhere", "--out", "{tmp}/x.h5"], "nowhere: no such directory"),
    (["model", "info", "organism-llada", "--adapter", "{tmp}"], "no adapter_config.json"),
])
def test_bad_adapter_flags_exit_2_with_one_line(tmp_path, argv, message):
    result = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr
    assert not (tmp_path / "x.h5").exists()


def test_an_adapter_is_refused_on_other_weights(trained, tmp_path):
    from mdlm_interp.models.random_checkpoint import write_random_checkpoint
    from mdlm_interp.tasks import tokenizer_corpus

    _, adapter, _ = trained
    other = write_random_checkpoint("llada", tmp_path / "other", tokenizer_corpus(), seed=1)
    result = run_cli("model", "info", other, "--adapter", adapter)
    assert result.returncode == 2 and "was trained on weights" in result.stderr
    result = run_cli("model", "info", "organism-llada", "--adapter", adapter)  # other shapes too
    assert result.returncode == 2 and result.stderr.count("\n") == 1


def bad_lines(kind: str) -> str:
    good = json.dumps({"prompt": "Input: a, b, c\nOutput:", "response": " a"})
    bad = {
        "json": '{"prompt": "x", "response": ',
        "field": json.dumps({"prompt": "Input: a"}),
        "empty": json.dumps({"system_prompt": "", "question": "Say nothing.", "response": "  "}),
        "long": json.dumps({"prompt": "Say it.", "response": " apple" * 2100}),
    }[kind]
    return "\n".join([good, good, bad, good]) + "\n"


@pytest.mark.parametrize("kind, message", [
    ("json", ":3: not valid JSON"),
    ("field", ":3: missing field 'response'"),
    ("empty", ":3: empty response"),
    ("long", ":3: prompt and response are"),
])
def test_malformed_data_is_one_line_naming_the_line_before_anything_is_written(tiny_checkpoint, tmp_path, kind,
                                                                               message):
    data = tmp_path / "data.jsonl"
    data.write_text(bad_lines(kind))
    out = tmp_path / "out"
    result = run_cli(*train_args(tiny_checkpoint("llada"), data, out))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and f"{data}{message}" in result.stderr
    assert not out.exists()


def test_bad_options_and_existing_output_are_refused(tiny_checkpoint, tmp_path, trained):
    data = sft_file(tmp_path / "sft.jsonl")
    base = tiny_checkpoint("llada")
    for flags, message in ((["--extra-masks", "4:4"], "l1 != l2"), (["--mask-ratio", "0:1"], "0 < LOW"),
                           (["--beta", "0", "--alpha", "0"], "not both 0"), (["--lora-targets", "wq"], "unknown")):
        result = run_cli(*train_args(base, data, tmp_path / "out", *flags))
        assert result.returncode == 2 and message in result.stderr and not (tmp_path / "out").exists()
    result = run_cli(*train_args(base, data, trained[1]))
    assert result.returncode == 2 and "--resume" in result.stderr
    result = run_cli(*train_args(base, data, trained[1], "--resume"))
    assert result.returncode == 2 and "nothing to resume" in result.stderr
    result = run_cli(*train_args(tiny_checkpoint("llama"), data, tmp_path / "out"))
    assert result.returncode == 2 and "needs a masked diffusion model" in result.stderr


def test_an_interrupted_run_resumes_to_the_same_adapter(tiny_checkpoint, tmp_path, monkeypatch):
    import mdlm_interp.training.ma as ma

    data = sft_file(tmp_path / "sft.jsonl")
    base = tiny_checkpoint("dream")  # the -1 prediction offset on the way
    flags = ["--steps", "5", "--grad-accum", "2"]
    assert run_cli(*train_args(base, data, tmp_path / "full", *flags)).returncode == 0
    real = ma.ma_batch

    def interrupt(pairs, index, *args):
        if index == 2 * 3:  # the first micro-batch of step 4 (after the save at step 2, mid-way to 4)
            raise KeyboardInterrupt
        return real(pairs, index, *args)

    monkeypatch.setattr(ma, "ma_batch", interrupt)
    interrupted = run_cli(*train_args(base, data, tmp_path / "cut", *flags))
    assert interrupted.returncode == 130 and interrupted.stderr.strip() == "mdlm-interp: error: interrupted"
    assert json.loads((tmp_path / "cut" / "train_state" / "state.json").read_text())["step"] == 2
    monkeypatch.setattr(ma, "ma_batch", real)
    assert run_cli(*train_args(base, data, tmp_path / "cut", *flags, "--resume")).returncode == 0
    for name in ("adapter_model.safetensors", "checkpoints/step-000004/adapter_model.safetensors"):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "cut" / name).read_bytes(), name

    def columns(run):
        with open(tmp_path / run / "train_log.csv", newline="") as handle:
            return [(r["step"], r["loss"], r["ce"], r["tv"]) for r in csv.DictReader(handle)]

    assert columns("full") == columns("cut") and len(columns("full")) == 5


# ---------------------------------------------------------------- fine-tuning pairs from the task suite


def test_sft_export_uses_negative_seeds_and_half_the_categories(tmp_path):
    from mdlm_interp.tasks import CATEGORIES, SFT_CATEGORIES, TASK_NAMES, PromptConfig, held_out_categories, \
        sample_prompt

    out = tmp_path / "sft.jsonl"
    assert run_cli("tasks", "export", "--format", "sft", "--task", "all", "--n", "3", "--out", out).returncode == 0
    again = tmp_path / "again.jsonl"
    run_cli("tasks", "export", "--format", "sft", "--task", "all", "--n", "3", "--out", again)
    assert out.read_bytes() == again.read_bytes()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3 * 2 * len(SFT_CATEGORIES) == 24
    assert {r["category"] for r in records} == set(SFT_CATEGORIES) and len(SFT_CATEGORIES) == len(CATEGORIES) // 2
    assert set(held_out_categories(SFT_CATEGORIES)) == set(CATEGORIES) - set(SFT_CATEGORIES)
    assert all(r["seed"] < 0 for r in records)
    for r in records[:4]:
        prompt = sample_prompt(PromptConfig(r["task"], r["n_relevant"], r["n_distractor"], r["placement"]), r["seed"])
        assert r["prompt"] == prompt.text_before and r["response"] == " " + prompt.answer
        assert r["prompt"].endswith("\nOutput:")
    evaluated = [json.loads(line)["seed"] for line in
                 run_cli("tasks", "export", "--task", "all", "--n", "3", "--out", "-").stdout.splitlines()]
    assert min(evaluated) >= 0
    chosen = run_cli("tasks", "export", "--format", "sft", "--task", "all", "--n", "1", "--categories", "verb,food",
                     "--out", "-")
    assert {json.loads(line)["task"] for line in chosen.stdout.splitlines()} == \
        {t for t in TASK_NAMES if t.split("+")[0] in ("verb", "food")}


@pytest.mark.parametrize("flags, message", [
    (["--categories", "colour"], "unknown categories ['colour']"),
    (["--task", "verb+largest"], "no task of categories"),
    (["--placement", "query-at:3"], "no query-at placement"),
])
def test_sft_export_refuses_what_cannot_be_a_pair(tmp_path, flags, message):
    argv = ["tasks", "export", "--format", "sft", "--n", "1", "--out", tmp_path / "x.jsonl"]
    if "--task" not in flags:
        argv += ["--task", "all"]
    result = run_cli(*argv, *flags)
    assert result.returncode == 2 and message in result.stderr and not (tmp_path / "x.jsonl").exists()


# ---------------------------------------------------------------- compare


@pytest.fixture(scope="module")
def compared(trained, tmp_path_factory):
    """Stores of the tiny LLaDA before and after its adapter (same prompts), and their comparison."""
    base, adapter, _ = trained
    root = tmp_path_factory.mktemp("compare")
    common = ["--task", "adjective+largest,verb+smallest", "--n", "4", "--n-relevant", "2", "--n-distractor", "2",
              "--masks", "1,3,6", "--filler", " .", "--seed", "5", "--no-progress"]
    for name, extra in (("before", []), ("after", ["--adapter", adapter])):
        result = run_cli("record", "--model", base, *extra, *common, "--out", root / f"{name}.h5")
        assert result.returncode == 0, result.stderr
    patch = ["--task", "adjective+largest,verb+smallest", "--n", "2", "--n-relevant", "2", "--n-distractor", "2",
             "--corrupt-masks", "6", "--last-k", "1", "--seed", "5", "--no-attribution", "--no-progress"]
    for name, extra in (("before", []), ("after", ["--adapter", adapter])):
        result = run_cli("patch", "--model", base, *extra, *patch, "--out", root / f"patch-{name}.h5")
        assert result.returncode == 0, result.stderr
    stores = [root / f"{kind}{name}.h5" for name in ("before", "after") for kind in ("", "patch-")]
    result = run_cli("compare", *stores, "--held-in", "adjective,animal,profession,place", "--out", root / "report")
    assert result.returncode == 0, result.stderr
    return root, result


def test_compare_tables_hold_the_stores_numbers(compared):
    import pandas as pd

    from mdlm_interp.store import open_store

    root, result = compared
    report = root / "report"
    assert {"report.md", "provenance.json"} <= {p.name for p in report.iterdir()}
    assert (report / "figures" / "accuracy.png").exists() and (report / "figures" / "attention_change.png").exists()
    accuracy = pd.read_csv(report / "tables" / "accuracy.csv")
    models = list(dict.fromkeys(accuracy["model"]))
    assert models[1] == models[0] + "+adapter"  # the adapter's folder name tells the models apart
    with open_store(root / "after.h5") as store:
        rows = store.examples
    for group, categories in (("all", ("adjective", "verb")), ("held-in", ("adjective",)), ("held-out", ("verb",))):
        cell = rows[(rows["masks"] == 6) & ~rows["filler"] & rows["task"].str.split("+").str[0].isin(categories)]
        table = accuracy[(accuracy["model"] == models[1]) & (accuracy["group"] == group) & (accuracy["masks"] == 6)
                         & ~accuracy["filler"]].iloc[0]
        assert table["n"] == len(cell) and table["accuracy"] == pytest.approx(cell["correct"].mean())
    change = pd.read_csv(report / "tables" / "accuracy_change.csv")
    assert set(change["n_pairs"][change["group"] == "all"]) == {8}
    assert (change["low"] <= change["change"] + 1e-12).all() and (change["change"] <= change["high"] + 1e-12).all()
    heads = pd.read_csv(report / "tables" / "attention_heads.csv")
    heads = heads[(heads["masks"] == 6) & ~heads["filler"]]
    moved = pd.read_csv(report / "tables" / "attention_change.csv")
    assert len(moved) == 2 * 4 and set(moved["n_pairs"]) == {8} and set(moved["masks"]) == {6}
    after = heads[heads["model"] == models[1]].sort_values(["layer", "head"])["from_answer"].to_numpy()
    before = heads[heads["model"] == models[0]].sort_values(["layer", "head"])["from_answer"].to_numpy()
    assert moved.sort_values(["layer", "head"])["delta"].to_numpy() == pytest.approx(after - before, abs=1e-5)
    assert "held-out" in result.stdout and "report:" in result.stdout
    from mdlm_interp.analyses import load

    both = load([root / "before.h5", root / "after.h5"])  # `analyze` keeps the adapted model apart too
    assert both.models() == models and not both.notes and len(both.rows) == 2 * len(rows)


def test_compare_puts_the_patching_maps_side_by_side_with_their_paired_change(compared):
    import numpy as np
    import pandas as pd

    from mdlm_interp.analyses.patching import patching_cells
    from mdlm_interp.store.results import open_results

    root, result = compared
    tables = root / "report" / "tables"
    change = pd.read_csv(tables / "patching_change.csv")
    cells = pd.read_csv(tables / "patching_cells.csv")
    models = list(dict.fromkeys(cells["model"]))
    assert len(models) == 2 and set(change["model"]) == {models[1]} and set(change["n_pairs"]) == {4}
    for column, name in (("reference_recovery", "before"), ("recovery", "after")):
        with open_results(root / f"patch-{name}.h5") as store:  # every pair is shared: each model's own recovery
            own = patching_cells(store, resamples=10, min_gap=0)  # compare divides by any gap; tiny models: small
        np.testing.assert_allclose(change[column], own["recovery"], rtol=1e-5, atol=1e-6)  # CSV: 6 digits
    np.testing.assert_allclose(change["change"], change["recovery"] - change["reference_recovery"], atol=1e-5)
    figures = {p.name for p in (root / "report" / "figures").iterdir()}
    assert {f"patching_positions_{m}_1vs6masks_clean_into_corrupt.png" for m in models} <= figures
    assert "patching_change_1vs6masks_corrupt_into_clean.png" in figures
    report = (root / "report" / "report.md").read_text()
    assert f"{models[1]} against {models[0]}, 1 vs 6 masks, clean_into_corrupt (4 shared pairs)" in report
    assert f"{models[1]} against {models[0]}, 1 vs 6 masks, clean_into_corrupt" in result.stdout


def test_compare_refuses_one_model_and_non_stores(compared, tmp_path):
    root, _ = compared
    one = run_cli("compare", root / "before.h5", root / "before.h5", "--out", tmp_path / "x")
    assert one.returncode == 2 and "at least two models" in one.stderr and not (tmp_path / "x").exists()
    bad = tmp_path / "bad.h5"
    bad.write_text("not a store")
    result = run_cli("compare", root / "before.h5", bad, "--out", tmp_path / "x")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and not (tmp_path / "x").exists()
    result = run_cli("compare", root / "before.h5", root / "after.h5", "--held-in", "colour", "--out", tmp_path / "x")
    assert result.returncode == 2 and "unknown categories" in result.stderr


def test_the_shipped_adapters_repair_organism_llada_at_50_masks():
    from mdlm_interp import load_model
    from mdlm_interp.training.evaluate import EvalSetting, loaded_accuracy

    def accuracy(lm, masks):
        return loaded_accuracy(lm, EvalSetting(placement="random", masks=masks), 16, 7_000_000, batch_size=16)

    assert accuracy(load_model("organism-llada"), 50) < 0.2
    for name in ("organism-llada-ma", "organism-llada-ce"):
        lm = load_model("organism-llada", adapter=name)  # shipped adapters go by name
        assert lm.adapter.path.endswith(f"data/adapters/{name}")
        assert accuracy(lm, 50) > 0.9 and accuracy(lm, 1) > 0.9, name
