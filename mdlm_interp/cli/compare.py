"""``mdlm-interp compare BEFORE.h5 AFTER.h5 [...] --out DIR``: models side by side, before and after fine-tuning."""


def add_parser(subparsers) -> None:
    """Register the ``compare`` subcommand."""
    parser = subparsers.add_parser(
        "compare", help="compare stores of several models (e.g. before and after MA-loss fine-tuning) side by side",
        description="Compare recordings of several models on the same prompts: accuracy against masks (and the "
        "filler control) with Wilson 95% intervals, split into held-in and held-out categories where --held-in or an "
        "adapter's training config names them; each model's "
        "change against the first (the reference) on the same prompts with bootstrap intervals; the attribution "
        "table; attention from the readout position to the masks per layer x head and its change. Given patching "
        "stores (`patch`, one per model), it shows every model's patching maps (recovery per layer x position "
        "group and per layer x head) side by side and their change against the reference on the same prompt "
        "pairs, in recovery and in logits, with paired bootstrap intervals; given ablation stores (`ablate`), "
        "accuracy with the heads ablated and its change. A model is the store's model id plus its adapter "
        "(--adapter); record stores of one model pool their rows. A store of another kind, or one that cannot be "
        "paired with the reference's, is left out with a note. Writes DIR/report.md, DIR/report.html (the "
        "tables as interactive plots, the patching heatmaps, the attention viewer), DIR/tables/*.csv, "
        "DIR/figures/*.png and DIR/provenance.json.")
    parser.add_argument("stores", nargs="+", metavar="STORE",
                        help="HDF5 stores written by `mdlm-interp record`, `patch` or `ablate` (or folders searched "
                        "for .h5 stores); the first model (of the record stores, if any) is the reference (before)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created; files in it are replaced)")
    parser.add_argument("--held-in", default=None, metavar="C1,C2,...",
                        help="the relevant categories the fine-tuning data covered, to split every table into "
                        "held-in and held-out categories (e.g. adjective,animal,profession,place, the default of "
                        "`tasks export --format sft`); default: split only where an adapter's training_config.json "
                        "names held_out_categories")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Check the stores, write the comparison, print its notes, findings and where the report is."""
    import json

    from mdlm_interp.compare import write_comparison
    from mdlm_interp.errors import UsageError
    from mdlm_interp.outputs import claim_outputs
    from mdlm_interp.prompt_checks import check_prompts
    from mdlm_interp.tasks import CATEGORIES

    claim_outputs({"--out": args.out}, overwrite=True, folders={"--out"})  # files in it are replaced
    held_in = None
    if args.held_in is not None:
        held_in = tuple(c for c in args.held_in.split(",") if c)
        unknown = [c for c in held_in if c not in CATEGORIES]
        if unknown:
            raise UsageError(f"unknown categories {unknown}; choose from {', '.join(CATEGORIES)}")
    check_prompts(args.stores)  # every file, before any output
    report = write_comparison(args.stores, args.out, held_in=held_in, command_line=args.command_line)
    for note in json.loads((report.parent / "provenance.json").read_text())["notes"]:
        print(f"note: {note}")
    print(report.read_text().split("## Findings\n\n", 1)[1].split("\n\n", 1)[0])
    print(f"report: {report}")
    if (report.parent / "report.html").exists():
        print(f"interactive report: {report.parent / 'report.html'}")
    return 0
