"""``mdlm-interp analyze STORE [STORE ...] --out DIR``: the paper's analyses as tables, figures and a report."""

OUTPUTS = """\
outputs (in --out DIR):
  report.md                       every table below (long ones cut at 400 rows) and every figure, one
                                  sentence per figure, the stores analysed, and a note for each analysis
                                  a store could not feed (e.g. no /gradients) and why
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
ablation stores (`mdlm-interp ablate`):
  tables/ablation.csv             per store, masks, setting (none, chosen, control), mode: accuracy (Wilson;
                                  pooled control: bootstrap), p_answer, change against no ablation (paired
                                  bootstrap), range of the single random draws
  figures/ablation_*.png          accuracy per mode: chosen heads against random heads
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
        "attention to the masks, and, from `patch` and `ablate` stores, patching heatmaps and ablation effects. "
        "Writes DIR/report.md, "
        "DIR/tables/*.csv, DIR/figures/*.png and DIR/provenance.json, then prints the pooled inverse-scaling table.",
        epilog=OUTPUTS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("stores", nargs="+", metavar="STORE",
                        help="HDF5 stores written by `mdlm-interp record`, `patch` or `ablate` (or folders searched "
                        "for .h5 stores, e.g. a sweep's output)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created; files in it are replaced)")
    parser.add_argument("--only", default=None, metavar="NAMES",
                        help="comma-separated analyses to run (default all): inverse_scaling, locality, attribution, "
                        "attention, logit_lens, wrong_predictions, context_benefit, head_ranking, patching, ablation")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Check every store, write the report, print the pooled inverse-scaling table and the report's path."""
    from mdlm_interp.analyses.registry import analyses
    from mdlm_interp.analyses.report import console_table, write_report
    from mdlm_interp.errors import UsageError
    from mdlm_interp.outputs import claim_outputs
    from mdlm_interp.prompt_checks import check_prompts

    claim_outputs({"--out": args.out}, overwrite=True, folders={"--out"})  # files in it are replaced
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
    return 0
