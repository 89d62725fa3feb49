"""mdlm-interp: mechanistic interpretability of masked diffusion language models.

Heavy submodules load on first use, so ``import mdlm_interp`` (and ``mdlm-interp --help``) stay fast.
``mdlm_interp.record`` is the module of the recording loop (``RecordConfig``, ``record``); the
function that records the task suite into a store is exported here as ``record_store``, a name no
submodule takes, so importing ``mdlm_interp.record`` can never shadow it.

Importing the package registers the toolkit's own result kinds (``mdlm_interp.circuits.schemas``: pure
data, no torch, no h5py), so every reader of result stores knows them without importing the experiments.
"""

import importlib

import mdlm_interp.circuits.schemas  # noqa: F401  (registers the patching and ablation result kinds)
import mdlm_interp.steps.schemas  # noqa: F401  (registers the steps and step_patching kinds)
from mdlm_interp.version import __version__


def __getattr__(name: str):
    if name in ("load_model", "LoadedModel"):
        from mdlm_interp import models

        return getattr(models, name)
    if name == "record_store":
        from mdlm_interp.record import record

        return record
    if name == "record":  # the submodule, as after ``import mdlm_interp.record``
        return importlib.import_module("mdlm_interp.record")
    raise AttributeError(f"module 'mdlm_interp' has no attribute {name!r}")


__all__ = ["__version__", "load_model", "LoadedModel", "record_store"]
