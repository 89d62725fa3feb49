"""Random checkpoints for tests and benchmarks: a family's real config fields, parameter names and
special tokens, random weights, and a small byte-level BPE tokenizer trained on the texts it is given."""

import json
import os
from pathlib import Path

import torch
from torch import nn

from mdlm_interp.errors import UsageError
from mdlm_interp.models.checkpoint import config_json, save_weights
from mdlm_interp.models.families import FAMILIES, SHAPE_PRESETS
from mdlm_interp.models.tokenizer import write_tiny_tokenizer
from mdlm_interp.models.transformer import HookedDecoder


def write_random_checkpoint(
    family: str,
    out_dir: str | os.PathLike,
    corpus: list[str],
    preset: str = "tiny",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    max_shard_bytes: int | None = None,
    overrides: dict | None = None,
) -> Path:
    """Write a complete random checkpoint directory (config, safetensors, tokenizer); return its path.

    Real config field names and parameter names of ``family``; a byte-level BPE tokenizer trained on
    ``corpus`` (texts; frequent ones become single tokens, e.g. ``mdlm_interp.tasks.tokenizer_corpus()``
    for the task suite's words) with the family's special tokens. The same arguments give the same files.
    """
    if family not in FAMILIES:
        raise UsageError(f"unknown family '{family}' (choose from {', '.join(FAMILIES)})")
    if preset not in SHAPE_PRESETS:
        raise UsageError(f"unknown preset '{preset}' (choose from {', '.join(SHAPE_PRESETS)})")
    spec = FAMILIES[family]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    special_ids = write_tiny_tokenizer(out, spec, corpus, vocab_size=256 + len(set(corpus)) + 64)
    d_vocab = -(-(max(special_ids.values()) + 1) // 64) * 64  # padded like real vocabularies
    cfg = spec.preset_config(preset, d_vocab, overrides)
    model = HookedDecoder(cfg)
    randomize(model, seed)
    save_weights(model, spec, out, dtype, max_shard_bytes)
    (out / "config.json").write_text(json.dumps(config_json(spec, cfg, special_ids, dtype), indent=2) + "\n")
    return out


NORM_WEIGHTS = ("ln1.weight", "ln2.weight", "ln_final.weight", "q_norm.weight", "k_norm.weight")


def randomize(model: nn.Module, seed: int) -> None:
    """Fill every parameter deterministically: N(0, 0.02) matrices and biases, norm weights near 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith(NORM_WEIGHTS):
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(0.02 * noise)
