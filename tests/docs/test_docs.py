"""The documentation is executable: every command and Python block of README.md and docs/*.md runs as written.

Each document runs in a fresh temporary folder (its working directory), its items in order, so later
commands read what earlier ones wrote. ``mdlm-interp`` commands run in this process (``run_cli``), with
their progress bars on; ``torchrun`` commands in a subprocess; a document's Python blocks in one fresh
interpreter of their own, in order (one session per document, as a reader would type them). What counts
as a command and how the ``<!-- doc-test: ... -->`` markers change a run: tests/doc_blocks.py and the
README's "Documentation is tested". A failing documented command is a failure of this test.
"""

import _thread
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
import traceback
from pathlib import Path

import pytest

from cli_run import run_cli
from doc_blocks import DocError, Item, Marker, collect

ROOT = Path(__file__).resolve().parents[2]
LIMIT_S = 240  # wall seconds one documented item may take here: a longer one needs a size override
DOCS = ["README.md", *sorted(f"docs/{path.name}" for path in (ROOT / "docs").glob("*.md"))]
WORKER = r"""
import json, linecache, os, sys, traceback
reply = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)                       # what a snippet prints goes to the worker's log, not the replies
namespace = {"__name__": "__main__"}
for request in sys.stdin:
    code, name = json.loads(request)
    linecache.cache[name] = (len(code), None, code.splitlines(True), name)  # as if read from a file
    try:
        exec(compile(code, name, "exec"), namespace)
        answer = None
    except BaseException:
        answer = traceback.format_exc(limit=-3)
    sys.stdout.flush(); sys.stderr.flush()
    reply.write(json.dumps(answer) + "\n"); reply.flush()
"""


def environment() -> dict:
    """Return the environment of subprocesses: this checkout first on the path, offline, one thread."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def cpu_seconds(live: int | None = None) -> float:
    """Return the CPU seconds used so far by this process, its finished subprocesses and the running
    subprocess ``live`` (a pid; read from /proc where there is one)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    stat = Path(f"/proc/{live}/stat")
    if live is not None and stat.exists():
        fields = stat.read_text().rsplit(")", 1)[1].split()
        seconds += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return seconds


def lay_out(cwd: Path) -> None:
    """Make ``cwd`` look like the repository root to the documents: data/* holds links to the shipped word
    lists and adapters, data/models is empty (documented rebuilds write there; the shipped organisms are
    found by name from anywhere). Links are one level down, so a document cannot write into the checkout."""
    for child in (ROOT / "data").iterdir():
        if not child.is_dir():
            (cwd / "data").mkdir(exist_ok=True)
            (cwd / "data" / child.name).symlink_to(child)
            continue
        (cwd / "data" / child.name).mkdir(parents=True)
        if child.name != "models":
            for grandchild in child.iterdir():
                (cwd / "data" / child.name / grandchild.name).symlink_to(grandchild)


def shell_words(text: str, cwd: Path) -> list[str]:
    """Return the words bash makes of a documented command line (quotes, $'...', continuations, comments)."""
    done = subprocess.run(["bash", "-c", "printf '%s\\0' " + text], cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise DocError(f"bash cannot read the command: {done.stderr.strip()}")
    return done.stdout.split("\0")[:-1]


def synopsis_problem(text: str) -> str | None:
    """Return what is wrong with a synopsis (an unknown subcommand or flag), or None if it names real ones."""
    from mdlm_interp.cli import build_parser

    words = text.split()
    words = words[words.index("mdlm_interp") + 1:] if words[0] == "torchrun" else words[1:]
    parser = build_parser()
    while words:
        commands = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not commands or words[0].startswith("-"):
            break
        if words[0] not in commands[0].choices:
            return f"no subcommand {words[0]!r} of {parser.prog}"
        parser = commands[0].choices[words.pop(0)]
    for word in words:
        for flag in re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", word):
            if flag not in parser._option_string_actions:
                return f"{parser.prog} has no flag {flag}"
    return None


class Watchdog:
    """Stops an item that runs past ``LIMIT_S``: kills ``process`` if one is set, else interrupts this
    process's main thread (a command in process then ends as after Ctrl-C, exit 130)."""

    def __init__(self):
        self.fired, self.process = False, None

    def __enter__(self):
        self.timer = threading.Timer(LIMIT_S, self.fire)
        self.timer.start()
        return self

    def fire(self):
        self.fired = True
        if self.process is not None:
            self.process.kill()
        else:
            _thread.interrupt_main()

    def __exit__(self, *exc):
        self.timer.cancel()
        return False


class DocumentRun:
    """Runs one document's items in order in the folder ``cwd``; keeps the failures and the counts."""

    def __init__(self, cwd: Path, process_group_lock=nullcontext):
        self.cwd, self.worker, self.log, self.failures = cwd, None, None, []
        self.process_group_lock = process_group_lock  # held while a torchrun command runs
        self.counts = {"command": 0, "long": 0, "fails": 0, "python": 0, "synopsis": 0}
        self.seconds, self.cpu = {}, {}

    def run(self, item: Item) -> None:
        """Run ``item`` as the document says; a failure is kept as one message naming its line."""
        start, cpu = time.perf_counter(), cpu_seconds(self.worker and self.worker.pid)
        try:
            with Watchdog() as self.watchdog:
                problem = self.synopsis(item) if item.marker.mode == "synopsis" else \
                    self.python(item) if item.kind == "python" else self.command(item)
        except DocError as error:
            problem = str(error)
        except KeyboardInterrupt:  # the watchdog's, outside the command's own handler
            problem = "interrupted"
        if self.watchdog.fired:
            problem = f"ran longer than {LIMIT_S} s: give it a size override (<!-- doc-test: long; OLD => NEW -->)"
            if item.kind == "python":
                self.worker = None  # killed: the next block starts a fresh interpreter
        self.seconds[item.where] = time.perf_counter() - start
        self.cpu[item.where] = cpu_seconds(self.worker and self.worker.pid) - cpu
        if problem:
            self.failures.append(f"{item.where} {item.text.splitlines()[0][:100]!r}: {problem}")

    def synopsis(self, item: Item) -> str | None:
        """A synopsis is not run: its subcommand and flags must exist (Python sketches are only counted)."""
        self.counts["synopsis"] += 1
        return None if item.kind == "python" else synopsis_problem(item.text)

    def command(self, item: Item) -> str | None:
        """Run a documented command; return what went wrong, or None."""
        self.counts["command"] += 1
        self.counts["long"] += item.marker.mode == "long"
        words = shell_words(item.as_run(), self.cwd)
        if words[0] in ("torchrun", "mkdir"):
            program = str(Path(sys.executable).with_name("torchrun")) if words[0] == "torchrun" else "mkdir"
            with self.process_group_lock() if words[0] == "torchrun" else nullcontext():
                self.watchdog.process = subprocess.Popen([program, *words[1:]], cwd=self.cwd, env=environment(),
                                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                stdout, stderr = self.watchdog.process.communicate()
            returncode = self.watchdog.process.returncode
            errors = [line for line in stderr.splitlines() if line.startswith("mdlm-interp: error")]
            stderr = "\n".join(errors[:1] + [stderr[-400:]])  # the toolkit's own message before torchrun's
        else:
            try:
                result = run_cli(*words[1:])
            except Exception as error:  # what a user sees as a traceback and exit 1
                return f"traceback: {traceback.format_exception_only(error)[-1].strip()} " \
                       f"(at {traceback.extract_tb(error.__traceback__)[-1].filename.split('/')[-1]}:" \
                       f"{traceback.extract_tb(error.__traceback__)[-1].lineno})"
            returncode, stdout, stderr = result.returncode, result.stdout, result.stderr
        if item.marker.mode == "fails":
            self.counts["fails"] += 1
            lines = stderr.strip().splitlines()
            if returncode != 2 or len(lines) != 1:
                return f"should fail with one line and exit 2; exit {returncode}, stderr {stderr[-600:]!r}"
            shown = stdout.strip().splitlines() + lines
        else:
            if returncode != 0:
                return f"exit {returncode}: {stderr.strip()[-800:]}"
            shown = stdout.strip().splitlines()
        if item.expected is not None and [line.rstrip() for line in shown] != item.expected:
            return f"printed {shown!r}, the document shows {item.expected!r}"
        return None

    def python(self, item: Item) -> str | None:
        """Run a Python block in the document's interpreter; return the traceback's end, or None."""
        self.counts["python"] += 1
        if self.worker is None:
            if self.log is not None:
                self.log.close()
            self.log = open(self.cwd / "python-blocks.log", "a")
            self.worker = subprocess.Popen([sys.executable, "-c", WORKER], cwd=self.cwd, env=environment(),
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                           text=True)
        self.watchdog.process = self.worker
        self.worker.stdin.write(json.dumps([item.as_run(), item.where]) + "\n")
        self.worker.stdin.flush()
        answer = self.worker.stdout.readline()
        if not answer:
            return "the Python interpreter died"
        return json.loads(answer)

    def close(self) -> None:
        """End the document's Python interpreter, if one was started."""
        if self.worker is not None:
            self.worker.stdin.close()
            self.worker.wait(timeout=60)
        if self.log is not None:
            self.log.close()

    def summary(self, doc: str) -> str:
        """Return the closing line: how many commands and blocks ran, how many synopses were only checked."""
        c = self.counts
        slowest = [kv for kv in sorted(self.cpu.items(), key=lambda kv: -kv[1])[:12] if kv[1] >= 1]
        return (f"{doc}: {c['command']} commands run ({c['long']} with size overrides, {c['fails']} failing "
                f"on purpose), {c['python']} Python blocks run, {c['synopsis']} synopses not run (parser-checked); "
                f"{sum(self.seconds.values()):.0f} s wall, {sum(self.cpu.values()):.0f} s CPU"
                + "".join(f"; {where} {seconds:.0f} s" for where, seconds in slowest))


@pytest.mark.parametrize("doc", DOCS)
def test_documentation_runs_as_written(doc, tmp_path, monkeypatch, capsys, process_group_lock):
    items = collect(ROOT / doc, doc)
    lay_out(tmp_path)
    monkeypatch.chdir(tmp_path)
    run = DocumentRun(tmp_path, process_group_lock)
    try:
        for item in items:
            run.run(item)
    finally:
        run.close()
    with capsys.disabled():
        print("\n" + run.summary(doc))
    assert not run.failures, f"{len(run.failures)} documented item(s) of {doc} fail:\n" + "\n".join(run.failures)


SAMPLE = '''# A document

Run `mdlm-interp tasks show TASK [--placement P]` or `mdlm-interp tasks list`.

<!-- doc-test: long; --n 50 => --n 1; append --seed 3 -->

    mdlm-interp tasks export --task adjective+largest --n 50 \\
        --out a.jsonl        # a comment
    make something

and then

    $ mdlm-interp tasks list --words
    one line shown

<!-- doc-test: fails -->

```
$ mdlm-interp tasks show nope+largest
mdlm-interp: error: shown
```

```python
x = 1
```
'''


def test_the_collector_finds_commands_blocks_markers_and_synopses(tmp_path):
    (tmp_path / "doc.md").write_text(SAMPLE)
    items = collect(tmp_path / "doc.md")
    assert [(item.line, item.kind, item.marker.mode) for item in items] == [
        (3, "inline", "synopsis"), (3, "inline", "synopsis"), (7, "command", "long"),
        (13, "command", "run"), (19, "command", "fails"), (24, "python", "run")]
    export = items[2]
    assert export.text == "mdlm-interp tasks export --task adjective+largest --n 50 \\\n--out a.jsonl        # a comment"
    assert export.as_run() == ("mdlm-interp tasks export --task adjective+largest --n 1 \\\n--out a.jsonl --seed 3"
                               "        # a comment")
    assert shell_words(export.as_run(), tmp_path) == ["mdlm-interp", "tasks", "export", "--task", "adjective+largest",
                                                      "--n", "1", "--out", "a.jsonl", "--seed", "3"]
    assert items[3].expected == ["one line shown"] and export.expected is None
    assert items[4].expected == ["mdlm-interp: error: shown"]
    assert items[5].text == "x = 1"


@pytest.mark.parametrize("text, message", [
    ("<!-- doc-test: long; --n 9 => --n 1 -->\n\n    mdlm-interp tasks list\n", "matches nothing"),
    ("<!-- doc-test: long -->\n\n    mdlm-interp tasks list\n", "must say its size override"),
    ("<!-- doc-test: slow -->\n\n    mdlm-interp tasks list\n", "must start with"),
    ("<!-- doc-test: fails -->\n\nSome prose.\n", "not followed by a block"),
    ("<!-- doc-test: fails -->\n\n    make demo\n", "without commands"),
    ("Text.\n\n    from mdlm_interp import load_model\n", "never run"),
])
def test_a_document_the_collector_cannot_read_as_intended_is_an_error(tmp_path, text, message):
    (tmp_path / "doc.md").write_text(text)
    with pytest.raises(DocError, match=message):
        collect(tmp_path / "doc.md")


@pytest.mark.parametrize("text, problem", [
    ("mdlm-interp tasks show TASK [--placement P] [--masks N]", None),
    ("mdlm-interp analyze STORE [STORE ...] --out DIR", None),
    ("mdlm-interp record --adapter DIR [--merge-adapter]", None),
    ("mdlm-interp record --no-such-flag", "has no flag --no-such-flag"),
    ("mdlm-interp tasks shows TASK", "no subcommand 'shows'"),
])
def test_a_synopsis_must_name_a_real_subcommand_and_real_flags(text, problem):
    found = synopsis_problem(text)
    assert found == problem or (problem and problem in found)


def test_a_documented_command_fails_the_test_when_it_fails_or_prints_other_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = DocumentRun(tmp_path)
    fails, runs = Marker(mode="fails"), Marker()
    run.run(Item("doc.md", 1, "command", "mdlm-interp tasks show nope+largest", fails))           # fails as shown
    run.run(Item("doc.md", 2, "command", "mdlm-interp tasks list", fails))                        # should fail
    run.run(Item("doc.md", 3, "command", "mdlm-interp tasks show nope+largest", runs))            # should run
    run.run(Item("doc.md", 4, "command", "mdlm-interp tasks list", runs, expected=["not this"]))   # other output
    run.run(Item("doc.md", 5, "python", "raise ValueError('from the block')", runs))
    monkeypatch.setattr(sys.modules[__name__], "LIMIT_S", 3)
    run.run(Item("doc.md", 6, "python", "import time\ntime.sleep(60)", runs))                   # too long
    run.run(Item("doc.md", 7, "python", "assert 'time' not in globals()", runs))                # a fresh one
    run.close()
    assert [failure.split(" ")[0] for failure in run.failures] == ["doc.md:2", "doc.md:3", "doc.md:4", "doc.md:5",
                                                                   "doc.md:6"]
    assert "from the block" in run.failures[3] and "longer than 3 s" in run.failures[4]
    assert run.seconds["doc.md:6"] < 30
    assert run.counts == {"command": 4, "long": 0, "fails": 2, "python": 3, "synopsis": 0}


def test_record_store_stays_the_function_when_the_record_module_is_imported(tiny_checkpoint, tmp_path):
    """README: ``from mdlm_interp.record import RecordConfig`` then two top-level calls (issue 19, item 2)."""
    import mdlm_interp
    from mdlm_interp.record import RecordConfig, record
    from mdlm_interp.store import open_store

    lm = mdlm_interp.load_model(tiny_checkpoint("llada"))
    fields = dict(tasks="adjective+largest", masks=(1, 3), n=1, n_relevant=2, n_distractor=2, record=())
    first = mdlm_interp.record_store(lm, out=tmp_path / "a.h5", **fields)
    second = mdlm_interp.record_store(lm, out=tmp_path / "b.h5", config=RecordConfig(**fields))
    assert mdlm_interp.record_store is record and mdlm_interp.record.RecordConfig is RecordConfig
    with open_store(first) as a, open_store(second) as b:
        assert a.n_rows == b.n_rows == 2
        assert a.examples["masks"].tolist() == [1, 3]
        assert a.examples.equals(b.examples)
    fresh = subprocess.run([sys.executable, "-c", "import mdlm_interp; f = mdlm_interp.record_store; "
                            "import mdlm_interp.record; assert mdlm_interp.record_store is f is "
                            "mdlm_interp.record.record; print(type(mdlm_interp.record).__name__)"],
                           env=environment(), capture_output=True, text=True)
    assert fresh.returncode == 0 and fresh.stdout.strip() == "module", fresh.stderr
