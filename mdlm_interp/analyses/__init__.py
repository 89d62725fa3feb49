"""Analyses: stores -> pandas DataFrames with 95% intervals -> matplotlib figures -> a report.

Pure functions from ``Recordings`` (``load(paths)``: the rows of one or more stores) to frames, and from
frames to figures; the result stores of ``patch`` and ``ablate`` are read by ``patching`` and ``ablation``.
Accuracies carry Wilson score intervals; means, paired differences and correlations a seeded percentile
bootstrap (``stats.INTERVALS``). Every analysis is registered in
``registry.analyses()``; ``write_report(stores, out)`` runs them all. Analyses read stores only
(``mdlm_interp.store.open_store``); decoding token ids loads the store model's tokenizer lazily.
"""

from mdlm_interp.analyses.ablation import ablation
from mdlm_interp.analyses.attention import attention
from mdlm_interp.analyses.attribution import attribution
from mdlm_interp.analyses.context_benefit import context_benefit
from mdlm_interp.analyses.data import PAIR, Recordings, Skip, load
from mdlm_interp.analyses.heads import head_ranking
from mdlm_interp.analyses.inverse_scaling import filler_control, inverse_scaling, mask_drop
from mdlm_interp.analyses.lens import logit_lens
from mdlm_interp.analyses.locality import locality, locality_contrast
from mdlm_interp.analyses.patching import patching
from mdlm_interp.analyses.registry import Analysis, FigureOut, analyses
from mdlm_interp.analyses.report import write_report
from mdlm_interp.analyses.routing import routing_tables
from mdlm_interp.analyses.wrong_predictions import wrong_predictions

__all__ = [
    "PAIR", "Analysis", "FigureOut", "Recordings", "Skip", "ablation", "analyses", "attention", "attribution",
    "context_benefit", "filler_control", "head_ranking", "inverse_scaling", "load", "locality", "locality_contrast",
    "logit_lens", "mask_drop", "patching", "routing_tables", "wrong_predictions", "write_report",
]
