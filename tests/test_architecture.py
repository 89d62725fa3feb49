"""The package's layering, read from the import statements (``ast``; lazy imports inside functions count).

Data flows one way (docs/ARCHITECTURE.md): models know nothing of tasks, stores, recording, training or the CLI;
stores know nothing of models, tasks, hooks or recording; hooks write no store; the library never
imports its command line.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mdlm_interp"

# (layer, what it must not import); a layer is a subpackage or module of mdlm_interp.
RULES = [
    ("models", ("tasks", "store", "record", "training", "cli", "hooks", "batching")),
    # stores in and out; the store holds no experiment (experiments bring their own schemas)
    ("store", ("models", "tasks", "hooks", "record", "training", "circuits", "decoding", "sweep", "compare",
               "analyses", "cli")),
    ("hooks", ("store", "record", "training", "cli")),
    ("tasks", ("models", "store", "hooks", "record", "training", "cli")),
    ("batching", ("models", "tasks", "store", "hooks", "record", "training", "cli")),
    ("analyses", ("tasks", "hooks", "batching", "record", "training", "sweep", "circuits", "decoding", "cli")),
    ("plan", ("models", "store", "hooks", "record", "circuits", "training", "cli")),
    ("subject", ("tasks", "hooks", "record", "training", "cli")),
    ("steps", ("training", "sweep", "compare", "analyses", "cli")),
    # who does which part of a run, and meetings of the processes: no experiment, no model, no store
    ("sharding", ("models", "tasks", "store", "hooks", "record", "training", "circuits", "decoding", "sweep",
                  "analyses", "cli")),
]

# Layers that may import from models only these public modules (no rotary, norm, attention or block internals).
MODELS_PUBLIC = {
    "circuits": ("mdlm_interp.models", "mdlm_interp.models.hook_names", "mdlm_interp.models.readout"),
    "batching": ("mdlm_interp.models.readout",),  # the readout position of the answer slot, nothing else
}

COMMAND_LINE = ("cli", "__main__")  # the command line and `python -m mdlm_interp`, its entry point


def import_statements(file: Path, package_root: Path) -> list[list[str]]:
    """Return, per import statement of a file, the absolute dotted names it may load (relative imports
    resolved; ``from a import b`` may load ``a`` and ``a.b``)."""
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    package = file.relative_to(package_root.parent).with_suffix("").parts[:-1]
    statements = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            statements += [[alias.name] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ((base,) if base else ()))
            statements.append([base] + [f"{base}.{alias.name}" for alias in node.names])
    return statements


def layer_of(file: Path, package_root: Path) -> str:
    """Return the first component below the package of a file (e.g. "models" or "record")."""
    return file.relative_to(package_root).with_suffix("").parts[0]


def is_module(package_root: Path, dotted: str) -> bool:
    """Return whether ``dotted`` (e.g. "mdlm_interp.models.rotary") names a module file or package of the tree."""
    path = package_root.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def violations(package_root: Path) -> list[str]:
    """Return one line per import that breaks a rule of ``RULES`` or imports the CLI from outside it."""
    name = package_root.name
    problems = []
    rules = {}
    for layer, modules in RULES:
        rules[layer] = rules.get(layer, ()) + modules
    for file in sorted(package_root.rglob("*.py")):
        layer = layer_of(file, package_root)
        forbidden = rules.get(layer, ())
        if layer not in COMMAND_LINE:
            forbidden = (*forbidden, "cli")
        public = tuple(module.replace("mdlm_interp", name, 1) for module in MODELS_PUBLIC.get(layer, ()))
        for names in import_statements(file, package_root):
            for module in names:
                parts = module.split(".")
                if parts[0] != name or len(parts) < 2:
                    continue
                if parts[1] == "models" and layer in MODELS_PUBLIC:
                    # the statement's own module, and any name after ``import`` that is a module file
                    if (module == names[0] or is_module(package_root, module)) and module not in public:
                        problems.append(f"{file.relative_to(package_root.parent)} ({layer}) imports {module}, "
                                        "not a public models module")
                        break
                    continue
                if parts[1] in forbidden:
                    problems.append(f"{file.relative_to(package_root.parent)} ({layer}) imports {module}")
                    break
    return problems


def test_the_package_keeps_its_layers():
    assert violations(PACKAGE) == []


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize("relative,text,expected", [
    ("models/loader.py", "from mdlm_interp.tasks import TASK_NAMES\n", "(models) imports mdlm_interp.tasks"),
    ("models/loader.py", "def f():\n    import mdlm_interp.store.reader\n", "(models) imports mdlm_interp.store.reader"),
    ("models/loader.py", "from ..record import record\n", "(models) imports mdlm_interp.record"),
    ("models/loader.py", "from mdlm_interp import training\n", "(models) imports mdlm_interp.training"),
    ("store/reader.py", "from mdlm_interp.models.loader import load_model\n", "(store) imports mdlm_interp.models"),
    ("store/reader.py", "from ..hooks import recorders\n", "(store) imports mdlm_interp.hooks"),
    ("store/reader.py", "from . import schema\nfrom mdlm_interp.tasks import words\n", "(store) imports mdlm_interp.tasks"),
    ("hooks/recorders.py", "from mdlm_interp.store.writer import open_writer\n", "(hooks) imports mdlm_interp.store"),
    ("record.py", "from mdlm_interp.cli.record import run\n", "(record) imports mdlm_interp.cli"),
    ("training/organisms.py", "from mdlm_interp.cli import main\n", "(training) imports mdlm_interp.cli"),
    ("analyses/locality.py", "from mdlm_interp.record import record\n", "(analyses) imports mdlm_interp.record"),
    ("analyses/patching.py", "from mdlm_interp.circuits.schemas import PATCHING\n",
     "(analyses) imports mdlm_interp.circuits"),
    ("analyses/decode.py", "def f():\n    from mdlm_interp import decoding\n", "(analyses) imports mdlm_interp.decoding"),
    ("store/results.py", "from mdlm_interp.circuits.schemas import PATCHING\n", "(store) imports mdlm_interp.circuits"),
    ("store/results.py", "import mdlm_interp.analyses.stats\n", "(store) imports mdlm_interp.analyses"),
    ("plan.py", "from mdlm_interp.models import load_model\n", "(plan) imports mdlm_interp.models"),
    ("subject.py", "from mdlm_interp.tasks import TASK_NAMES\n", "(subject) imports mdlm_interp.tasks"),
    ("circuits/patching.py", "from mdlm_interp.models.rotary import rotary_tables\n",
     "(circuits) imports mdlm_interp.models.rotary, not a public models module"),
    ("circuits/patching.py", "from mdlm_interp.models.transformer import RMSNorm\n",
     "(circuits) imports mdlm_interp.models.transformer, not a public models module"),
    ("circuits/patching.py", "from mdlm_interp.models.hook_names import hook_name\nimport mdlm_interp.models.norm\n",
     "(circuits) imports mdlm_interp.models.norm, not a public models module"),
    ("circuits/pairs.py", "from mdlm_interp.models import load_model, hook_names\nfrom mdlm_interp.models import attention\n",
     "(circuits) imports mdlm_interp.models.attention, not a public models module"),
    ("batching.py", "from mdlm_interp.models.loader import load_model\n",
     "(batching) imports mdlm_interp.models.loader, not a public models module"),
])
def test_each_rule_catches_its_violation(tmp_path, relative, text, expected):
    root = tmp_path / "mdlm_interp"
    write(root, "__init__.py", "")
    write(root, "cli/record.py", "from mdlm_interp.record import record\nfrom mdlm_interp.cli import main\n")
    write(root, "circuits/ablation.py", "from mdlm_interp.models.hook_names import hook_name\n"
          "from mdlm_interp.models import readout\nfrom mdlm_interp.models.readout import logits_at\n")
    write(root, "batching.py", "from mdlm_interp.models.readout import readout_position\n")
    assert violations(root) == []  # the CLI may import anything, itself included; public models modules
    write(root, "models/attention.py", "")
    write(root, "models/hook_names.py", "")
    write(root, relative, text)
    found = violations(root)
    assert len(found) == 1 and expected in found[0], found


EXPERIMENT_KINDS = ("patching", "ablation")  # result kinds the experiments own (circuits/schemas.py)


def experiment_mentions(store_root: Path) -> list[str]:
    """Return one line per string literal (docstrings aside) or name in the store's modules that names an
    experiment's result kind: the store holds generic machinery, the experiments register their schemas."""
    found = []
    for file in sorted(store_root.rglob("*.py")):
        tree = ast.parse(file.read_text(encoding="utf-8"))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                      and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                text = node.value
            elif isinstance(node, (ast.Name, ast.FunctionDef, ast.ClassDef, ast.Attribute, ast.alias)):
                text = getattr(node, "id", None) or getattr(node, "name", None) or getattr(node, "attr", "")
            else:
                continue
            for kind in EXPERIMENT_KINDS:
                if kind in text.lower():
                    found.append(f"{file.relative_to(store_root.parent)}:{node.lineno}: {text!r} names {kind}")
    return found


def test_the_store_names_no_experiment_and_the_experiments_register_their_kinds():
    from mdlm_interp.circuits import schemas
    from mdlm_interp.store import results

    assert experiment_mentions(PACKAGE / "store") == []
    assert not {"PATCHING", "ABLATION", "SITES", "KINDS"} & set(vars(results))
    assert results.registered_kind("patching") is schemas.PATCHING
    assert results.registered_kind("ablation") is schemas.ABLATION


@pytest.mark.parametrize("text", ['KIND = "patching"\n', "from mdlm_interp.circuits.schemas import ABLATION\n",
                                  "def describe_patching(path):\n    return path\n"])
def test_an_experiment_named_in_the_store_is_caught(tmp_path, text):
    write(tmp_path / "mdlm_interp", "store/results.py", '"""Result stores: patching, ablation (a docstring may say so)."""\n')
    assert experiment_mentions(tmp_path / "mdlm_interp" / "store") == []
    write(tmp_path / "mdlm_interp", "store/results.py", text)
    assert len(experiment_mentions(tmp_path / "mdlm_interp" / "store")) == 1


BENCHMARKS = PACKAGE.parent / "benchmarks"


def top_level_names(file: Path) -> set[str]:
    """Return the names a module defines or imports at its top level."""
    names = set()
    for node in ast.parse(file.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, ast.Assign):
            names |= {target.id for target in node.targets if isinstance(target, ast.Name)}
    return names


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.py")))
def test_benchmarks_import_what_exists(script):
    """`make bench` runs these outside the tests: every import must resolve (a script of this folder and
    the names taken from it, or an installed module), so that a renamed helper cannot break it unseen."""
    import importlib.util

    for node in ast.walk(ast.parse((BENCHMARKS / script).read_text(encoding="utf-8"))):
        modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        for module in modules:
            local = BENCHMARKS / f"{module}.py"
            if local.is_file():
                missing = {alias.name for alias in node.names} - top_level_names(local) \
                    if isinstance(node, ast.ImportFrom) else set()
                assert not missing, f"{script} imports {sorted(missing)} from {module}, which lacks them"
            else:
                assert importlib.util.find_spec(module.split(".")[0]) is not None, f"{script} imports {module}"
