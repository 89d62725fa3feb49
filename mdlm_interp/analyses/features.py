"""SAE features of an activation store (``analyze ACTS --sae DIR``) as a section of the report: the
tables of ``representations.features.feature_report`` (tables/features_*.csv) and their findings.

The analysis reads the one activation store among the stores (``Recordings.results["activations"]``)
with the SAE in ``Recordings.options["sae"]``; ``options`` "ablate" (latents in the pre-registered
set, 0: no ablation and no model loaded), "control_draws" and "seed" are passed on. The model of the
store's provenance is loaded for the ablation, its tokenizer to decode the top examples.
"""

from mdlm_interp.analyses.data import Skip
from mdlm_interp.analyses.registry import Analysis
from mdlm_interp.errors import UsageError


def sae_at_site(folder) -> tuple:
    """Return (the SAE saved in ``folder``, the hook name it reads: its cfg.json's metadata.hook_name);
    a one-line UsageError when it cannot be read or names no hook."""
    from mdlm_interp.representations.sae_format import load_sae

    sae, config = load_sae(folder)
    site = config.get("metadata", {}).get("hook_name")
    if not site:
        raise UsageError(f"{folder}/cfg.json names no hook (metadata.hook_name): which site does it read?")
    return sae, site


def check_features(path, folder) -> None:
    """Raise a one-line UsageError unless ``path`` is an activation store with the site the SAE in
    ``folder`` reads, at the SAE's input width (checked before any output is written)."""
    from mdlm_interp.representations.activation_reader import open_activations

    sae, site = sae_at_site(folder)
    with open_activations(path) as store:
        sae.check_width(store.check_site(site), where=f"the activations at {site}")


def feature_tables(recordings) -> dict:
    """Return the feature tables {"features_NAME": DataFrame} of the one activation store of
    ``recordings`` read by the SAE of ``recordings.options["sae"]`` (``feature_report``: mask_specific,
    answer_shift, top_examples, and with a model feature_selection and feature_ablation). ``Skip``
    without an activation store or an SAE, or when the store lacks what the analyses need."""
    from mdlm_interp.analyses.decode import tokenizer_for
    from mdlm_interp.representations.activation_reader import open_activations
    from mdlm_interp.representations.features import feature_report

    paths, options = recordings.results.get("activations", []), recordings.options
    if not paths:
        raise Skip("no activation store was given (`mdlm-interp activations` writes one)")
    if options.get("sae") is None:
        raise Skip("no SAE was given to read the activation store with (--sae DIR)")
    if len(paths) > 1:
        raise Skip(f"it reads one activation store; {len(paths)} were given")
    sae, site = sae_at_site(options["sae"])
    ablate = options.get("ablate", 10)
    recordings.notes.append(f"{paths[0]} read at {site} by the {sae.shape.architecture} SAE in {options['sae']} "
                            f"({sae.shape.d_sae} latents).")
    with open_activations(paths[0]) as store:
        model_id = store.provenance.get("model_id")
        lm = tokenizer = None
        try:
            if model_id and ablate:
                from mdlm_interp.models import load_model

                lm = load_model(model_id)
                tokenizer = lm.tokenizer
            elif model_id:
                tokenizer, note = tokenizer_for(model_id)
                recordings.notes += [note] if note else []
            tables = feature_report(store, site, sae, tokenizer=tokenizer, lm=lm, ablate=ablate,
                                    control_draws=options.get("control_draws", 10), seed=options.get("seed", 0))
        except UsageError as error:  # e.g. answer rows at one mask count only, or the model is not on disk
            raise Skip(str(error)) from None
    return {f"features_{name}": table for name, table in tables.items()}


def feature_paragraph(tables: dict) -> str:
    """Return the findings in words: the most mask-specific latent, the answer-slot latent that moves most
    with the masks (bootstrap interval), and the pre-registered ablation against its random control."""
    sentences = []
    specific = tables.get("features_mask_specific")
    if specific is not None and len(specific):
        top = specific.iloc[0]
        sentences.append(f"The latent most specific to the masks, {int(top.feature)}, fires on {top.rate_masks:.0%} "
                         f"of the mask positions and {top.rate_context:.0%} of the context tokens.")
    shift = tables["features_answer_shift"].iloc[0]
    sentences.append(f"At the answer slot, latent {int(shift.feature)} moves most from {int(shift.masks_low)} to "
                     f"{int(shift.masks_high)} masks: {shift['shift']:+.3f} [{shift.shift_low:+.3f}, "
                     f"{shift.shift_high:+.3f}] (paired over {int(shift.n_prompts)} prompts).")
    ablation = tables.get("features_feature_ablation")
    if ablation is not None:
        by = ablation.set_index("setting")
        selection = tables["features_feature_selection"]

        def accuracy(setting: str) -> str:
            row = by.loc[setting]
            return f"{row.accuracy:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}]"

        sentences.append(f"Removing the {int(by.loc['chosen', 'features'])} latents that grow most with the masks "
                         f"on {int(selection.n_selection.iloc[0]) if len(selection) else 0} selection prompts, at "
                         f"the answer slot of the {int(by.loc['none', 'n'])} evaluation prompts, gives accuracy "
                         f"{accuracy('chosen')} against {accuracy('none')} with nothing removed and "
                         f"{accuracy('control')} with as many random latents removed.")
    return " ".join(sentences)


CAPTIONS = {  # table -> its caption in report.md and report.html
    "features_mask_specific": "Latents most specific to the masks against context tokens (share of rows where "
                              "each fires)",
    "features_answer_shift": "Answer-slot latents that change most from the fewest to the most masks (paired by "
                             "prompt, 95% bootstrap)",
    "features_top_examples": "Top activating examples of those latents, the token decoded",
    "features_feature_selection": "The pre-registered latent set, chosen on the selection half of the prompts",
    "features_feature_ablation": "Accuracy at the most masks on the evaluation half: nothing removed, the set "
                                 "removed at the answer slot, random sets removed (Wilson 95%)",
}


ANALYSIS = Analysis(
    name="features",
    title="SAE features",
    needs=(),
    tables=feature_tables,
    figures=lambda tables: [],
    paragraph=feature_paragraph,
    shown=lambda tables: {CAPTIONS[name]: frame for name, frame in tables.items()},
    store_kind="activations",
)
