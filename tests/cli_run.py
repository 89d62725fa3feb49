"""Running the command line in-process, as a test would run it in a shell."""

import io
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass

from mdlm_interp.cli import main


@dataclass
class CliResult:
    """What a command line run gave: exit code, standard output and standard error."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args) -> CliResult:
    """Run ``mdlm-interp ARGS`` in this process; return its exit code and captured output.

    argparse's own errors (exit 2) and ``--help`` (exit 0) end in SystemExit, turned into the exit code.
    """
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    return CliResult(code, out.getvalue(), err.getvalue())
