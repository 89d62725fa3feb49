"""Checkpoint loading: sharded and bf16 weights, strictness, corrupt files, hub ids, and the model CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mdlm_interp import load_model
from mdlm_interp.errors import UsageError
from mdlm_interp.models.random_checkpoint import write_random_checkpoint
from mdlm_interp.tasks import tokenizer_corpus

from cli_run import run_cli


def run_cli_process(*args, env=None):
    """Run ``python -m mdlm_interp ARGS`` in a fresh process (for environment variables read at import)."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "mdlm_interp", *args], capture_output=True, text=True, env=full_env)


def test_sharded_bf16_checkpoint_loads_like_the_single_file(tmp_path, tiny_checkpoint):
    sharded = write_random_checkpoint("dream", tmp_path / "sharded", tokenizer_corpus(), seed=0, dtype=torch.bfloat16,
                                      max_shard_bytes=60_000)
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) >= 3 and (sharded / "model.safetensors.index.json").exists()
    assert not (sharded / "model.safetensors").exists()
    lm_bf16 = load_model(sharded, dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in lm_bf16.model.parameters())
    lm32 = load_model(tiny_checkpoint("dream"))
    for (name, ours), (_, ref) in zip(lm_bf16.model.named_parameters(), lm32.model.named_parameters()):
        torch.testing.assert_close(ours, ref.to(torch.bfloat16), atol=0, rtol=0, msg=name)
    ids = torch.randint(0, 200, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        close = (lm_bf16.model(ids).float() - lm32.model(ids)).abs().max()
    assert close < 0.05


def test_random_checkpoints_are_deterministic(tmp_path):
    a = write_random_checkpoint("llada", tmp_path / "a", tokenizer_corpus(), seed=3)
    b = write_random_checkpoint("llada", tmp_path / "b", tokenizer_corpus(), seed=3)
    c = write_random_checkpoint("llada", tmp_path / "c", tokenizer_corpus(), seed=4)
    for name in ["model.safetensors", "config.json", "tokenizer.json"]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_config_uses_the_real_field_names(tiny_checkpoint):
    llada = json.loads((tiny_checkpoint("llada") / "config.json").read_text())
    for key in ["d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size", "embedding_size", "rope_theta",
                "max_sequence_length", "include_qkv_bias", "weight_tying", "mask_token_id", "block_type"]:
        assert key in llada, key
    assert llada["n_kv_heads"] < llada["n_heads"]  # grouped-query attention in the tiny preset
    dream = json.loads((tiny_checkpoint("dream") / "config.json").read_text())
    assert dream["model_type"] == "Dream" and dream["num_key_value_heads"] < dream["num_attention_heads"]
    names = load_file(str(tiny_checkpoint("dream") / "model.safetensors")).keys()
    assert "model.layers.0.self_attn.q_proj.bias" in names and "model.layers.0.self_attn.o_proj.bias" not in names
    assert (tiny_checkpoint("dream") / "vocab.json").exists() and (tiny_checkpoint("dream") / "merges.txt").exists()
    llada_names = load_file(str(tiny_checkpoint("llada") / "model.safetensors")).keys()
    assert {"model.transformer.wte.weight", "model.transformer.ff_out.weight",
            "model.transformer.blocks.1.up_proj.weight", "model.transformer.blocks.1.attn_out.weight"} <= set(llada_names)


def copy_checkpoint(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for file in src.iterdir():
        (dst / file.name).write_bytes(file.read_bytes())
    return dst


def edit_tensors(path: Path, edit) -> None:
    tensors = load_file(str(path / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(path / "model.safetensors"))


@pytest.mark.parametrize("problem,expected", [
    ("missing", "missing 1 tensor(s), e.g. model.transformer.blocks.1.ff_norm.weight"),
    ("unexpected", "unexpected tensor(s), e.g. model.transformer.blocks.0.extra.weight"),
    ("shape", "tensor model.transformer.ln_f.weight has shape [3], expected [64]"),
    ("truncated", "corrupted safetensors file"),
    ("mask", "mask_token_id=5 but the tokenizer's '<|mdm_mask|>' is id"),
])
def test_broken_checkpoints_give_one_line_errors(problem, expected, tmp_path, tiny_checkpoint):
    path = copy_checkpoint(tiny_checkpoint("llada"), tmp_path / "ck")
    if problem == "missing":
        edit_tensors(path, lambda t: t.pop("model.transformer.blocks.1.ff_norm.weight"))
    elif problem == "unexpected":
        edit_tensors(path, lambda t: t.update({"model.transformer.blocks.0.extra.weight": torch.zeros(2)}))
    elif problem == "shape":
        edit_tensors(path, lambda t: t.update({"model.transformer.ln_f.weight": torch.zeros(3)}))
    elif problem == "truncated":
        data = (path / "model.safetensors").read_bytes()
        (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    else:
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps(dict(config, mask_token_id=5)))
    with pytest.raises(UsageError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]").replace("|", r"\|")):
        load_model(path)
    result = run_cli("model", "info", str(path))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and expected.split(",")[0] in result.stderr


def test_missing_shard_is_named(tmp_path):
    path = write_random_checkpoint("llama", tmp_path / "ck", tokenizer_corpus(), max_shard_bytes=60_000)
    victim = sorted(path.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(UsageError, match=f"shard {victim.name} listed"):
        load_model(path)


def test_pickle_only_checkpoint_is_refused(tmp_path, tiny_checkpoint):
    path = copy_checkpoint(tiny_checkpoint("llama"), tmp_path / "ck")
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    with pytest.raises(UsageError, match="only pickle weights"):
        load_model(path)


def test_hub_id_resolves_through_the_local_cache(tmp_path, tiny_checkpoint):
    snapshot = tmp_path / "hub" / "models--GSAI-ML--LLaDA-tiny" / "snapshots" / "0123abc"
    snapshot.parent.mkdir(parents=True)
    copy_checkpoint(tiny_checkpoint("llada"), snapshot)
    refs = tmp_path / "hub" / "models--GSAI-ML--LLaDA-tiny" / "refs"
    refs.mkdir()
    (refs / "main").write_text("0123abc")
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    result = run_cli_process("model", "info", "GSAI-ML/LLaDA-tiny", "--json", env=env)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["family"] == "llada" and info["path"] == str(snapshot)
    missing = run_cli_process("model", "info", "GSAI-ML/LLaDA-8B-Instruct", env=env)
    assert missing.returncode == 2
    assert "GSAI-ML/LLaDA-8B-Instruct" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1


def test_cli_init_and_info(tmp_path):
    out = tmp_path / "qwen"
    result = run_cli("model", "init", "--family", "qwen2", "--preset", "tiny", "--seed", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    info = json.loads(run_cli("model", "info", str(out), "--json").stdout)
    lm = load_model(out)
    assert info["n_params"] == sum(p.numel() for p in lm.model.parameters()) == lm.config.n_params
    assert info["family"] == "qwen2" and info["causal"] and info["prediction_offset"] == -1
    assert info["special_tokens"]["eos"]["token"] == "<|endoftext|>"
    text = run_cli("model", "info", str(out)).stdout
    assert "qwen2" in text and f"{info['n_params']:,}" in text
    bad = run_cli("model", "init", "--family", "gpt2", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2
    assert run_cli("model", "info", str(tmp_path / "nowhere")).returncode == 2


def test_fingerprint_changes_with_any_weight(tmp_path, tiny_checkpoint, monkeypatch):
    from mdlm_interp.models import checkpoint

    path = copy_checkpoint(tiny_checkpoint("llama"), tmp_path / "ck")
    before = checkpoint.weights_fingerprint(path)
    assert before.startswith("sha256:") and before == checkpoint.weights_fingerprint(tiny_checkpoint("llama"))
    monkeypatch.setattr(checkpoint, "FULL_HASH_LIMIT", 0)  # force the sampled fingerprint of large checkpoints
    sampled = checkpoint.weights_fingerprint(path)
    assert sampled.startswith("sampled-sha256:")
    edit_tensors(path, lambda t: t["model.norm.weight"].add_(1.0))
    assert checkpoint.weights_fingerprint(path) != sampled
    monkeypatch.setattr(checkpoint, "FULL_HASH_LIMIT", 1 << 30)
    assert checkpoint.weights_fingerprint(path) != before


def test_a_new_family_is_one_spec(tmp_path, monkeypatch):
    """Adding a family touches models/families.py only: a spec registered in FAMILIES is offered by the CLI,
    written with its own names and read back by load_model."""
    import dataclasses

    from mdlm_interp.models import families

    mistral = dataclasses.replace(families.LLAMA, family="mistral", model_types=("mistral",),
                                  architecture="MistralForCausalLM", default_rope_theta=1e6)
    monkeypatch.setitem(families.FAMILIES, "mistral", mistral)
    result = run_cli("model", "init", "--family", "mistral", "--seed", "2", "--out", tmp_path / "m")
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model_type"] == "mistral" and config["architectures"] == ["MistralForCausalLM"]
    assert config["rope_theta"] == 1e6
    lm = load_model(tmp_path / "m")
    assert lm.spec is mistral and lm.config.causal and lm.config.rope_theta == 1e6
    assert "mistral" in run_cli("model", "init", "--help").stdout
