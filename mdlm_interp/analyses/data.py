"""Stores -> ``Recordings``: one frame of rows from every store, with the columns analyses group by.

A row is one (example, condition) of one store. Next to the store's /examples columns it carries
the store index (``store``), the model label (``model``), the context setting (``n_relevant``,
``n_distractor``) and the pairing key ``pair`` ("seed:task:prompt", where prompt is the index of the
prompt within its task): the same key is the same prompt under every condition of a model and
setting, whichever store recorded it, so paired comparisons join on it (``PAIR``).
"""

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mdlm_interp.plan import prompt_key
from mdlm_interp.store import open_store
from mdlm_interp.store.identity import ModelIdentity, read_identity
from mdlm_interp.store.results import open_results

SETTING = ["model", "n_relevant", "n_distractor"]
CONDITION = ["placement", "filler", "masks"]
PAIR = "pair"
GRADIENT_COLUMNS = {"grad_mask": "gradients/mask_mean", "grad_last50": "gradients/last50_mean",
                    "grad_nonmask": "gradients/nonmask_mean"}


class Skip(Exception):
    """An analysis cannot run on these recordings; the message (one sentence) says what is missing."""


@dataclass(frozen=True)
class StoreInfo:
    """What the report says about one store: where it is, what made it, what it holds."""

    path: Path
    model: str
    model_id: str
    family: str
    fingerprint: str  # of the base weights
    identity: ModelIdentity
    n_relevant: int
    n_distractor: int
    seed: int
    groups: tuple
    dims: dict
    n_rows: int
    n_planned: int
    status: str
    command_line: str
    created: str
    toolkit_version: str


class Recordings:
    """Rows of several stores. ``rows``: pandas DataFrame, one row per (example, condition) of each
    store, duplicates across stores dropped. ``stores``: list of ``StoreInfo`` (``rows.store`` indexes
    it). ``notes``: sentences for the report (e.g. dropped duplicates). ``results``: the result stores
    given beside them (``patch``, ``ablate``; ``activations``: activation stores), kind -> list of paths.
    ``result_models``: path -> model label of each result store (labels of record and result stores are
    made together, ``model_labels``). ``options``: what the command line asks of analyses beyond the
    stores (e.g. "sae": the SAE folder the feature analysis reads activation stores with).
    """

    def __init__(self, stores: list, rows, notes: list | None = None, results: dict | None = None,
                 result_models: dict | None = None, options: dict | None = None):
        self.stores = stores
        self.rows = rows
        self.notes = list(notes or [])
        self.results = dict(results or {})
        self.result_models = dict(result_models or {})
        self.options = dict(options or {})
        self._arrays = {}

    def with_groups(self, groups) -> tuple["Recordings", list[StoreInfo]]:
        """Return (recordings restricted to stores that recorded every group in ``groups``, stores left out)."""
        keep = [i for i, s in enumerate(self.stores) if set(groups) <= set(s.groups)]
        left_out = [s for i, s in enumerate(self.stores) if i not in keep]
        subset = Recordings(self.stores, self.rows[self.rows["store"].isin(keep)], self.notes, self.results,
                            self.result_models, self.options)
        subset._arrays = self._arrays
        return subset, left_out

    def gather(self, rows, name: str) -> np.ndarray:
        """Return dataset ``name`` (e.g. "attention/mask_mass_from_answer") for the given rows (a slice of
        ``self.rows``, possibly from several stores of one model) as one array [len(rows), ...], in the
        order of ``rows``."""
        if len(rows) == 0:
            raise ValueError("no rows to gather")
        stores = rows["store"].to_numpy()
        within = rows["row_in_store"].to_numpy()
        out = None
        for store in dict.fromkeys(stores):
            where = np.flatnonzero(stores == store)
            values = self.store_array(int(store), name)[within[where]]
            if out is None:
                out = np.empty((len(rows),) + values.shape[1:], dtype=values.dtype)
            out[where] = values
        return out

    def store_array(self, store: int, name: str) -> np.ndarray:
        """Return dataset ``name`` of store number ``store``, all its rows (read once, then cached)."""
        key = (store, name)
        if key not in self._arrays:
            with open_store(self.stores[store].path) as opened:
                self._arrays[key] = opened.array(name)
        return self._arrays[key]

    def models(self) -> list[str]:
        """Return the model labels in the order their stores were given."""
        return list(dict.fromkeys(s.model for s in self.stores))


def prompt_keys(seed: int, tasks, examples, n: int) -> list[str]:
    """Return the pairing key "seed:task:prompt" (``plan.prompt_key``) of every (task, example index): the
    same key is the same prompt in every store of that seed."""
    return [prompt_key(seed, task, example, n) for task, example in zip(tasks, examples)]


def find_stores(paths) -> list[Path]:
    """Expand folders into the .h5 files below them (sorted; shard files of merged stores left out)."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*.h5") if ".shard" not in p.name)
        else:
            found.append(path)
    return found


def load(paths) -> Recordings:
    """Open every store (folders are searched for .h5 files) and return their ``Recordings``; result stores
    (patching, ablation) go to ``Recordings.results``.

    Every file is checked first (``checks.check_file``: its layout against its kind's schema, its
    settings); ``UsageError`` (one line) for a path that is not a readable, whole store, before
    reading any rows. A file of a kind without rows (a decode trace) is left out with a note (its path
    goes to ``results["trace"]``, for report.html's decoding scrubber); activation stores go to
    ``results["activations"]`` (the feature analysis reads them).
    """
    import pandas as pd

    from mdlm_interp.analyses.checks import check_file
    from mdlm_interp.representations.activation_reader import is_activation_store

    results, identities, skipped = {}, {}, []
    record_paths = []
    for path in find_stores(paths):
        if is_activation_store(path):
            results.setdefault("activations", []).append(path)
            continue
        kind = check_file(path)[0].name  # every file's layout and attributes, before any row is read
        if kind == "record":
            record_paths.append(path)
        elif kind in ("patching", "expert_patching", "ablation", "steps", "step_patching"):
            with open_results(path, kind) as store:
                identities[path] = read_identity(store.attrs)
            results.setdefault(kind, []).append(path)
        else:
            skipped.append(f"{path} is a {kind} file, which holds no rows to analyse; it is left out"
                           + (" (report.html shows its steps)." if kind == "trace" else "."))
            if kind == "trace":
                results.setdefault("trace", []).append(path)
    stores = [_info(path) for path in record_paths]
    labels = model_labels([s.identity for s in stores] + list(identities.values()))
    stores = [replace(s, model=label) for s, label in zip(stores, labels)]
    result_models = dict(zip(identities, labels[len(stores):]))
    frames = []
    for index, info in enumerate(stores):
        with open_store(info.path) as store:
            frame = store.examples.copy()
            n = int(store.attrs["settings"].get("n", 0)) or max(1, int(frame["example"].max()) + 1)
            for column, name in GRADIENT_COLUMNS.items():
                frame[column] = store.array(name).astype(float) if "gradients" in store.groups else np.nan
        frame.insert(0, "store", index)
        frame.insert(1, "model", info.model)
        frame.insert(2, "n_relevant", info.n_relevant)
        frame.insert(3, "n_distractor", info.n_distractor)
        frame["seed"] = info.seed
        frame["prompt"] = frame["example"] % n
        frame["pair"] = prompt_keys(info.seed, frame["task"], frame["example"], n)
        frame["row_in_store"] = np.arange(len(frame))
        frame["causal"] = frame["masks"] == 0
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    notes = skipped
    if len(rows):
        key = SETTING + CONDITION + [PAIR]
        duplicated = rows.duplicated(subset=key, keep="first")
        if duplicated.any():
            notes.append(f"{int(duplicated.sum())} rows recorded twice (same model, setting, condition and prompt "
                         "in two stores) were counted once.")
            rows = rows[~duplicated].reset_index(drop=True)
    return Recordings(stores, rows, notes, results, result_models)


def _info(path: Path) -> StoreInfo:
    with open_store(path) as store:
        attrs = store.attrs
        config = attrs["task_config"]
        identity = read_identity(attrs)
        return StoreInfo(
            path=path, model=identity.label, model_id=attrs["model_id"], family=attrs["family"],
            fingerprint=identity.weights_fingerprint, identity=identity, n_relevant=int(config["n_relevant"]),
            n_distractor=int(config["n_distractor"]), seed=int(attrs["seed"]), groups=store.groups,
            dims=dict(store.dims), n_rows=store.n_rows, n_planned=int(attrs["n_planned"]), status=attrs["status"],
            command_line=attrs["command_line"], created=attrs["created"], toolkit_version=attrs["toolkit_version"])


def model_labels(identities: list) -> list[str]:
    """Return one label per ``ModelIdentity`` (``ModelIdentity.label``); where one label would name models of
    different identity (``key``: e.g. two adapters in folders of the same name), each gets "@" and the
    first 8 hex digits of its adapter's fingerprint (of the weights' without an adapter, or where the
    adapters agree)."""
    keys = {}
    for identity in identities:
        keys.setdefault(identity.label, set()).add(identity.key)

    def short(fingerprint: str) -> str:
        return fingerprint.split(":")[-1][:8]

    labels = []
    for identity in identities:
        if len(keys[identity.label]) == 1:
            labels.append(identity.label)
            continue
        adapters = {adapter for _, adapter in keys[identity.label]}
        part = identity.adapter_fingerprint if identity.adapter and len(adapters) > 1 else identity.weights_fingerprint
        labels.append(f"{identity.label}@{short(part)}")
    return labels
