"""mdlm-interp: mechanistic interpretability of masked diffusion language models.

Heavy submodules load on first use, so ``import mdlm_interp`` (and ``mdlm-interp --help``) stay fast.
"""

from mdlm_interp.version import __version__


def __getattr__(name: str):
    if name in ("load_model", "LoadedModel"):
        from mdlm_interp import models

        return getattr(models, name)
    if name == "record":
        from mdlm_interp.record import record

        return record
    raise AttributeError(f"module 'mdlm_interp' has no attribute {name!r}")


__all__ = ["__version__", "load_model", "LoadedModel", "record"]
