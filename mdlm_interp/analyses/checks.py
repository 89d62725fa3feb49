"""Is a file fit to analyse? Its layout against its kind's schema (``store.kinds``), then what its attributes
say about the prompts (task names, counts, mask counts, placements) against the task suite.

``check_file`` runs once per file when ``analyze``, ``compare`` or ``summary`` opens it; anything wrong is
one ``UsageError`` line naming the file (exit 2) before any output is written. The store layer cannot
judge task names or placements (it imports no tasks); this module can.
"""

from pathlib import Path

from mdlm_interp.errors import UsageError
from mdlm_interp.store.kinds import open_checked

PROMPT_KINDS = ("record", "patching", "ablation")  # kinds whose task_config describes the prompts


def check_file(path, prompts: bool = True):
    """Return the ``store.kinds.FileKind`` of the file at ``path`` after checking its layout and, for stores
    of prompts, their settings, a record store's task configuration (the rows' prompts) and a result
    store's own attributes; UsageError (one line) otherwise. ``prompts`` False skips the task
    configuration (``summary`` describes a store without reading its prompts)."""
    kind, attrs = open_checked(path)
    if kind.name in PROMPT_KINDS:
        problem = ((task_config_problem(attrs["task_config"]) if kind.name == "record" and prompts else None)
                   or settings_problem(attrs["settings"]))
        problem = problem or (KIND_CHECKS[kind.name](attrs) if kind.name in KIND_CHECKS else None)
        if problem:
            raise UsageError(f"{Path(path)} is damaged: {problem}")
    return kind


def _count(value, least: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def task_config_problem(config: dict) -> str | None:
    """Return what is wrong with a store's task_config (None when nothing is): n_relevant, n_distractor
    (non-negative integers), n (at least 1), tasks (known task names), and where present masks
    (non-negative integers) and placements (each a placement of those counts)."""
    from mdlm_interp.tasks import TASK_NAMES
    from mdlm_interp.tasks.prompt import parse_placement

    for name, least in (("n_relevant", 0), ("n_distractor", 0), ("n", 1)):
        if name not in config:
            return f"task_config has no {name}"
        if not _count(config[name], least):
            return f"task_config {name} is {config[name]!r}, not an integer of at least {least}"
    tasks = config.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        return "task_config has no list of tasks"
    unknown = [t for t in tasks if t not in TASK_NAMES]
    if unknown:
        return f"task_config names unknown tasks {unknown[:3]}"
    masks = config.get("masks", [])
    if not isinstance(masks, list) or not all(_count(m) for m in masks):
        return f"task_config masks {masks!r} are not non-negative integers"
    placements = config.get("placements", [])
    if not isinstance(placements, list):
        return f"task_config placements {placements!r} are not a list"
    for placement in placements:
        try:
            parse_placement(str(placement), config["n_relevant"], config["n_distractor"])
        except (UsageError, ValueError, TypeError) as error:
            return f"task_config placement {placement!r} cannot be read ({error})"
    return None


def settings_problem(settings: dict) -> str | None:
    """Return what is wrong with a store's settings that analyses read (None when nothing is): the prompts
    per task ``n`` (at least 1, where given) and the adapter (an object with path and fingerprint)."""
    if "n" in settings and not _count(settings["n"], 1):
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
    correlation = attrs["attribution_correlation"]
    if correlation is not None and not (isinstance(correlation, dict)
                                        and all(isinstance(v, dict) for v in correlation.values())):
        return "attribution_correlation is not an object of objects"
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
