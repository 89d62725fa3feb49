"""compare's models and pairs: which stores it reads, the models in order (the first is the reference),
the held-in / held-out split of categories, and the prompt key rows pair by."""

import json
from pathlib import Path

import numpy as np

from mdlm_interp.analyses import load
from mdlm_interp.analyses.data import find_stores
from mdlm_interp.analyses.data import prompt_keys as keys_of
from mdlm_interp.errors import UsageError
from mdlm_interp.store.results import result_kind
from mdlm_interp.tasks import CATEGORIES

GROUPS = ("all", "held-in", "held-out")
CONDITION = ["placement", "filler", "masks"]
RESULT_KINDS = ("patching", "ablation")  # the result stores compare reads
PROMPT_SETTINGS = ("n_relevant", "n_distractor", "placements", "wrong_token")  # must agree for a paired change


def load_models(paths, held_in=None):
    """Return the ``analyses.Recordings`` of the stores ``paths`` (record stores in ``rows`` with a ``group``
    column; patching and ablation stores in ``results``). ``group`` is "held-in" or "held-out" by the
    task's relevant category when categories are split (``held_in`` given, else the held-out categories
    an adapter's training config names: ``split_categories``), and "all" otherwise; the categories held
    in are ``recordings.held_in`` (None: not split). A result store of a kind compare does not read, or an
    activation store, is left out with a note in ``notes``. ``UsageError`` for a path that is not a store,
    or when the stores hold fewer than two models."""
    from mdlm_interp.representations.activation_reader import is_activation_store

    usable, skipped = [], []
    for path in find_stores(paths):
        if is_activation_store(path):
            skipped.append(f"{path} is an activation store, which compare does not read; it is left out.")
            continue
        kind = result_kind(path)
        if kind is not None and kind not in RESULT_KINDS:
            skipped.append(f"{path} is a {kind} store, which compare does not read; it is left out.")
        else:
            usable.append(path)
    recordings = load(usable)
    recordings.notes[:0] = skipped
    models = model_order(recordings)
    if len(models) < 2:
        raise UsageError(f"compare needs stores of at least two models, got {', '.join(models) or 'none'}")
    recordings.held_in = tuple(held_in) if held_in is not None else split_categories(recordings)
    if len(recordings.rows):
        categories = recordings.rows["task"].str.split("+").str[0]
        recordings.rows["group"] = ("all" if recordings.held_in is None else
                                    np.where(categories.isin(list(recordings.held_in)), "held-in", "held-out"))
    return recordings


def split_categories(recordings) -> tuple | None:
    """Return the categories held in by the fine-tuning of the stores' adapters: those not named held out
    (``held_out_categories`` in the config or provenance of an adapter's training_config.json, found at
    the adapter path its stores recorded). None when no adapter names any: then nothing is split."""
    held_out = set()
    for settings in store_settings(recordings):
        adapter = settings.get("adapter") if isinstance(settings, dict) else None
        if not isinstance(adapter, dict):
            continue
        config = Path(str(adapter.get("path", ""))) / "training_config.json"
        try:
            recorded = json.loads(config.read_text())
        except (OSError, ValueError):
            continue
        for part in ("config", "provenance"):
            named = recorded.get(part, {}).get("held_out_categories") if isinstance(recorded, dict) else None
            if isinstance(named, list):
                held_out |= {str(c) for c in named}
    if not held_out:
        return None
    return tuple(c for c in CATEGORIES if c not in held_out)


def store_settings(recordings) -> list:
    """Return the ``settings`` of every store of ``recordings``, record and result stores."""
    from mdlm_interp.store import open_store
    from mdlm_interp.store.results import open_results

    found = []
    for info in recordings.stores:
        with open_store(info.path) as store:
            found.append(store.attrs["settings"])
    for paths in recordings.results.values():
        for path in paths:
            with open_results(path) as store:
                found.append(store.attrs["settings"])
    return found


def groups(recordings) -> tuple:
    """Return the category groups of the comparison: ("all", "held-in", "held-out") when split, else ("all",)."""
    return GROUPS if getattr(recordings, "held_in", None) is not None else GROUPS[:1]


def model_order(recordings) -> list[str]:
    """Return every model of ``recordings``: those of the record stores in the order given, then those only
    result stores hold. The first is the reference."""
    models = recordings.models()
    for paths in recordings.results.values():
        models += [recordings.result_models[p] for p in paths if recordings.result_models[p] not in models]
    return list(dict.fromkeys(models))


def grouped(rows):
    """Return ``rows`` with ``group`` "all", followed by the rows as they are when they are split
    (held-in and held-out)."""
    import pandas as pd

    if (rows["group"] == "all").all():
        return rows
    return pd.concat([rows.assign(group="all"), rows], ignore_index=True)


def prompt_keys(store, table: str) -> np.ndarray:
    """Return the pairing key "seed:task:prompt" of every row of an open result store (``table``: "pairs" or
    "examples"); the same key is the same prompt in another model's store of the same settings."""
    n = int(store.attrs["settings"]["n"])
    return np.array(keys_of(store.attrs["seed"], store.array(f"{table}/task"), store.array(f"{table}/example"), n))


def mismatch(reference: dict, other: dict) -> str | None:
    """Return which prompt settings of two result stores differ (None when they agree), so that their
    rows cannot be paired."""
    differ = [name for name in PROMPT_SETTINGS if reference.get(name) != other.get(name)]
    return ", ".join(differ) if differ else None
