"""Command line: ``mdlm-interp <command> ...``.

Each subcommand lives in its own module of this package with two functions: ``add_parser(subparsers)``
registers its flags, and the handler it sets as ``func`` does the work by calling the library.
Heavy libraries are imported inside handlers so that ``mdlm-interp --help`` stays fast.
"""

import argparse
import sys

from mdlm_interp.errors import UsageError

SUBCOMMAND_MODULES = ["model", "tasks", "pretrain", "record", "summary", "analyze", "sweep", "train_ma", "compare",
                      "patch", "heads", "ablate"]


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every available subcommand registered."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="mdlm-interp",
        description="Mechanistic interpretability of masked diffusion language models "
        "(LLaDA, Dream) and their autoregressive twins (Llama, Qwen2).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"mdlm_interp.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the process exit code (0 ok, 2 bad input)."""
    import shlex

    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["mdlm-interp", *(sys.argv[1:] if argv is None else argv)])  # for provenance
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except UsageError as error:
        print(f"mdlm-interp: error: {error}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
