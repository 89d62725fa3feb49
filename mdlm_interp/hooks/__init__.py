"""Hook functions over the standard TransformerLens hook names: recorders that reduce activations
on the fly (one protocol, see ``recorders``)."""

from mdlm_interp.hooks.recorders import (
    AttentionRecorder,
    GradientRecorder,
    LensRecorder,
    PredictionRecorder,
    distribution_stats,
    supports_probes,
)

__all__ = ["AttentionRecorder", "GradientRecorder", "LensRecorder", "PredictionRecorder", "distribution_stats",
           "supports_probes"]
