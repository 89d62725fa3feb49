"""Command line: ``mdlm-interp <command> ...``.

Each subcommand lives in its own module of this package with two functions: ``add_parser(subparsers)``
registers its flags, and the handler it sets as ``func`` does the work by calling the library.
Heavy libraries are imported inside handlers so that ``mdlm-interp --help`` stays fast.
"""

import argparse
import os
import sys

from mdlm_interp.errors import PeerFailed, UsageError
from mdlm_interp.outputs import release_claims

SUBCOMMAND_MODULES = ["model", "tasks", "pretrain", "record", "summary", "analyze", "sweep", "train_ma", "compare",
                      "patch", "heads", "ablate", "generate",
                      "activations", "train_sae", "probe", "steps"]


class CommandLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (and exit code 2), like every other
    error of the command line; subcommand parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every available subcommand registered."""
    import importlib

    parser = CommandLineParser(
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
        return fail(str(error))
    except PeerFailed:  # another torchrun process failed and printed its own one-line error
        return 2
    except BrokenPipeError:  # e.g. `mdlm-interp tasks list | head -1`: the reader left, nothing to say
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        except (OSError, ValueError):
            pass
        return 0
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except MemoryError:
        return fail("out of memory")
    except OSError as error:  # the machine, not the toolkit: a full disk, a vanished file
        where = f": {error.filename}" if error.filename else ""
        return fail(f"{error.strerror or error}{where}")
    finally:
        release_claims()  # the outputs the command claimed (outputs.claim_outputs)
    return int(result or 0)


def fail(message: str, code: int = 2) -> int:
    """Print ``message`` as the one-line error of the command line; return the exit code."""
    print(f"mdlm-interp: error: {' '.join(message.split())}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
