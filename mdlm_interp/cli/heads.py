"""``mdlm-interp heads STORE``: heads ranked by attention to the masks, with their link to the loss."""


def add_parser(subparsers) -> None:
    """Register the ``heads`` subcommand."""
    parser = subparsers.add_parser(
        "heads",
        help="rank heads by attention from the answer slot to the masks, with the rank correlation to the loss",
        description="Reads a store from `mdlm-interp record` (with attention, at masks 1 and a larger count). "
        "Orders heads by their mean attention mass from the answer readout on the masks after the answer slot, "
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
    parser.add_argument("--figure", default=None, metavar="FILE.png", help="also draw the ranking into a PNG file")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Print the head ranking of ``args.store``."""
    from mdlm_interp.circuits.heads import head_ranking
    from mdlm_interp.errors import UsageError
    from mdlm_interp.store import open_store

    if args.top is not None and args.top < 1:
        raise UsageError("--top must be at least 1")
    with open_store(args.store) as store:
        ranking = head_ranking(store, masks=args.masks, seed=args.seed)
    shown = ranking.head(args.top) if args.top else ranking
    if args.csv:
        ranking.to_csv(args.csv, index=False)
    if args.figure:
        from mdlm_interp.circuits.figures import head_ranking_figure, save_figure

        save_figure(head_ranking_figure(ranking, args.top), args.figure)
    if args.json:
        print(shown.to_json(orient="records"))
        return 0
    first = ranking.iloc[0]
    print(f"{args.store}: {int(first['n'])} examples paired between masks 1 and masks {int(first['masks'])}")
    columns = {"rank": "rank", "head": "head", "mask_mass": "mask mass", "mask_mass_low": "low",
               "mask_mass_high": "high", "filler_mass": "filler mass", "rho": "rho", "rho_low": "rho low",
               "rho_high": "rho high", "p_permutation": "p (perm.)"}
    table = shown[list(columns)].rename(columns=columns)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"))
    return 0
