"""No hook name is assembled by hand: every one comes from ``models.hook_names.hook_name``."""

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "mdlm_interp"
HELPER = Path("models/hook_names.py")
# Files another rewrite owns (the decoding package); they still write names by hand until it lands.

# A whole string that is a hook name: "hook_embed", "blocks.3.attn.hook_z", f"blocks.{l}.hook_resid_pre",
# "ln_final.hook_scale", or a block's name with a variable tail, f"blocks.{l}.attn.{name}" ({} stands for an
# f-string's placeholder; parameter templates such as "blocks.{i}.attn.q_proj" are no hook names).
HOOK_NAME = re.compile(r"^(blocks\.(\d+|\{\})\.((attn|mlp|ln1|ln2)\.)?(hook_\w*(\{\}\w*)?|\{\})"
                       r"|ln_final\.hook_\w+|hook_embed)$")


def literal_texts(tree: ast.AST):
    """Yield (line, text) of every string constant and f-string (placeholders as {}) that is not a docstring."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    inside_fstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts = []
            for value in node.values:
                inside_fstrings.add(id(value))
                parts.append(value.value if isinstance(value, ast.Constant) else "{}")
            yield node.lineno, "".join(parts)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                and id(node) not in inside_fstrings:
            yield node.lineno, node.value


def hand_made_names(root: Path) -> list[str]:
    """Return "file:line text" for every hook name written as a literal outside the helper."""
    found = []
    for file in sorted(root.rglob("*.py")):
        relative = file.relative_to(root)
        if relative == HELPER:
            continue
        for line, text in literal_texts(ast.parse(file.read_text(encoding="utf-8"))):
            if HOOK_NAME.match(text):
                found.append(f"{relative}:{line} {text}")
    return found


def test_no_hook_name_is_assembled_outside_the_helper():
    assert hand_made_names(PACKAGE) == []


def test_the_check_catches_each_way_of_writing_a_name_and_spares_parameter_names(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "hook_names.py").write_text('X = f"blocks.{layer}.attn.hook_z"\n')
    (tmp_path / "fine.py").write_text(
        '"""Docstring naming blocks.{l}.attn.hook_z."""\n'
        'TEMPLATE = f"blocks.{{i}}.{part}"\nPARAM = "blocks.{i}.attn.q_proj"\nKIND = "z"\nNAME = f"{kind} layer"\n')
    assert hand_made_names(tmp_path) == []
    for text in ('f"blocks.{layer}.attn.hook_z"', '"blocks.0.hook_resid_pre"', '"hook_embed"',
                 'f"blocks.{l}.hook_{site}"', '"ln_final.hook_scale"', 'f"blocks.{l}.attn.{name}"'):
        (tmp_path / "bad.py").write_text(f"NAME = {text}\n")
        found = hand_made_names(tmp_path)
        assert len(found) == 1 and found[0].startswith("bad.py:1"), (text, found)
