"""Collecting what README.md and docs/*.md tell a reader to run: commands, Python blocks, inline synopses.

What counts (the README's "Documentation is tested" paragraph says the same):

- a **command** is a line of a code block (fenced, or indented by four spaces) that starts with
  ``mdlm-interp``, ``$ mdlm-interp`` or ``torchrun ... -m mdlm_interp`` (or ``mkdir``, for the folders
  the next commands write into), with its ``\\`` continuation lines; after a ``$ `` command, the lines up to the next command are its expected standard output;
- a **Python block** is a fenced ```` ```python ```` block; an indented block that starts with
  ``import``/``from`` is refused (write Python fenced, so that it cannot go unrun);
- an **inline synopsis** is ``mdlm-interp ...`` in backticks in prose: never run, but its subcommand
  and every ``--flag`` must exist.

A marker, an HTML comment on the line(s) before a block, changes how its items run:
``<!-- doc-test: synopsis -->`` (placeholders: not run, parser-checked, counted as skipped),
``<!-- doc-test: fails -->`` (each command must exit 2 with one line on stderr),
``<!-- doc-test: long; OLD => NEW; append ARGS -->`` (a size override: each ``OLD => NEW`` replaces
text in the block's commands or Python code and must match at least once; ``append ARGS`` adds
arguments to every command of the block).
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

MARKER = re.compile(r"^\s*<!--\s*doc-test:(.*?)-->\s*$")
COMMAND = re.compile(r"^(\$ )?(mdlm-interp(\s|$)|torchrun\s.*-m mdlm_interp\b|mkdir\s)")
INLINE = re.compile(r"(?<!`)`(mdlm-interp(?:\s[^`]*)?)`(?!`)")
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")


class DocError(ValueError):
    """A document that the doc test cannot read as intended (e.g. a marker without a block)."""


@dataclass
class Marker:
    """What a ``<!-- doc-test: ... -->`` comment asks: the mode and the size overrides."""

    mode: str = "run"                       # run | long | synopsis | fails
    rewrites: list = field(default_factory=list)   # [(old, new)]
    append: str = ""
    text: str = ""

    @classmethod
    def parse(cls, body: str, where: str) -> "Marker":
        """Return the marker of the comment body ``long; --n 50 => --n 1; append --steps 2``."""
        clauses = [c.strip() for c in body.split(";") if c.strip()]
        if not clauses or clauses[0] not in ("long", "synopsis", "fails"):
            raise DocError(f"{where}: doc-test marker must start with long, synopsis or fails: {body.strip()!r}")
        marker = cls(mode=clauses[0], text=body.strip())
        for clause in clauses[1:]:
            if clause.startswith("append "):
                marker.append = (marker.append + " " + clause[len("append "):].strip()).strip()
            elif "=>" in clause:
                old, new = (part.strip() for part in clause.split("=>", 1))
                marker.rewrites.append((old, new))
            else:
                raise DocError(f"{where}: doc-test clause is neither OLD => NEW nor append ARGS: {clause!r}")
        if marker.mode == "long" and not (marker.rewrites or marker.append):
            raise DocError(f"{where}: a long marker must say its size override (OLD => NEW or append ARGS)")
        return marker


@dataclass
class Item:
    """One thing the documentation shows: a command, a Python block or an inline synopsis."""

    doc: str
    line: int
    kind: str                      # command | python | inline
    text: str                      # as written in the document (prompt `$ ` removed)
    marker: Marker = field(default_factory=Marker)
    expected: list | None = None   # stdout lines shown after a `$ ` command

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    def as_run(self) -> str:
        """Return the text to run: the marker's rewrites applied (each must match) and ARGS appended."""
        text = self.text
        for old, new in self.marker.rewrites:
            text = text.replace(old, new)
        if self.marker.append:  # before a trailing shell comment, if any
            text = re.sub(r"(\s+#[^\n'\"]*)?$", lambda m: f" {self.marker.append}{m.group(0)}", text.rstrip(), count=1)
        return text


def code_blocks(lines: list[str]):
    """Yield (first line number, language or None for an indented block, lines, marker text or None)."""
    i, marker, marker_line = 0, None, 0
    previous_blank = True
    while i < len(lines):
        line = lines[i]
        found = MARKER.match(line)
        fence = FENCE.match(line)
        if found:
            if marker is not None:
                raise DocError(f"line {marker_line}: doc-test marker not followed by a block")
            marker, marker_line = found.group(1), i + 1
            i += 1
            continue
        if fence:
            indent, ticks, language = fence.groups()
            body, i = [], i + 1
            while i < len(lines) and not lines[i].strip().startswith(ticks[:3]):
                body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
                i += 1
            yield i - len(body) + 1, language or "", body, marker
            marker, previous_blank = None, False
            i += 1
            continue
        if previous_blank and line.startswith("    ") and line.strip():
            start, body = i, []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                body.append(lines[i][4:])
                i += 1
            while body and not body[-1].strip():
                body.pop()
            yield start + 1, None, body, marker
            marker, previous_blank = None, True
            continue
        if line.strip() and marker is not None:
            raise DocError(f"line {marker_line}: doc-test marker not followed by a block")
        previous_blank = not line.strip()
        i += 1
    if marker is not None:
        raise DocError(f"line {marker_line}: doc-test marker not followed by a block")


def commands_of(body: list[str], first: int):
    """Yield (line number, command text, expected output or None) for the commands of a block."""
    i = 0
    while i < len(body):
        match = COMMAND.match(body[i].strip())
        if not match:
            i += 1
            continue
        start, prompt = i, bool(match.group(1))
        parts = [body[i].strip()[2:] if prompt else body[i].strip()]
        while parts[-1].endswith("\\") and i + 1 < len(body):
            i += 1
            parts.append(body[i].strip())
        i += 1
        expected = None
        if prompt:
            expected = []
            while i < len(body) and not COMMAND.match(body[i].strip()):
                expected.append(body[i].rstrip())
                i += 1
            while expected and not expected[-1].strip():
                expected.pop()
        yield first + start, "\n".join(parts), expected


def collect(path: Path, name: str | None = None) -> list[Item]:
    """Return every command, Python block and inline synopsis of the markdown file, in document order."""
    name = name or path.name
    lines = path.read_text(encoding="utf-8").splitlines()
    items, in_block = [], set()
    try:
        blocks = list(code_blocks(lines))
    except DocError as error:
        raise DocError(f"{name}: {error}") from None
    for first, language, body, marker_text in blocks:
        where = f"{name}:{first}"
        marker = Marker.parse(marker_text, where) if marker_text is not None else Marker()
        in_block.update(range(first - 2, first + len(body)))  # with the fences
        looks_python = language != "python" and bool(body) and re.match(r"(from|import)\s", body[0].strip())
        if looks_python and marker.mode != "synopsis":
            raise DocError(f"{where}: Python outside a ```python block is never run; fence it as ```python "
                           "(or mark it <!-- doc-test: synopsis -->)")
        if language == "python" or looks_python:
            found = [Item(name, first, "python", "\n".join(body), marker)]
        else:
            found = [Item(name, line, "command", text, marker, expected)
                     for line, text, expected in commands_of(body, first)]
        if marker_text is not None and not found:
            raise DocError(f"{where}: doc-test marker on a block without commands")
        for old, _ in marker.rewrites:
            if not any(old in item.text for item in found):
                raise DocError(f"{where}: doc-test rewrite {old!r} matches nothing in its block")
        items.extend(found)
    prose = "\n".join("" if number in in_block else line for number, line in enumerate(lines))
    for match in INLINE.finditer(prose):
        line = prose.count("\n", 0, match.start()) + 1
        items.append(Item(name, line, "inline", " ".join(match.group(1).split()), Marker(mode="synopsis")))
    items.sort(key=lambda item: item.line)
    return items
