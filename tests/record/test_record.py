"""Recording: every recorded quantity against a brute-force computation, batching, the bridge, resume, errors."""

import json
import signal
import subprocess
import sys
import time
from functools import partial

import h5py
import numpy as np
import pytest
import torch

from mdlm_interp.errors import UsageError
from mdlm_interp.hooks import AttentionRecorder
from mdlm_interp.record import RecordConfig, Subject, record, record_batch, recorder_factories, subject_from
from mdlm_interp.store import open_store
from mdlm_interp.tasks import PromptConfig, sample_prompt, single_token_words, tokenize_prompt

from cli_run import run_cli

TASKS = ["adjective+largest", "verb+smallest"]


def prompts_for(lm, masks, n=3, placement="random", filler=None, n_distractor=12):
    words = single_token_words(lm.tokenizer)
    return [tokenize_prompt(sample_prompt(PromptConfig(TASKS[i % 2], 4, n_distractor, placement), seed=i, words=words),
                            lm.tokenizer, mask_token_id=lm.mask_token_id, causal=lm.spec.causal,
                            masks=0 if lm.spec.causal else masks, filler=filler)
            for i in range(n)]


def brute_force(module, tp, offset: int) -> dict:
    """Everything the recorders reduce, computed the slow way from one unpadded prompt."""
    ids = torch.tensor(tp.input_ids)[None]
    readout = tp.answer_position + offset
    logits, cache = module.run_with_cache(ids)
    n_layers = len(module.blocks)
    patterns = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][0] for l in range(n_layers)])  # [L, H, q, k]
    mask_start, mask_end = tp.spans["masks"]
    appended_end = max(tp.answer_position + 1, mask_end) if not tp.spans["answer"][0] >= len(tp.input_ids) else 0
    relevant = torch.zeros(len(tp.input_ids), dtype=torch.bool)
    for index in tp.relevant_examples:
        relevant[slice(*tp.example_spans[index])] = True
    context = [q for q in range(len(tp.input_ids)) if not tp.answer_position <= q < appended_end]
    to_masks = patterns[..., mask_start:mask_end].sum(-1)  # [L, H, q]
    out = {
        "attention/mask_mass_from_answer": to_masks[..., readout],
        "attention/relevant_mass_from_answer": patterns[:, :, readout][..., relevant].sum(-1),
        "attention/mask_mass_from_context": to_masks[..., context].mean(-1),
    }
    stages = [cache["blocks.0.hook_resid_pre"]] + [cache[f"blocks.{l}.hook_resid_post"] for l in range(n_layers)]
    lens = [module.unembed(module.ln_final(resid))[0, readout].log_softmax(-1) for resid in stages]
    out["lens/p_answer"] = torch.stack([lp[tp.answer_id].exp() for lp in lens])
    out["lens/entropy"] = torch.stack([-(lp.exp() * lp).sum() for lp in lens])
    out["lens/rank"] = torch.stack([(lp > lp[tp.answer_id]).sum() for lp in lens])
    embeddings = {}

    def leaf(x, hook):
        embeddings["x"] = x.detach().requires_grad_(True)
        return embeddings["x"]

    with torch.enable_grad():
        logits = module.run_with_hooks(ids, fwd_hooks=[("hook_embed", leaf)])
        logits[0, readout, tp.answer_id].backward()
    norms = embeddings["x"].grad[0].norm(dim=-1)
    share = norms / norms.sum()
    appended = [q for q in range(len(tp.input_ids)) if q not in context]
    before = [q for q in context if q < tp.answer_position][-50:]
    out["gradients/norms"] = norms
    out["gradients/mask_mean"] = share[appended].mean() if appended else torch.tensor(float("nan"))
    out["gradients/last50_mean"] = share[before].mean()
    out["gradients/nonmask_mean"] = share[context].mean()
    probs = logits[0, readout].detach().softmax(-1)
    out["examples/p_answer"] = probs[tp.answer_id]
    out["examples/predicted_id"] = probs.argmax()
    return out


@pytest.mark.parametrize("family,masks", [("llada", 7), ("dream", 7), ("llama", 0), ("dream", 1)])
@pytest.mark.parametrize("use_probes", [True, False])
def test_recorded_quantities_equal_brute_force(family, masks, use_probes, tiny_model):
    lm = tiny_model(family)
    subject = subject_from(lm, None, None, None, False, False)
    batch = prompts_for(lm, masks, n=4, n_distractor=6)
    batch[1] = prompts_for(lm, masks, n=2, n_distractor=14)[1]  # a longer prompt, so the batch is padded
    config = RecordConfig(top_k=5, n_relevant=4)
    factories = {**recorder_factories(config), "attention": partial(AttentionRecorder, use_probes=use_probes)}
    columns = record_batch(subject, batch, config, factories)
    assert len({len(tp.input_ids) for tp in batch}) > 1
    for row, tp in enumerate(batch):
        expected = brute_force(lm.model, tp, lm.spec.prediction_offset)
        for name, value in expected.items():
            got = columns[name][row]
            np.testing.assert_allclose(np.asarray(got, dtype=np.float64), value.detach().double().numpy(),
                                       atol=1e-5, rtol=1e-4, err_msg=f"{family} {name} row {row}")
    if masks > 1:
        assert columns["attention/mask_mass_from_answer"].max() > 0.01


def test_dream_offset_is_applied(tiny_model):
    lm = tiny_model("dream")
    tp = prompts_for(lm, 3, n=1)[0]
    subject = subject_from(lm, None, None, None, False, False)
    shifted = Subject(**{**subject.__dict__, "prediction_offset": 0})
    config = RecordConfig(record=["lens"], top_k=5, n_relevant=4)
    with_offset = record_batch(subject, [tp], config)
    without = record_batch(shifted, [tp], config)
    with torch.no_grad():
        logits = lm.model(torch.tensor(tp.input_ids)[None])[0]
    expected = logits[tp.answer_position - 1].softmax(-1)[tp.answer_id].item()
    assert with_offset["examples/p_answer"][0] == pytest.approx(expected, rel=1e-5)
    assert without["examples/p_answer"][0] != pytest.approx(expected, rel=1e-3)


def read_all(path) -> dict:
    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def assert_same_rows(a: dict, b: dict, atol=0.0):
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name], b[name]
        if x.dtype == object:  # vlen rows or strings
            for xi, yi in zip(x, y):
                if isinstance(xi, np.ndarray) and xi.dtype.kind == "f":
                    np.testing.assert_allclose(xi, yi, atol=atol, err_msg=name)
                else:
                    np.testing.assert_array_equal(xi, yi, err_msg=name)
        elif x.dtype.kind == "f":
            np.testing.assert_allclose(x, y, atol=atol, err_msg=name)
        else:
            np.testing.assert_array_equal(x, y, err_msg=name)


def test_batch_size_one_and_eight_agree(tmp_path, tiny_model):
    lm = tiny_model("llada")
    kwargs = dict(tasks=TASKS, masks=[1, 5], filler=" .", placements=["random", "relevant-at:3"], n=3,
                  n_relevant=4, n_distractor=10, progress=False, seed=5)
    one = record(lm, out=tmp_path / "one.h5", batch_size=1, **kwargs)
    eight = record(lm, out=tmp_path / "eight.h5", batch_size=8, **kwargs)
    assert_same_rows(read_all(one), read_all(eight), atol=1e-5)
    with open_store(eight) as store:
        frame = store.examples
        assert len(frame) == 3 * 2 * 2 * 3  # conditions (1, 5, 5+filler) x placements x tasks x n
        assert set(frame["placement"]) == {"random", "relevant-at:3"}
        assert frame.groupby(["masks", "filler"]).size().to_dict() == {(1, False): 12, (5, False): 12, (5, True): 12}
        # the same example under every condition is the same prompt: same answer
        assert frame.groupby("example")["answer_id"].nunique().max() == 1
        filler_rows = frame.index[frame["filler"]]
        ids = store.tokens(int(filler_rows[0]))
        mask_id = lm.mask_token_id
        assert (ids == mask_id).sum() == 1  # the answer slot alone is a mask
        assert store.attrs["family"] == "llada" and store.attrs["status"] == "complete"
        assert store.attrs["weights_fingerprint"] == lm.fingerprint()


def test_transformer_lens_bridge_records_through_the_same_api(tmp_path, tiny_model):
    from transformer_lens.model_bridge import TransformerBridge

    lm = tiny_model("llada")
    bridge = TransformerBridge.boot_native({
        "d_model": 32, "n_layers": 2, "n_heads": 4, "d_head": 8, "d_mlp": 64, "d_vocab": lm.config.d_vocab,
        "n_ctx": 512, "attention_dir": "bidirectional", "seed": 0, "act_fn": "gelu", "normalization_type": "LN"})
    out = record(bridge, lm.tokenizer, out=tmp_path / "bridge.h5", mask_token_id=lm.mask_token_id,
                 prediction_offset=0, tasks=TASKS, masks=[4], n=2, n_relevant=4, n_distractor=6, batch_size=1,
                 progress=False)
    subject = subject_from(bridge, lm.tokenizer, lm.mask_token_id, 0, False, False)
    tp = prompts_for(lm, 4, n=1, n_distractor=6)[0]
    expected = brute_force(bridge, tp, 0)
    got = record_batch(subject, [tp], RecordConfig(top_k=5, n_relevant=4))
    for name in ("attention/mask_mass_from_answer", "lens/p_answer", "gradients/mask_mean"):
        np.testing.assert_allclose(got[name][0], expected[name].detach().numpy(), atol=1e-5, rtol=1e-4)
    with open_store(out) as store:
        assert store.n_rows == 4 and store.attrs["family"] == "custom"
        assert store.attention["mask_mass_from_answer"].shape == (4, 2, 4)


def test_killed_run_resumes_to_the_same_store(tmp_path, tiny_checkpoint):
    model = str(tiny_checkpoint("llada"))
    common = ["record", "--model", model, "--task", ",".join(TASKS), "--masks", "1,3", "--n", "80",
              "--n-relevant", "4", "--n-distractor", "8", "--batch-size", "4", "--no-progress"]
    full = tmp_path / "full.h5"
    assert run_cli(*common, "--out", str(full)).returncode == 0
    killed = tmp_path / "killed.h5"
    process = subprocess.Popen([sys.executable, "-m", "mdlm_interp", *common, "--out", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and process.poll() is None:
        try:
            with h5py.File(killed, "r", swmr=True, locking=False) as f:
                done = int(f.attrs["n_rows_done"])
        except (OSError, KeyError):
            pass
        if done >= 64:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 64 <= done < 320, "the run should be killed part-way"
    again = run_cli(*common, "--out", str(killed))
    assert again.returncode == 2 and "--resume" in again.stderr  # refused, untouched
    changed = run_cli(*[a if a != "1,3" else "1,4" for a in common], "--out", str(killed), "--resume")
    assert changed.returncode == 2 and "masks" in changed.stderr
    resumed = run_cli(*common, "--out", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_rows(read_all(full), read_all(killed))
    with open_store(killed) as store:
        assert store.attrs["status"] == "complete"


def test_existing_output_is_left_untouched(tmp_path, tiny_checkpoint):
    out = tmp_path / "exists.h5"
    out.write_bytes(b"precious")
    result = run_cli("record", "--model", str(tiny_checkpoint("llada")), "--out", str(out), "--n", "1")
    assert result.returncode == 2 and out.read_bytes() == b"precious"


@pytest.mark.parametrize("args,message", [
    (["--model", "/nonexistent/model"], "no checkpoint directory"),
    (["--task", "colour+largest"], "unknown task"),
    (["--masks", "0"], "masks must be at least 1"),
    (["--n-distractor", "400"], "longer than the model's context"),
    (["--record", "attention,weights"], "unknown --record"),
    (["--out", "/nonexistent-dir/x.h5"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, tiny_checkpoint):
    base = {"--model": str(tiny_checkpoint("llada")), "--out": str(tmp_path / "x.h5")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    flat = [item for pair in base.items() for item in pair] + [a for a in args if a not in base and a not in base.values()]
    result = run_cli("record", *flat, "--n", "1", "--no-progress")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.h5").exists()


def test_causal_models_refuse_masks_and_bare_modules_need_a_mask_id(tmp_path, tiny_checkpoint, tiny_model):
    result = run_cli("record", "--model", str(tiny_checkpoint("llama")), "--masks", "5", "--out", str(tmp_path / "c.h5"))
    assert result.returncode == 2 and "causal" in result.stderr
    with pytest.raises(UsageError, match="no mask token"):
        record(tiny_model("llada").model, tiny_model("llada").tokenizer, out=tmp_path / "b.h5", prediction_offset=0)
    assert not (tmp_path / "b.h5").exists()


def test_summary_json(tmp_path, tiny_model):
    out = record(tiny_model("dream"), out=tmp_path / "s.h5", tasks=TASKS, masks=[1, 3], n=2, n_relevant=4,
                 n_distractor=6, progress=False)
    result = run_cli("summary", str(out), "--json")
    conditions = json.loads(result.stdout)["conditions"]
    with open_store(out) as store:
        frame = store.examples
    assert [(c["masks"], c["filler"], c["placement"], c["n"]) for c in conditions] == \
        [(1, False, "random", 4), (3, False, "random", 4)]
    for condition in conditions:
        rows = frame[frame["masks"] == condition["masks"]]
        assert condition["accuracy"] == pytest.approx(rows["correct"].mean())


def free_port() -> int:
    """Return a TCP port that is free on this machine now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_torchrun_shards_merge_into_the_single_process_store(tmp_path, tiny_checkpoint, process_group_lock):
    common = ["record", "--model", str(tiny_checkpoint("dream")), "--task", ",".join(TASKS), "--masks", "1,4",
              "--n-prompts", "5", "--n-relevant", "4", "--n-distractor", "6", "--batch-size", "3", "--no-progress"]
    single = tmp_path / "single.h5"
    assert run_cli(*common, "--out", str(single)).returncode == 0
    merged = tmp_path / "merged.h5"
    with process_group_lock():
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                                 "--master-port", str(free_port()), "-m", "mdlm_interp", *common, "--out",
                                 str(merged)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "merged.shard0-of-2.h5").exists() and (tmp_path / "merged.shard1-of-2.h5").exists()
    assert_same_rows(read_all(single), read_all(merged), atol=1e-5)
    with open_store(merged) as store:
        assert store.n_rows == 20 and len(store.attrs["merged_from"]) == 2
        assert list(store.examples["row"]) == list(range(20))


def test_checkpoint_whose_tokenizer_lacks_the_mask_token_is_refused(tmp_path, tiny_checkpoint):
    path = tmp_path / "nomask"
    path.mkdir()
    for file in tiny_checkpoint("llada").iterdir():
        data = file.read_bytes()
        (path / file.name).write_bytes(data.replace(b"<|mdm_mask|>", b"<|not_mask|>") if "tokenizer" in file.name
                                       else data)
    result = run_cli("record", "--model", str(path), "--out", str(tmp_path / "x.h5"), "--n", "1")
    assert result.returncode == 2 and "no mask token '<|mdm_mask|>'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.h5").exists()


def test_decoding_groups_a_batch_by_each_rows_condition(tiny_model):
    """Dream's sampler schedules a whole batch from its mean mask count: the filler control (one mask) and
    the masks at the same count must decode apart, each row as it would alone."""
    from mdlm_interp.plan import plan_prompts

    lm = tiny_model("dream")
    subject = subject_from(lm)
    config = RecordConfig(tasks=TASKS[0], masks=(4,), filler=" .", n=2, n_relevant=2, n_distractor=3, record=(),
                          top_k=5, decode="dream")
    rows = config.rows(config.conditions(causal=False))
    assert [row.condition.filler for row in rows] == [False, False, True, True]
    prompts = plan_prompts(subject, config, rows)
    together = record_batch(subject, prompts, config)
    for index, prompt in enumerate(prompts):
        alone = record_batch(subject, [prompt], config)
        for name in ("decode/masks_left", "decode/step_predicted_id", "decode/unmask_step", "decode/predicted_id"):
            np.testing.assert_array_equal(together[name][index], alone[name][0], err_msg=name)
    assert together["decode/masks_left"][2][0] == 1 and together["decode/masks_left"][0][0] == 4
