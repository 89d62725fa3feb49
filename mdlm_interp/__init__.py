"""mdlm-interp: mechanistic interpretability of masked diffusion language models.

Heavy submodules load on first use, so ``import mdlm_interp`` (and ``mdlm-interp --help``) stay fast.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mdlm-interp")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"


def __getattr__(name: str):
    if name in ("load_model", "LoadedModel"):
        from mdlm_interp import models

        return getattr(models, name)
    if name == "record":
        from mdlm_interp.record import record

        return record
    raise AttributeError(f"module 'mdlm_interp' has no attribute {name!r}")


__all__ = ["__version__", "load_model", "LoadedModel", "record"]
