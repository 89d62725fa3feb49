"""Is a file fit to analyse? Its layout against its kind's schema (``store.kinds``), then the settings and
the attributes its analyses read (names along a result store's axes, the prompts per task).

``check_file`` runs once per file when ``analyze``, ``compare`` or ``summary`` opens it; anything wrong is
one ``UsageError`` line naming the file (exit 2) before any output is written. What a record store's
task configuration says about the prompts is judged against the task suite by
``mdlm_interp.prompt_checks`` (analyses import no tasks), which the commands run first.
"""

from pathlib import Path

from mdlm_interp.errors import UsageError
from mdlm_interp.store.kinds import open_checked

PROMPT_KINDS = ("record", "patching", "ablation")  # kinds whose task_config describes the prompts


def check_file(path):
    """Return (``store.kinds.FileKind``, root attributes) of the file at ``path`` after checking its layout
    and, for stores of prompts, their settings and a result store's own attributes; UsageError (one
    line) otherwise."""
    kind, attrs = open_checked(path)
    if kind.name in PROMPT_KINDS:
        problem = settings_problem(attrs["settings"])
        problem = problem or (KIND_CHECKS[kind.name](attrs) if kind.name in KIND_CHECKS else None)
        if problem:
            raise UsageError(f"{Path(path)} is damaged: {problem}")
    return kind, attrs


def is_count(value, least: int = 0) -> bool:
    """Return True for an integer (not a boolean) of at least ``least``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def settings_problem(settings: dict) -> str | None:
    """Return what is wrong with a store's settings that analyses read (None when nothing is): the prompts
    per task ``n`` (at least 1, where given) and the adapter (an object with path and fingerprint)."""
    if "n" in settings and not is_count(settings["n"], 1):
        return f"settings n is {settings['n']!r}, not an integer of at least 1"
    adapter = settings.get("adapter")
    if adapter is not None and not (isinstance(adapter, dict) and {"path", "fingerprint"} <= set(adapter)):
        return "settings adapter is not an object with path and fingerprint"
    return None


def _names(value, size: int | None = None) -> bool:
    return (isinstance(value, list) and all(isinstance(v, str) for v in value)
            and (size is None or len(value) == size))


def patching_problem(attrs: dict) -> str | None:
    """Return what is wrong with a patching store's own attributes (names along its axes), or None."""
    dims = attrs["dims"]
    for name, axis in (("directions", "directions"), ("position_groups", "groups"), ("head_groups", "head_groups")):
        if not _names(attrs[name], dims.get(axis)):
            return f"{name} {str(attrs[name])[:60]} are not {dims.get(axis)} names (dims {axis})"
    if "n" not in attrs["settings"]:
        return "settings has no n"
    return None


def ablation_problem(attrs: dict) -> str | None:
    """Return what is wrong with an ablation store's own attributes (modes, heads, control heads), or None."""
    dims = attrs["dims"]
    if not _names(attrs["modes"], dims.get("modes")):
        return f"modes {str(attrs['modes'])[:60]} are not {dims.get('modes')} names (dims modes)"
    if not _names(attrs["heads"]) or not attrs["heads"]:
        return "heads is not a list of \"layer.head\" names"
    control = attrs["control_heads"]
    if not isinstance(control, list) or len(control) != dims.get("draws") or not all(_names(c) for c in control):
        return f"control_heads is not {dims.get('draws')} lists of heads (dims draws)"
    if "n" not in attrs["settings"]:
        return "settings has no n"
    return None


KIND_CHECKS = {"patching": patching_problem, "ablation": ablation_problem}
