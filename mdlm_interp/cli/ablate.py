"""``mdlm-interp ablate``: ablate heads (their attention to the masks, or their output) or experts against random ones."""

from mdlm_interp.cli.common import sharded


def add_parser(subparsers) -> None:
    """Register the ``ablate`` subcommand."""
    from mdlm_interp.cli.common import (add_intervention_flags, add_model_flags, add_plan_flags,
                                        add_result_output_flags, int_list, name_list, sharded_epilog)

    parser = subparsers.add_parser(
        "ablate",
        help="ablate the heads that attend to the masks (or experts of a MoE model) and compare with random ones",
        description="Evaluate the task prompts at each mask count without ablation and with the chosen heads "
        "ablated: 'attention' removes attention to the masks after the answer slot (from every query, or with "
        "--positions readout only from the readout position) and renormalises over the remaining keys; 'zero' "
        "and 'mean' replace the head's output (hook_z) by zeros or by its mean over the evaluated prompts. The "
        "control ablates as many random heads (among the others), over several seeded draws. Writes an HDF5 "
        "ablation store (docs/store.md) and prints accuracy with 95% intervals and p(answer) per setting.",
    )
    add_model_flags(parser, diffusion_only=True)
    add_plan_flags(parser, n=10, n_aliases=("--n-prompts",),
                   n_help="prompts per task (default 10); spell it --n-prompts under torchrun",
                   seed_help="seed of the prompts and of the random heads (default 0)")
    units = parser.add_mutually_exclusive_group(required=True)
    units.add_argument("--heads",
                       help="top:K (the K heads with the most attention from the answer slot to the masks at the "
                       "largest --masks, measured on the same prompts) or LAYER.HEAD pairs, e.g. 1.2,3.0")
    units.add_argument("--experts", metavar="LAYER.EXPERT,...",
                       help="mixture-of-experts models: ablate these experts instead of heads, e.g. 2.0,3.1 (mode "
                       "zero only: the expert's top-k weight set to 0 where it is chosen, at the --positions); "
                       "the control ablates as many random experts of the MoE layers")
    parser.add_argument("--masks", default=[1, 50], type=int_list,
                        help="mask count(s) n to evaluate: the answer slot and n - 1 masks after it (default 1,50)")
    parser.add_argument("--modes", default=None, type=name_list,
                        help="comma-separated ablation modes: attention, zero, mean (default all three; experts: "
                        "zero, the only one)")
    parser.add_argument("--positions", default=None, choices=["all", "readout", "masks"],
                        help="heads: the queries whose attention to the masks mode 'attention' removes, all "
                        "(default) or readout, only the position that predicts the answer (the answer slot for "
                        "LLaDA, the position before it for Dream); experts: where they are removed, masks (the "
                        "masks after the answer slot, default), readout or all")
    parser.add_argument("--control", default="random", choices=["random", "none"],
                        help="control: as many random heads, or none (default random)")
    parser.add_argument("--control-draws", type=int, default=10, help="random head sets of the control (default 10)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (default 8)")
    parser.add_argument("--out", default="ablate.h5", help="output HDF5 ablation store (default ablate.h5)")
    add_result_output_flags(parser)
    add_intervention_flags(parser)
    parser.add_argument("--figure", default=None, metavar="FILE.png", help="also draw the accuracies into a PNG file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.epilog = sharded_epilog("ablate")
    parser.set_defaults(func=run)


@sharded
def run(args, shard, device: str) -> int:
    """Check the request, load the model, ablate, write the store, print the table. Under torchrun (``shard``:
    this process's ``sharding.Shard``) each rank ablates its block of batches; rank 0 claims the outputs,
    writes the store and prints."""
    from mdlm_interp.circuits.ablation import EXPERT_MODES, EXPERT_POSITIONS, MODES, POSITIONS
    from mdlm_interp.cli.common import (apply_interventions, claim_result_outputs, load_model_from, one_placement,
                                        plan_fields)
    from mdlm_interp.errors import UsageError
    from mdlm_interp.plan import PromptPlan

    shard.step(lambda: claim_result_outputs(args, {"--figure": args.figure}), leader_only=True)
    units, modes, positions = (("experts", EXPERT_MODES, EXPERT_POSITIONS) if args.experts is not None
                               else ("heads", MODES, POSITIONS))
    unknown = set(args.modes or modes) - set(modes)
    if unknown or args.modes == []:
        raise UsageError(f"unknown ablation mode(s) {sorted(unknown)} for {units}; choose from {', '.join(modes)}")
    if args.positions is not None and args.positions not in positions:
        raise UsageError(f"--positions {args.positions} is not one for {units}; choose from {', '.join(positions)}")
    if args.control_draws < 1 and args.control == "random":
        raise UsageError("--control-draws must be at least 1 (or pass --control none)")
    plan = PromptPlan(**plan_fields(args), masks=args.masks)
    one_placement(plan, "ablate")
    if args.heads is not None and not (args.heads.startswith("top:")
                                       or all("." in part for part in args.heads.split(",") if part.strip())):
        raise UsageError(f"--heads: expected top:K or LAYER.HEAD pairs like 0.1,2.3, got {args.heads!r}")

    from mdlm_interp.circuits.ablation import run_ablation

    lm = load_model_from(args, device)
    interventions = apply_interventions(args, lm, plan, quiet=not shard.leader)
    out = run_ablation(lm, plan, args.heads, experts=args.experts, out=args.out, modes=args.modes,
                       control_draws=args.control_draws if args.control == "random" else 0,
                       batch_size=args.batch_size, positions=args.positions, overwrite=args.overwrite,
                       resume=args.resume,
                       progress=not args.no_progress,
                       command_line=args.command_line, shard=shard)
    if not shard.leader:
        return 0
    if interventions:
        from mdlm_interp.representations.interventions import write_interventions

        write_interventions(out, interventions)
    print(report(out, figure=args.figure))
    return 0


def report(path, figure=None) -> str:
    """Return the text table of an ablation store; with ``figure``, also draw it into that PNG file."""
    from mdlm_interp.analyses.ablation import ablation_effects, ablation_figure
    from mdlm_interp.analyses.plotting import save
    from mdlm_interp.store.identity import read_identity
    from mdlm_interp.store.results import open_results

    with open_results(path, "ablation") as store:
        frame = ablation_effects(store)
        heads = ", ".join(store.attrs["heads"])
        selection = store.attrs["head_selection"]
        units = "experts" if "experts" in store.attrs["settings"] else "heads"
        stamp = store.attrs["command_line"]
        model = read_identity(store.attrs).label
    if figure is not None:
        save(ablation_figure(frame, model, selection).figure, figure, stamp)
    columns = {"masks": "masks", "setting": "heads", "mode": "mode", "n": "n", "accuracy": "accuracy",
               "ci_low": "low", "ci_high": "high", "delta_accuracy": "change", "delta_low": "change low",
               "delta_high": "change high", "p_answer": "p(answer)", "draw_min": "worst draw", "draw_max": "best draw"}
    table = frame[list(columns)].rename(columns=columns)
    where = frame["positions"].iloc[0]
    where = ("" if where == "all" else f"; removed at the {where} only" if units == "experts"
             else "; attention removed from the readout position only")
    return (f"wrote {path}: ablated {units} {heads} ({selection}){where}\n"
            + table.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"))
