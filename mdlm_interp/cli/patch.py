"""``mdlm-interp patch``: activation and attribution patching between two mask configurations."""

from mdlm_interp.cli.common import sharded


def add_parser(subparsers) -> None:
    """Register the ``patch`` subcommand."""
    from mdlm_interp.cli.common import (add_intervention_flags, add_model_flags, add_plan_flags,
                                        add_result_output_flags, sharded_epilog)

    parser = subparsers.add_parser(
        "patch",
        help="activation and attribution patching between two mask configurations (e.g. 1 against 50 masks)",
        description="Build each prompt twice, as a clean run (e.g. 1 mask, or the filler control) and a corrupt "
        "run (e.g. 50 masks), and patch activations between them in both directions: resid_pre, attn_out and "
        "mlp_out of every layer over position groups (all, relevant and distractor examples, query, answer slot, "
        "the tokens after the slot when both runs have them, each of the last k positions, and for Dream the readout "
        "position before the slot), and every head's output (hook_z) at the answer slot, over all positions and "
        "(Dream) at the readout position. The metric is logit(answer) - logit(wrong) at the answer readout: the "
        "clean - corrupt gap is printed first, then each patch's effect in logits and its recovery (patched - "
        "corrupt) / (clean - corrupt), undefined where the gap is under --min-gap, with p(answer) beside it. "
        "Attribution patching (gradient x activation difference) estimates the same grid. Writes an HDF5 "
        "patching store (docs/store.md) and prints the cells that recover most. On a mixture-of-experts model, "
        "--experts patches chosen experts' contributions instead and writes an expert patching store.",
    )
    add_model_flags(parser, diffusion_only=True)
    add_plan_flags(parser, n=4, n_aliases=("--n-prompts",),
                   n_help="prompts (pairs) per task (default 4); spell it --n-prompts under torchrun",
                   seed_help="seed of the prompts (default 0; the same seed gives the prompts of `record`)")
    parser.add_argument("--clean-masks", type=int, default=None,
                        help="n masks of the clean run: the answer slot and n - 1 masks after it (default 1; with "
                        "--clean-filler, the corrupt count)")
    parser.add_argument("--clean-filler", action="store_true",
                        help="make the clean run the filler control: the tokens after the answer slot are --filler "
                        "instead of masks (same length as the corrupt run by default)")
    parser.add_argument("--filler", default=" .", metavar="TEXT", help="one-token filler text (default ' .')")
    parser.add_argument("--corrupt-masks", type=int, default=50, help="n masks of the corrupt run (default 50)")
    parser.add_argument("--last-k", type=int, default=5,
                        help="single-position groups for the last k tokens before the answer slot (default 5)")
    parser.add_argument("--wrong-token", default=None, metavar="TEXT",
                        help="the wrong token of the logit difference for every prompt, e.g. '<|endoftext|>' "
                        "(default: each corrupt run's most probable token other than the answer)")
    parser.add_argument("--experts", default=None, metavar="LAYER.EXPERT,...",
                        help="mixture-of-experts models (LLaDA-MoE, LLaDA2): instead of the activation grid, patch "
                        "each of these experts' contribution (the sum over the top-k slots routed to it of weight * "
                        "output) from the donor run into the receiver, per position group (all, relevant, "
                        "distractor, query, answer, and the tokens after the slot when both runs have them) and "
                        "direction, e.g. 1.0,1.3; writes an expert patching store (docs/store.md) to --out and "
                        "prints every cell (no --wrong-token, --figures or torchrun with it)")
    parser.add_argument("--no-attribution", action="store_true", help="skip attribution patching")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per batch (default 8)")
    parser.add_argument("--max-rows", type=int, default=512,
                        help="most sequences (patched variants x pairs) in one forward pass; lower it to save "
                        "memory (default 512)")
    parser.add_argument("--out", default="patch.h5", help="output HDF5 patching store (default patch.h5)")
    add_result_output_flags(parser)
    add_intervention_flags(parser)
    parser.add_argument("--figures", default=None, metavar="DIR",
                        help="also write heatmaps (layer x position group, layer x head) as PNG files into DIR")
    parser.add_argument("--min-gap", type=float, default=1.0, metavar="LOGITS",  # analyses.patching.MIN_GAP
                        help="leave recovery undefined (NaN in tables, blank in figures) when the clean - corrupt "
                        "gap of the mean logit differences is under this many logits in size; each patch's effect "
                        "in logits is shown either way (default 1.0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.epilog = sharded_epilog("patch")
    parser.set_defaults(func=run)


@sharded
def run(args, shard, device: str) -> int:
    """Check the request, load the model, patch, write the store, print the strongest cells. Under torchrun
    (``shard``: this process's ``sharding.Shard``) each rank patches its block of batches; rank 0 claims the
    outputs, writes the store and prints."""
    from mdlm_interp.cli.common import (apply_interventions, claim_result_outputs, load_model_from, one_placement,
                                        plan_fields)
    from mdlm_interp.errors import UsageError
    from mdlm_interp.plan import Condition, PromptPlan

    if not args.min_gap >= 0 or args.min_gap == float("inf"):
        raise UsageError(f"--min-gap must be a finite number of logits, at least 0; got {args.min_gap}")
    if args.experts is not None:
        given = [flag for flag, value in (("--wrong-token", args.wrong_token), ("--figures", args.figures),
                                          ("torchrun", shard.world > 1)) if value]
        if given:
            raise UsageError(f"--experts does not take {', '.join(given)}")
    shard.step(lambda: claim_result_outputs(args, {"--figures": args.figures}, folders={"--figures"}),
               leader_only=True)
    clean_masks = args.clean_masks if args.clean_masks is not None else (args.corrupt_masks if args.clean_filler else 1)
    plan = PromptPlan(**plan_fields(args), masks=(clean_masks, args.corrupt_masks), filler=args.filler)
    placement = one_placement(plan, "patch")
    clean = Condition(clean_masks, args.clean_filler, placement)
    corrupt = Condition(args.corrupt_masks, False, placement)
    if clean == corrupt:
        raise UsageError("the clean and corrupt runs are the same condition; change --clean-masks or --clean-filler")

    lm = load_model_from(args, device)
    interventions = apply_interventions(args, lm, plan, quiet=not shard.leader)
    if args.experts is not None:
        from mdlm_interp.circuits.experts import run_expert_patching

        out = run_expert_patching(lm, plan, clean, corrupt, args.experts, out=args.out, batch_size=args.batch_size,
                                  overwrite=args.overwrite or args.resume, command_line=args.command_line)
    else:
        from mdlm_interp.circuits.patching import run_patching

        out = run_patching(lm, plan, clean, corrupt, out=args.out, batch_size=args.batch_size, last_k=args.last_k,
                           wrong_token=args.wrong_token, attribution=not args.no_attribution, max_rows=args.max_rows,
                           overwrite=args.overwrite, resume=args.resume, progress=not args.no_progress,
                           command_line=args.command_line, shard=shard)
    if not shard.leader:
        return 0
    if interventions:
        from mdlm_interp.representations.interventions import write_interventions

        write_interventions(out, interventions)
    print(experts_report(out, min_gap=args.min_gap) if args.experts is not None
          else report(out, lm.tokenizer, figures=args.figures, min_gap=args.min_gap))
    return 0


def report(path, tokenizer=None, figures=None, top: int = 5, min_gap: float = 1.0) -> str:
    """Return the text summary of a patching store (the clean - corrupt gap, both runs, strongest cells with
    recovery and effect in logits, attribution agreement); with ``figures``, write its heatmaps there as
    PNG files. Recovery is undefined where the gap is under ``min_gap`` logits."""
    from pathlib import Path

    import numpy as np

    from mdlm_interp.analyses.grouped import masks_text
    from mdlm_interp.analyses.patching import (
        attribution_agreement,
        comparison,
        describe,
        head_heatmaps,
        pair_summary,
        patching_cells,
        position_heatmaps,
        strongest,
    )
    from mdlm_interp.analyses.plotting import save
    from mdlm_interp.circuits.schemas import SITES
    from mdlm_interp.store.results import open_results

    with open_results(path, "patching") as store:
        cells = patching_cells(store, min_gap=min_gap)
        summary = pair_summary(store)
        settings, agreement = store.attrs["settings"], attribution_agreement(store)
        wrong = store.array("pairs/wrong_id")
        stamp = store.attrs["command_line"]
    lines = [f"wrote {summary['n']} pairs to {path} ({comparison(settings)})",
             f"  clean - corrupt gap of logit(answer) - logit(wrong): {summary['gap']:.2f} "
             f"[{summary['gap_low']:.2f}, {summary['gap_high']:.2f}] logits (95% bootstrap over pairs)"]
    undefined = abs(summary["gap"]) < min_gap
    if undefined:
        lines.append(f"  note: the gap is under --min-gap {min_gap:g} logit, so recovery is undefined (NaN, blank in "
                     "figures); the cells below are those whose patch moves the logit difference most, in logits")
    for run in ("clean", "corrupt"):
        s, condition = summary[run], settings[run]
        label = masks_text(condition["masks"]) + (" (filler control)" if condition["filler"] else "")
        lines.append(f"  {run:8s} {label:26s} accuracy {s['accuracy']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]  "
                     f"p(answer) {s['p_answer']:.3f}  logit diff {s['logit_diff']:.2f}")
    if tokenizer is not None:
        values, counts = np.unique(wrong, return_counts=True)
        common = tokenizer.decode([int(values[counts.argmax()])])
        lines.append(f"  wrong token: most often {common!r}; the corrupt run predicts it in "
                     f"{summary['corrupt_says_wrong_token']:.0%} of pairs")
    for direction in dict.fromkeys(cells["direction"]):
        restoring = direction == "clean_into_corrupt"
        effect = "restore the answer" if restoring else "break it"
        what = "effect in logits" if undefined else "recovery, 95% bootstrap interval, effect in logits"
        lines.append(f"\n{direction}: the {top} cells per site that {'move the logit difference' if undefined else effect} "
                     f"most ({what})")
        for site in SITES:
            best = strongest(cells, direction, site, top)
            lines.append(f"  {site:9s} " + "; ".join(describe(cell) for cell in best.to_dict("records")))
    if agreement:
        lines.append("\nattribution patching against exact patching (Pearson r of recovery over each grid's cells):")
        for direction, sites in agreement.items():
            lines.append(f"  {direction}: " + ", ".join(f"{site} {'-' if r is None else f'{r:.2f}'}"
                                                        for site, r in sites.items()))
    if figures is not None:
        folder = Path(figures)
        folder.mkdir(parents=True, exist_ok=True)
        for direction in dict.fromkeys(cells["direction"]):
            for figure in (position_heatmaps(cells, direction), head_heatmaps(cells, direction)):
                save(figure.figure, folder / f"{figure.name}.png", stamp)
        lines.append(f"\nfigures in {folder}")
    return "\n".join(lines)


def experts_report(path, min_gap: float = 1.0) -> str:
    """Return the text table of an expert patching store: per direction, expert and position group, the mean
    logit differences (receiver, patched), the effect in logits and the recovery (undefined, "-", where the
    clean - corrupt gap is under ``min_gap`` logits)."""
    from mdlm_interp.analyses.expert_patching import expert_patching_cells
    from mdlm_interp.analyses.patching import comparison
    from mdlm_interp.store.results import open_results

    with open_results(path, "expert_patching") as store:
        cells = expert_patching_cells(store, min_gap=min_gap)
        compared = comparison(store.attrs["settings"])
    columns = {"direction": "direction", "expert": "expert", "group": "positions", "n": "pairs",
               "receiver": "receiver", "patched": "patched", "effect": "effect", "recovery": "recovery"}
    gap = (cells["clean"] - cells["corrupt"]).iloc[0] if len(cells) else float("nan")
    return (f"wrote {path}: experts {', '.join(dict.fromkeys(cells['expert']))} patched ({compared}); clean - corrupt "
            f"gap of logit(answer) - logit(wrong) {gap:.2f} logits\n"
            + cells[list(columns)].rename(columns=columns).to_string(index=False, float_format=lambda v: f"{v:.3f}",
                                                                     na_rep="-"))
