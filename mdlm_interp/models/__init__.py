"""Hooked decoders for LLaDA, Dream, Llama and Qwen2, loaded from real checkpoints.

Names load on first use, so the light tables of ``models.families`` can be read without torch.
"""

_EXPORTS = {
    "FAMILIES": "mdlm_interp.models.families",
    "FamilySpec": "mdlm_interp.models.families",
    "LoadedModel": "mdlm_interp.models.loader",
    "load_model": "mdlm_interp.models.loader",
    "logits_at": "mdlm_interp.models.readout",
    "DecoderConfig": "mdlm_interp.models.transformer",
    "HookedDecoder": "mdlm_interp.models.transformer",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mdlm_interp.models' has no attribute {name!r}")


__all__ = list(_EXPORTS)
