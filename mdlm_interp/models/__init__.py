"""Hooked decoders for LLaDA, Dream, Llama and Qwen2, loaded from real checkpoints."""

from mdlm_interp.models.families import FAMILIES, FamilySpec
from mdlm_interp.models.loader import LoadedModel, load_model
from mdlm_interp.models.readout import logits_at
from mdlm_interp.models.transformer import DecoderConfig, HookedDecoder

__all__ = ["FAMILIES", "DecoderConfig", "FamilySpec", "HookedDecoder", "LoadedModel", "load_model", "logits_at"]
