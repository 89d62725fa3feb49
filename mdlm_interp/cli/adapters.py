"""The --adapter / --merge-adapter flags every model-taking command shares (not a subcommand)."""


def add_adapter_flags(parser) -> None:
    """Add ``--adapter DIR`` and ``--merge-adapter`` to a subcommand's parser."""
    parser.add_argument("--adapter", default=None, metavar="DIR",
                        help="load this LoRA adapter (peft format, e.g. from `mdlm-interp train-ma` or "
                        "data/adapters/NAME) onto the model; stores name it and its fingerprint")
    parser.add_argument("--merge-adapter", action="store_true",
                        help="fold the adapter into the weights instead of keeping LoRA layers (same "
                        "predictions up to rounding, plain modules)")


def adapter_options(args) -> dict:
    """Return the ``load_model`` keywords (adapter, merge_adapter) of parsed adapter flags."""
    return {"adapter": args.adapter, "merge_adapter": args.merge_adapter}
