"""``mdlm-interp heads STORE``: heads ranked by attention to the masks, with their link to the loss."""


def add_parser(subparsers) -> None:
    """Register the ``heads`` subcommand."""
    parser = subparsers.add_parser(
        "heads",
        help="rank heads by attention from the readout position to the masks, with the rank correlation to the loss",
        description="Reads a store from `mdlm-interp record` (with attention, at masks 1 and a larger count). "
        "Orders heads by their mean attention mass from the readout position (the row that predicts the answer: "
        "the answer slot for LLaDA, the position before it for Dream) on the masks after the answer slot, "
        "and gives per head the Spearman rank correlation, across examples, between that mass and the loss of "
        "p(answer) against the same example at masks 1 (paired by example id), with 95% bootstrap intervals, "
        "a permutation p-value, and the same head's mass on the fillers where the filler control was recorded.",
    )
    parser.add_argument("store", metavar="STORE", help="HDF5 store written by `mdlm-interp record`")
    parser.add_argument("--top", type=int, default=None, metavar="K", help="show only the K heads with the most mass")
    parser.add_argument("--masks", type=int, default=None,
                        help="the mask count to rank at (default: the store's largest)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and permutations (default 0)")
    parser.add_argument("--json", action="store_true", help="print the table as JSON records")
    parser.add_argument("--csv", default=None, metavar="FILE", help="also write the full table as CSV")
    parser.add_argument("--figure", default=None, metavar="FILE.png",
                        help="also draw the ranking (of the first model, setting and placement) into a PNG file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --csv or --figure file")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Print the head ranking of ``args.store``, one table per model, setting and placement."""
    from mdlm_interp.analyses.data import Skip, load
    from mdlm_interp.analyses.heads import KEYS, head_ranking, ranking_figure
    from mdlm_interp.analyses.plotting import save, stamp
    from mdlm_interp.errors import UsageError
    from mdlm_interp.outputs import claim_outputs, staged_file
    from mdlm_interp.store import open_store

    if args.top is not None and args.top < 1:
        raise UsageError("--top must be at least 1")
    claim_outputs({"--csv": args.csv, "--figure": args.figure}, [args.store], overwrite=args.overwrite)
    with open_store(args.store) as store:  # a one-line error for anything but a record store
        if "attention" not in store.groups:
            raise UsageError(f"{args.store} has no attention recorded; record with --record attention")
    try:
        ranking = head_ranking(load([args.store]), masks=args.masks, seed=args.seed)["head_ranking"]
    except Skip as reason:
        raise UsageError(f"{args.store}: {reason}") from None
    groups = [group for _, group in ranking.groupby(KEYS + ["masks"], sort=False)]
    if args.csv:
        with staged_file(args.csv) as handle:
            ranking.to_csv(handle, index=False)
    if args.figure:
        with staged_file(args.figure, mode="wb", encoding=None) as handle:
            save(ranking_figure(groups[0], args.top).figure, handle, stamp(args.command_line))
    shown = ranking[ranking["rank"] <= args.top] if args.top else ranking
    if args.json:
        print(shown.to_json(orient="records"))
        return 0
    columns = {"rank": "rank", "head_label": "head", "mask_mass": "mask mass", "mask_mass_low": "low",
               "mask_mass_high": "high", "filler_mass": "filler mass", "rho": "rho", "rho_low": "rho low",
               "rho_high": "rho high", "p_permutation": "p (perm.)", "p_adjusted": "p (Holm)"}
    for _, group in shown.groupby(KEYS + ["masks"], sort=False):
        first = group.iloc[0]
        print(f"{first['model']} ({first['n_relevant']} relevant + {first['n_distractor']} distractor, "
              f"{first['placement']}): {first['n']} prompts paired between masks 1 and masks {first['masks']}; "
              f"mask mass: attention from the readout position on the masks after the answer slot")
        print(group[list(columns)].rename(columns=columns).to_string(
            index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"))
    return 0
