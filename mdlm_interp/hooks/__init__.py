"""Hook functions over the standard TransformerLens hook names: recorders that reduce activations
on the fly (one protocol, see ``recorders``; routing at the masks in ``routing``), interventions
(``interventions``; experts as units in ``experts``)."""

from mdlm_interp.hooks.recorders import (
    AttentionRecorder,
    GradientRecorder,
    LensRecorder,
    PredictionRecorder,
    distribution_stats,
    supports_probes,
)
from mdlm_interp.hooks.routing import RoutingRecorder

__all__ = ["AttentionRecorder", "GradientRecorder", "LensRecorder", "PredictionRecorder", "RoutingRecorder",
           "distribution_stats", "supports_probes"]
