"""``mdlm-interp analyze STORE [STORE ...] --out DIR``: the paper's analyses as tables, figures and a report."""

OUTPUTS = """\
outputs (in --out DIR):
  report.md                       every table below (long ones cut at 400 rows) and every figure, one
                                  sentence per figure, the stores analysed, and a note for each analysis
                                  a store could not feed (e.g. no /gradients) and why
  report.html                     one self-contained page (no network request; plotly.js embedded): the
                                  tables and interactive plots of them (hover: value and interval), patching
                                  heatmaps, an attention viewer (stores recorded with --keep-examples) and a
                                  decoding scrubber (generate --trace files given as STORE)
  provenance.json                 command, toolkit version, time, interval methods, and per store its path,
                                  model, weights fingerprint, seed, setting, rows and command
  tables/inverse_scaling.csv      per model, n_relevant, n_distractor, task ("all" = pooled), placement,
                                  filler (true/false), masks: n, accuracy, ci_low, ci_high (Wilson 95%),
                                  p_answer and entropy (nats) with _low/_high (bootstrap)
  tables/mask_drop.csv            accuracy at 1 mask minus at each larger count (masks or filler), paired
                                  by prompt: n_pairs, accuracy_at_1, accuracy, drop, drop_low, drop_high
  tables/filler_control.csv       filler control against masks on the same prompts: accuracy_masks,
                                  accuracy_filler, difference (filler - masks), low, high
  tables/locality.csv             accuracy per placement with relevant_at (first slot of the relevant
                                  block), query_slot (examples before the query), gap (examples between
                                  block and query; negative: block after the query)
  tables/locality_contrast.csv    nearest minus farthest relevant block, paired by prompt
  tables/attribution.csv          normalised gradient on mask tokens (mask), the last 50 non-mask tokens
                                  (last50) and all non-mask tokens (nonmask): mean, _sd, _low, _high
  tables/attention_heads.csv      per layer x head: attention mass from the readout position (from_answer)
  tables/attention_layers.csv     and from the context (from_context) on the tokens after the answer slot
  tables/attention_summary.csv    (masks or fillers), on the relevant examples (relevant), and its change
                                  against 1 mask on the same prompts (relevant_delta); per layer (mean
                                  over heads) and overall (mean over layers and heads)
  tables/logit_lens.csv           per layer (0 = embeddings): p_answer, top1 (share ranked first, Wilson),
                                  rank_mean, rank_median, entropy
  tables/wrong_predictions.csv    the 5 most frequent wrong predictions per condition: token_id, token
                                  (decoded), count, share_of_wrong, share_of_rows (Wilson bounds)
  tables/wrong_prediction_kinds.csv  share of the wrong predictions that are a query word, another prompt
                                  token, the mask/filler token, or not in the input (e.g. end of text)
  tables/context_benefit.csv      per task: accuracy with minus without relevant examples (benefit) and
                                  accuracy lost to M masks (drop, paired), with bounds
  tables/context_benefit_correlation.csv  Pearson r across tasks per mask count (bootstrap over tasks),
                                  Spearman rho
  tables/iterative_accuracy.csv   stores recorded with --decode: per condition and number of steps, one-step
                                  and iterative accuracy (Wilson), their paired gain, the step the answer
                                  settles at and the step its slot is unmasked (bootstrap)
  tables/decode_trajectory.csv    per decoding step: p(answer) at the answer slot, masks left, attention
                                  from the answer readout to the masks left
  figures/inverse_scaling_*.png   accuracy, p(answer), entropy against masks, filler control dashed
  figures/inverse_scaling_tasks_*.png  the same accuracy per task
  figures/locality_*.png          accuracy against the relevant block's slot and the query's slot
  figures/attribution_*.png       normalised gradient of the three spans against masks
  figures/attention_heads_*.png   layer x head heatmaps at the most masks; attention_layers_*: per layer
  figures/logit_lens_*.png        p(answer) and entropy against depth, a line per mask count
  figures/wrong_predictions_*.png correct / most frequent wrong tokens / other, per mask count
  figures/context_benefit_*.png   per-task benefit against drop, and r against masks
  tables/head_ranking.csv         per layer x head, ranked by attention mass from the answer slot on the
                                  masks (mask_mass, bootstrap bounds), filler_mass (the filler control),
                                  rho (Spearman with the loss of p(answer) against 1 mask, same prompts),
                                  rho_low, rho_high, p_permutation, p_adjusted (Holm over the group's heads)
  figures/head_ranking_*.png      mass per head (fillers beside it) and rho with intervals
  figures/iterative_*.png         one-step and iterative accuracy, settle and unmask step against masks
  figures/decode_trajectory_*.png p(answer) and attention to the masks left across the decoding steps
  tables/routing_experts.csv      mixture-of-experts stores: per condition, layer, expert: the answer slot's
                                  routing weight, the masks' and the context's share of the top-k choices
  tables/routing_shift.csv        per mask count and layer, paired from the fewest masks: JS divergence of
                                  the answer slot's routing, experts kept, masks-vs-context total variation
  figures/routing_*.png           routing divergence per layer; masks against context per expert
  tables/block_attention.csv      "blocks": stores recorded under block attention (--block-length): accuracy,
                                  the masks the answer slot read in its block (masks_in_block mean, min, max)
patching stores (`mdlm-interp patch`):
  tables/patching_runs.csv        per store: the clean and corrupt runs' accuracy (Wilson), p(answer),
                                  logit difference, share of corrupt runs predicting the wrong token
  tables/patching_cells.csv       per store, direction, site, layer, position group (or head and head
                                  group): recovery of logit(answer) - logit(wrong) with bootstrap bounds,
                                  p_answer, attribution_recovery (attribution patching's estimate)
  tables/patching_attribution.csv Pearson r of exact against attribution recovery per direction and site
  figures/patching_positions_*.png  recovery heatmaps layer x position group (resid_pre, attn_out, mlp_out)
  figures/patching_heads_*.png    recovery heatmaps layer x head (answer slot, all positions)
expert patching stores (`mdlm-interp patch --experts`, mixture-of-experts models):
  tables/expert_patching.csv      per store, direction, expert, position group: n pairs, clean, corrupt,
                                  receiver and patched mean logit differences, effect (patched - receiver)
                                  and recovery (NaN where the clean - corrupt gap is under 1 logit)
ablation stores (`mdlm-interp ablate`):
  tables/ablation.csv             per store, masks, setting (none, chosen, control), mode: accuracy (Wilson;
                                  pooled control: bootstrap), p_answer, change against no ablation (paired
                                  bootstrap), range of the single random draws
  figures/ablation_*.png          accuracy per mode: chosen heads against random heads
activation stores read with --sae DIR (`mdlm-interp activations`, `mdlm-interp train-sae`):
  tables/features_mask_specific.csv  latents firing on the masks against context tokens: rate_masks,
                                  rate_context, mean_masks, mean_context, specificity (rate difference)
  tables/features_answer_shift.csv  answer-slot latents that change most from the fewest to the most masks,
                                  paired by prompt: mean_low, mean_high, shift, shift_low, shift_high
  tables/features_top_examples.csv  the largest activations of those latents, the token there decoded
  tables/features_feature_selection.csv  the pre-registered set, chosen on the selection half of the prompts
  tables/features_feature_ablation.csv  accuracy at the most masks on the evaluation half: nothing removed,
                                  the set removed at the answer slot, random sets removed (Wilson)
steps stores (`mdlm-interp steps record`):
  tables/sinks.csv                every head and position taking more than 0.05 of a head's attention (mean
                                  over queries) at a step: model, prompt, step, masks_left, layer, head,
                                  position, relative (to the answer slot), kind (answer slot, mask, first
                                  token, punctuation, other), mass
  tables/sink_kinds.csv           sinks per prompt of each kind per step (bootstrap), their mean mass
  figures/sinks_*.png             sinks per prompt by kind against the step, masks left dotted
step patching stores (`mdlm-interp steps patch`):
  tables/settle_steps.csv         per site and patched step (-1: every step; site none: unpatched): accuracy
                                  and share changed (Wilson), settle step, logit difference at the patched
                                  step and when the slot is unmasked, attribution estimate (bootstrap)
  figures/settle_*.png            settle step and logit difference against the patched step
File names carry the setting: _r10_d40_random = 10 relevant + 40 distractor examples, random placement.
Accuracies and shares have Wilson 95% intervals; means, differences and correlations a 95% percentile
bootstrap (2000 resamples, seed 0), paired differences resampling prompts matched by (seed, task, prompt).
An analysis whose data is missing is skipped with a note in report.md; a path that is not a store is an
error (exit 2) before anything is written."""


def add_parser(subparsers) -> None:
    """Register the ``analyze`` subcommand."""
    import argparse

    parser = subparsers.add_parser(
        "analyze",
        help="turn stores into the paper's tables, figures and a report (with 95%% intervals)",
        description="Analyse one or more stores side by side (one line or panel per model): inverse scaling "
        "with masks and the filler control, locality, gradient attribution, attention to masks per layer x head, "
        "logit lens, what the model predicts instead, context benefit against mask drop, heads ranked by "
        "attention to the masks, from `patch` and `ablate` stores, patching heatmaps and ablation effects, and from "
        "`steps record` and `steps patch` stores, attention sinks per step and when the answer settles. "
        "Writes DIR/report.md, DIR/report.html (interactive), "
        "DIR/tables/*.csv, DIR/figures/*.png and DIR/provenance.json, then prints the pooled inverse-scaling table.",
        epilog=OUTPUTS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("stores", nargs="+", metavar="STORE",
                        help="HDF5 stores written by `mdlm-interp record`, `patch`, `ablate` or `steps` (or folders searched "
                        "for .h5 stores, e.g. a sweep's output)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created; files in it are replaced)")
    parser.add_argument("--only", default=None, metavar="NAMES",
                        help="comma-separated analyses to run (default all): inverse_scaling, locality, attribution, "
                        "attention, logit_lens, wrong_predictions, context_benefit, head_ranking, patching, ablation, "
                        "sinks, settle_steps, features (with --sae)")
    features = parser.add_argument_group("SAE features (activation stores from `mdlm-interp activations`)")
    features.add_argument("--sae", default=None, metavar="DIR",
                          help="read the one STORE, an activation store, with this SAE (from train-sae): features "
                          "specific to masks against context tokens, answer-slot features that change most from the "
                          "fewest to the most masks, their top activating examples decoded, and the pre-registered "
                          "feature ablation (DIR/tables/features_*.csv, sections of DIR/report.md and DIR/report.html)")
    features.add_argument("--ablate", type=int, default=10, metavar="K",
                          help="latents in the pre-registered set: the K whose answer-slot activation grows most with "
                          "the masks on one half of the prompts, removed on the other half at the most masks (0: no "
                          "ablation, no model loaded; default 10)")
    features.add_argument("--control-draws", type=int, default=10, help="random feature sets of the control (default 10)")
    features.add_argument("--seed", type=int, default=0, help="seed of the prompt split, control draws and bootstrap")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Check every store, write the report, print the pooled inverse-scaling table and the report's path."""
    from mdlm_interp.analyses.registry import analyses
    from mdlm_interp.analyses.report import console_table, write_report
    from mdlm_interp.errors import UsageError
    from mdlm_interp.outputs import claim_outputs
    from mdlm_interp.prompt_checks import check_prompts

    claim_outputs({"--out": args.out}, overwrite=True, folders={"--out"})  # files in it are replaced
    if args.sae is not None:
        return run_features(args)
    only = None
    if args.only:
        only = [name.strip() for name in args.only.split(",") if name.strip()]
        known = [a.name for a in analyses()]
        unknown = [name for name in only if name not in known]
        if unknown:
            raise UsageError(f"unknown analysis {unknown[0]!r}; choose from {', '.join(known)}")
    check_prompts(args.stores)  # every file, before any output
    report = write_report(args.stores, args.out, command_line=args.command_line, only=only)
    print(console_table(report.parent))
    print(f"report: {report}")
    if (report.parent / "report.html").exists():
        print(f"interactive report: {report.parent / 'report.html'}")
    return 0


def run_features(args) -> int:
    """Check the one activation store against the SAE, write the report of the feature analysis
    (``analyses.features``: report.md, report.html, tables/features_*.csv) and print its tables."""
    import pandas as pd

    from mdlm_interp.analyses.features import check_features
    from mdlm_interp.analyses.report import write_report
    from mdlm_interp.errors import UsageError

    if len(args.stores) != 1:
        raise UsageError("--sae reads one activation store")
    if args.ablate < 0 or args.control_draws < 1:
        raise UsageError("--ablate must be at least 0 and --control-draws at least 1")
    check_features(args.stores[0], args.sae)
    options = {"sae": str(args.sae), "ablate": args.ablate, "control_draws": args.control_draws, "seed": args.seed}
    report = write_report(args.stores, args.out, command_line=args.command_line, only=["features"], options=options)
    tables = sorted((report.parent / "tables").glob("features_*.csv"))
    for path in tables:
        text = pd.read_csv(path).to_string(index=False, float_format=lambda v: f"{v:.4g}")
        print(f"{path.stem.removeprefix('features_')}:\n{text}\n")
    if not tables:
        print(f"no feature tables: the analysis was skipped ({report} says why)")
    print(f"report: {report}")
    if (report.parent / "report.html").exists():
        print(f"interactive report: {report.parent / 'report.html'}")
    return 0
