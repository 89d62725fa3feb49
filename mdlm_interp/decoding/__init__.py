"""Iterative unmasking: LLaDA's, Dream's and LLaDA2's samplers, their configs, text generation and step traces.

- ``decoding.config``: ``LLaDASamplerConfig``, ``DreamSamplerConfig``, ``LLaDA2SamplerConfig`` (one frozen
  dataclass per sampler,
  the single source of its options and of their checks; no torch);
- ``decoding.samplers``: ``llada_generate``, ``dream_generate`` (a prompt and n masks),
  ``llada_unmask``, ``dream_unmask`` (a given canvas), ``DecodeStep`` (what ``on_step`` sees);
- ``decoding.setting``: ``DecodeConfig``, the ``record --decode`` setting;
- ``decoding.text``: ``generate_text`` (prompts as text in, ``Generation`` out);
- ``decoding.trace``: ``StepTrace`` (an ``on_step`` callback keeping every step) and ``write_trace``.

Every name is importable from here (``from mdlm_interp.decoding import llada_generate``); they load on
first use, so that importing ``decoding.config`` (the command line's flags) does not import torch.
"""

import importlib

EXPORTS = {
    "config": ("LLaDASamplerConfig", "DreamSamplerConfig", "LLaDA2SamplerConfig", "SAMPLER_CONFIGS", "LLADA_REMASKING", "DREAM_ALGORITHMS",
               "sampler_config", "config_class"),
    "samplers": ("DecodeStep", "OnStep", "ForwardKwargs", "llada_generate", "dream_generate", "llada_unmask",
                 "dream_unmask", "append_masks", "tokens_per_step", "sample_tokens", "nucleus_filter",
                 "top_k_filter"),
    "block_sampler": ("llada2_generate", "llada2_unmask"),
    "setting": ("DecodeConfig", "GREEDY_ALGORITHMS"),
    "text": ("Generation", "generate_text", "text_sampler_config"),
    "trace": ("StepTrace", "write_trace"),
}
_HOME = {name: module for module, names in EXPORTS.items() for name in names}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    """Load the submodule that defines ``name`` and return it (PEP 562)."""
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
