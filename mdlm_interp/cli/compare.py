"""``mdlm-interp compare BEFORE.h5 AFTER.h5 [...] --out DIR``: models side by side, before and after fine-tuning."""


def add_parser(subparsers) -> None:
    """Register the ``compare`` subcommand."""
    parser = subparsers.add_parser(
        "compare", help="compare stores of several models (e.g. before and after MA-loss fine-tuning) side by side",
        description="Compare recordings of several models on the same prompts: accuracy against masks (and the "
        "filler control) with Wilson 95%% intervals, split into held-in and held-out categories; each model's "
        "change against the first (the reference) on the same prompts with bootstrap intervals; the attribution "
        "table; attention from the answer position to the masks per layer x head and its change. A model is the "
        "store's model id plus its adapter (record --adapter); stores of one model pool their rows. "
        "Writes DIR/report.md, DIR/tables/*.csv, DIR/figures/*.png and DIR/provenance.json.")
    parser.add_argument("stores", nargs="+", metavar="STORE",
                        help="HDF5 stores written by `mdlm-interp record` (or folders searched for .h5 stores); "
                        "the first model is the reference (before)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created; files in it are replaced)")
    parser.add_argument("--held-in", default=None, metavar="C1,C2,...",
                        help="the relevant categories the fine-tuning data covered (default "
                        "adjective,animal,profession,place, as `tasks export --format sft`)")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Check the stores, write the comparison, print its findings and where the report is."""
    from mdlm_interp.compare import write_comparison
    from mdlm_interp.errors import UsageError
    from mdlm_interp.tasks import CATEGORIES, SFT_CATEGORIES

    held_in = SFT_CATEGORIES
    if args.held_in is not None:
        held_in = tuple(c for c in args.held_in.split(",") if c)
        unknown = [c for c in held_in if c not in CATEGORIES]
        if unknown:
            raise UsageError(f"unknown categories {unknown}; choose from {', '.join(CATEGORIES)}")
    report = write_comparison(args.stores, args.out, held_in=held_in, command_line=args.command_line)
    findings = report.read_text().split("## Findings\n\n", 1)[1].split("\n\n", 1)[0]
    print(findings)
    print(f"report: {report}")
    return 0
