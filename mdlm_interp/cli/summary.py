"""``mdlm-interp summary STORE [--json]``: per-condition accuracy, p(answer), entropy, mask attention, gradients."""


def add_parser(subparsers) -> None:
    """Register the ``summary`` subcommand."""
    parser = subparsers.add_parser(
        "summary",
        help="per-condition table of a recorded store",
        description="Per condition (masks, filler, placement): rows, accuracy, mean p(answer) and entropy, and "
        "where recorded the mean attention mass on the masks after the answer slot and the three normalised gradient means.",
    )
    parser.add_argument("store", metavar="STORE", help="HDF5 store written by `mdlm-interp record`")
    parser.add_argument("--json", action="store_true", help='print {"conditions": [{...}, ...]} instead of a table')
    parser.set_defaults(func=run)


def run(args) -> int:
    """Print the summary of ``args.store``; return 0 (a missing or invalid store raises UsageError)."""
    import json

    from mdlm_interp.store import open_store
    from mdlm_interp.store.summary import format_table, summarize

    with open_store(args.store) as store:
        conditions = summarize(store)
        attrs = store.attrs
        header = (
            f"{store.path}: {store.n_rows} of {attrs['n_planned']} rows ({attrs['status']}), "
            f"model {attrs['model_id']} ({attrs['family']}, {attrs['dtype']})"
        )
    if args.json:
        print(json.dumps({"conditions": conditions}))
    else:
        print(header)
        print(format_table(conditions))
    return 0
