"""``load_model``: a checkpoint directory, organism name or hub id -> a hooked model and its tokenizer."""

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mdlm_interp.errors import UsageError
from mdlm_interp.resources import check_fits
from mdlm_interp.models.adapter import AdapterInfo, apply_adapter, check_adapter_dir
from mdlm_interp.models.checkpoint import load_weights, read_config, resolve_checkpoint, weights_fingerprint
from mdlm_interp.models.families import DTYPE_NAMES, FamilySpec, family_for_config
from mdlm_interp.models.readout import logits_at
from mdlm_interp.models.tokenizer import check_special_ids, load_tokenizer
from mdlm_interp.models.transformer import DecoderConfig, HookedDecoder


@dataclass
class LoadedModel:
    """A loaded checkpoint: the hooked decoder, its tokenizer and its family."""

    model: HookedDecoder
    tokenizer: object
    spec: FamilySpec
    config: DecoderConfig
    mask_token_id: int | None
    source: str  # what the user asked for (path, organism name or hub id)
    path: Path  # the resolved local directory
    adapter: AdapterInfo | None = None  # the LoRA adapter loaded onto the weights, if any

    def logits_at(self, logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Return the logits predicting the tokens at ``positions`` ([batch] or [batch, k]), offset applied."""
        return logits_at(logits, positions, self.spec.prediction_offset)

    def fingerprint(self) -> str:
        """Return the fingerprint of the checkpoint's weights (see ``weights_fingerprint``)."""
        return weights_fingerprint(self.path)


DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """Return a torch dtype from a name ("float32", "bfloat16", "float16") or dtype; None -> float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype '{dtype}' (choose from {', '.join(DTYPES)})")
    return DTYPES[dtype]


def parse_device(device: str | torch.device) -> torch.device:
    """Return ``device`` as a torch device this machine has; ``UsageError`` for an unknown name, or for
    a CUDA or MPS device that is not available."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"unknown device {str(device)!r} (e.g. cpu, cuda, cuda:1, mps)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {str(device)!r}: CUDA is not available on this machine")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UsageError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device {str(device)!r}: MPS is not available on this machine")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"device {str(device)!r}: use cpu, cuda or mps")
    return parsed


def load_model(
    name_or_path: str | os.PathLike, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None,
    adapter: str | os.PathLike | None = None, merge_adapter: bool = False,
) -> LoadedModel:
    """Load a LLaDA, Dream, Llama or Qwen2 checkpoint with the toolkit's own model code.

    ``name_or_path`` is a checkpoint directory, ``organism-NAME`` or a hub id found in the local
    Hugging Face cache. Weights come from safetensors only, strictly by name and shape, into a model
    built without allocating; ``dtype`` defaults to float32. The model is in eval mode with
    ``requires_grad`` off for its parameters, and carries the tokenizer (``model.to_tokens``,
    ``model.to_string``), prepending BOS by default where the family's prompts start with it.
    ``adapter``: a LoRA adapter directory in peft's format (``models.adapter``), loaded onto the
    weights, or with ``merge_adapter`` folded into them.
    """
    device = parse_device(device)
    if merge_adapter and adapter is None:
        raise UsageError("--merge-adapter needs --adapter DIR: there is no adapter to merge")
    if adapter is not None:
        adapter = check_adapter_dir(adapter)  # before any weight is read; apply_adapter takes the checked folder
    path = resolve_checkpoint(name_or_path)
    config = read_config(path)
    spec = family_for_config(config)
    cfg = spec.decoder_config(config)
    tokenizer = load_tokenizer(path, spec)
    spec = check_special_ids(tokenizer, spec, config, str(path))
    mask_token_id = tokenizer.convert_tokens_to_ids(spec.mask_token) if spec.mask_token else None
    torch_dtype = parse_dtype(dtype)
    check_fits(f"the weights of {name_or_path} ({cfg.n_layers} layers, d_model {cfg.d_model})",
               cfg.n_params * torch.finfo(torch_dtype).bits / 8)
    with torch.device("meta"):
        model = HookedDecoder(cfg)
    load_weights(model, path, spec, torch_dtype, device)
    model.cfg.device = str(model.W_E.device)
    model.eval()
    model.tokenizer = tokenizer
    bos = spec.special_tokens.get("bos")
    model.default_prepend_bos = bos is not None and spec.chat_template.startswith(bos)
    info = None
    if adapter is not None:
        model, info = apply_adapter(model, adapter, merge_adapter, weights_fingerprint(path))
    return LoadedModel(model, tokenizer, spec, model.cfg, mask_token_id, str(name_or_path), path, info)
