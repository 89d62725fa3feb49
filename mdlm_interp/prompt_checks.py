"""What a record store's task configuration says about its prompts, judged against the task suite.

The store layer and the analyses import no tasks, so they cannot tell a task name or a placement from
a damaged one; the commands that read stores (``analyze``, ``compare``) run ``check_prompts`` on every
file first: one ``UsageError`` line naming the file (exit 2) for a task_config without its counts, with
negative counts, unknown tasks, negative mask counts or a placement that does not parse.
"""

from pathlib import Path

from mdlm_interp.analyses.checks import check_file, is_count
from mdlm_interp.analyses.data import find_stores
from mdlm_interp.errors import UsageError
from mdlm_interp.store.kinds import UnknownKind


def check_prompts(paths) -> None:
    """Check every file at ``paths`` (folders searched as ``analyze`` searches them) but activation stores:
    its layout (``analyses.checks.check_file``) and, for a record store, its task configuration;
    UsageError otherwise."""
    from mdlm_interp.representations.activation_reader import is_activation_store

    for path in find_stores(paths):
        if is_activation_store(path):
            continue  # no task_config: its plan is in its settings, and `analyze` reads it only with --sae
        try:
            kind, attrs = check_file(path)
        except UnknownKind:
            continue  # a kind this toolkit does not read: the command leaves it out or refuses it
        if kind.name == "record" and (problem := task_config_problem(attrs["task_config"])):
            raise UsageError(f"{Path(path)} is damaged: {problem}")


def task_config_problem(config: dict) -> str | None:
    """Return what is wrong with a store's task_config (None when nothing is): n_relevant, n_distractor
    (non-negative integers), n (at least 1), tasks (known task names), and where present masks
    (non-negative integers) and placements (each a placement of those counts)."""
    from mdlm_interp.tasks import TASK_NAMES
    from mdlm_interp.tasks.prompt import parse_placement

    for name, least in (("n_relevant", 0), ("n_distractor", 0), ("n", 1)):
        if name not in config:
            return f"task_config has no {name}"
        if not is_count(config[name], least):
            return f"task_config {name} is {config[name]!r}, not an integer of at least {least}"
    tasks = config.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        return "task_config has no list of tasks"
    unknown = [t for t in tasks if t not in TASK_NAMES]
    if unknown:
        return f"task_config names unknown tasks {unknown[:3]}"
    masks = config.get("masks", [])
    if not isinstance(masks, list) or not all(is_count(m) for m in masks):
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
