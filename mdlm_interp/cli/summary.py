"""``mdlm-interp summary FILE [--json]``: what a file the toolkit wrote holds, for every kind of file."""


def add_parser(subparsers) -> None:
    """Register the ``summary`` subcommand."""
    parser = subparsers.add_parser(
        "summary",
        help="what a store or trace holds: per-condition table of a record store, runs of a patching store, "
        "accuracy of an ablation store, steps of a decode trace",
        description="Check a file the toolkit wrote against its kind's schema and describe it. Record stores "
        "(`record`): per condition (masks, filler, placement) rows, accuracy, mean p(answer) and entropy, and "
        "where recorded the mean attention mass on the masks after the answer slot and the three normalised "
        "gradient means. Patching stores (`patch`): the clean and corrupt runs' accuracy and logit difference. "
        "Ablation stores (`ablate`): accuracy per mask count without ablation and per ablation mode. Decode "
        "traces (`generate --trace`): steps, positions unmasked and text per prompt. Steps stores (`steps record`): "
        "prompts, steps and decoded accuracy per mask count, while written too; step patching stores (`steps "
        "patch`): accuracy, share changed and settle step per site and patched step. A damaged file is one line, "
        "exit 2.",
    )
    parser.add_argument("store", metavar="FILE",
                        help="an HDF5 file written by `mdlm-interp record`, `patch`, `ablate`, `steps` or `generate --trace`")
    parser.add_argument("--json", action="store_true",
                        help='print {"kind": ..., "conditions": [{...}, ...]} instead of a table')
    parser.set_defaults(func=run)


def run(args) -> int:
    """Print the summary of ``args.store``; return 0 (a missing, foreign or damaged file raises UsageError)."""
    import json

    from mdlm_interp.analyses.checks import check_file
    from mdlm_interp.store.summary import format_table, plain_table

    kind, _ = check_file(args.store)
    described = kind.describe(args.store)
    if args.json:
        print(json.dumps({"kind": described["kind"], "conditions": described["conditions"]}))
    else:
        print(described["header"])
        table = format_table if described["kind"] == "record" else plain_table
        print(table(described["conditions"]))
    return 0
