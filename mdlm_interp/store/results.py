"""Result stores of the circuit experiments (patching, ablation): schemas as data, writer, reader.

A result store is one HDF5 file whose root attribute ``store_kind`` names its kind. Like the record
store (``schema``), every dataset has one row per experiment unit along its first axis and the
other axes are named dimensions (``dims``) or literal sizes; ``StoreKind.markdown()`` renders the
tables that docs/store.md carries verbatim (a test keeps them equal). After changing a kind, paste
``python -c "from mdlm_interp.store import results; print(results.PATCHING.markdown(), end='')"``
(and the same for ``ABLATION``) into docs/store.md.

Result stores are written whole, once the experiment is done: to a temporary file in the output's
folder, renamed over the output at the end, so an interrupted run leaves nothing half-written.
"""

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import h5py
import numpy as np

from mdlm_interp.errors import UsageError
from mdlm_interp.outputs import staged_path
from mdlm_interp.store.identity import write_identity
from mdlm_interp.store.schema import Attr, Field
from mdlm_interp.store.writer import Provenance, as_rows, check_writable
from mdlm_interp.version import __version__

RESULTS_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class StoreKind:
    """One kind of result store: its groups, named dimensions, datasets and root attributes."""

    name: str
    rows: str  # what one row is
    groups: tuple
    dims: dict  # name -> meaning
    data: tuple  # Fields
    attrs: tuple  # Attrs beyond COMMON_ATTRS

    @property
    def all_attrs(self) -> tuple:
        """Return the common root attributes followed by this kind's own."""
        return COMMON_ATTRS + self.attrs

    def field(self, path: str) -> Field:
        """Return the Field at "group/name"; KeyError naming the known ones otherwise."""
        for f in self.data:
            if f.path == path:
                return f
        raise KeyError(f"{path!r} is not a dataset of a {self.name} store; known: {[f.path for f in self.data]}")

    @property
    def json_attrs(self) -> tuple:
        """Return the names of the root attributes stored as JSON strings."""
        return tuple(a.name for a in self.all_attrs if a.type == "JSON str")

    def markdown(self) -> str:
        """Return the kind as Markdown tables: dims, one table per group, then root attributes."""
        lines = [f"One row per {self.rows}.", "", "| dimension | meaning |", "| --- | --- |"]
        lines += [f"| `{name}` | {doc} |" for name, doc in self.dims.items()]
        for group in self.groups:
            lines += ["", f"#### {self.name}: /{group}", "", "| dataset | dtype | shape | meaning |",
                      "| --- | --- | --- | --- |"]
            for f in self.data:
                if f.group == group:
                    lines.append(f"| `{f.path}` | {f.dtype} | [{', '.join(str(e) for e in f.shape)}] | {f.doc} |")
        lines += ["", f"#### {self.name}: root attributes", "", "| attribute | type | meaning |",
                  "| --- | --- | --- |"]
        lines += [f"| `{a.name}` | {a.type} | {a.doc} |" for a in self.all_attrs]
        return "\n".join(lines) + "\n"


def _f(group, name, dtype, shape, doc):
    return Field(group, name, dtype, ("rows",) + tuple(shape), doc)


COMMON_ATTRS = (
    Attr("store_kind", "str", 'what the store holds: "patching" or "ablation"'),
    Attr("schema_version", "int", f"layout version of this kind (this toolkit writes {RESULTS_SCHEMA_VERSION})"),
    Attr("toolkit_version", "str", "mdlm_interp.__version__ that created the store"),
    Attr("command_line", "str", "the command that created the store"),
    Attr("model_id", "str", "checkpoint directory or hub id"),
    Attr("family", "str", '"llada", "dream", "llama" or "qwen2"'),
    Attr("dtype", "str", "model dtype"),
    Attr("weights_fingerprint", "str", "fingerprint of the loaded weights"),
    Attr("task_config", "JSON str", "task / prompt configuration"),
    Attr("seed", "int", "the run's seed (prompts; random heads)"),
    Attr("settings", "JSON str", "everything that determines the rows"),
    Attr("dims", "JSON str", "the named dimensions and their sizes"),
    Attr("n_rows", "int", "rows in every dataset"),
    Attr("created", "str", "creation time, ISO 8601 UTC"),
)

SITES = ("resid_pre", "attn_out", "mlp_out", "z")
SITE_SHAPES = {
    "resid_pre": ("directions", "layers+1", "groups"),
    "attn_out": ("directions", "layers", "groups"),
    "mlp_out": ("directions", "layers", "groups"),
    "z": ("directions", "layers", "heads", "head_groups"),
}
SITE_DOCS = {
    "resid_pre": "the residual stream entering block l (hook_resid_pre; index layers: the final residual, "
                 "before ln_final) patched over a position group",
    "attn_out": "the attention output of block l (hook_attn_out) patched over a position group",
    "mlp_out": "the MLP output of block l (hook_mlp_out) patched over a position group",
    "z": "one head's output before the output projection (attn.hook_z) patched at the answer slot, at "
         "every position with a counterpart, or at the readout position (Dream)",
}

_PAIR_FIELDS = (
    _f("pairs", "example", "int64", (), "example index (task index * n + i): the same prompt in both runs"),
    _f("pairs", "task", "str", (), "task name"),
    _f("pairs", "answer_id", "int32", (), "token id of the correct answer"),
    _f("pairs", "wrong_id", "int32", (), "the wrong token of the logit difference (default: the corrupt run's most "
                                         "probable token other than the answer)"),
    _f("pairs", "answer_position", "int32", (), "index of the answer slot (the same in both runs)"),
    _f("pairs", "clean_length", "int32", (), "tokens in the clean run's input"),
    _f("pairs", "corrupt_length", "int32", (), "tokens in the corrupt run's input"),
)
_RUN_FIELDS = tuple(
    _f("pairs", f"{run}_{name}", dtype, (), f"{doc} in the {run} run")
    for run in ("clean", "corrupt")
    for name, dtype, doc in (
        ("logit_diff", "float32", "logit(answer) - logit(wrong) at the readout position"),
        ("p_answer", "float32", "p(answer)"),
        ("predicted_id", "int32", "argmax prediction for the answer slot"),
        ("correct", "bool", "predicted_id == answer_id"),
    )
)

PATCHING = StoreKind(
    name="patching",
    rows="prompt pair (the same prompt as a clean and a corrupt run, e.g. 1 against 50 masks)",
    groups=("pairs", "patching", "attribution"),
    dims={
        "directions": "2: clean activations patched into the corrupt run, then corrupt into clean (attribute "
                      "directions)",
        "layers": "transformer blocks",
        "heads": "attention (query) heads per block",
        "groups": "position groups of the residual sites (attribute position_groups)",
        "head_groups": "the answer slot, every position with a counterpart, and where the prediction is read "
                       "before the slot (Dream) the readout position (attribute head_groups)",
    },
    data=_PAIR_FIELDS + _RUN_FIELDS + tuple(
        _f("patching", f"{site}_{metric}", "float32", SITE_SHAPES[site],
           f"{SITE_DOCS[site]}: {doc} of the patched run" if metric == "logit_diff" else f"{doc} of the patched run")
        for site in SITES
        for metric, doc in (("logit_diff", "logit(answer) - logit(wrong) at the readout"), ("p_answer", "p(answer)"))
    ) + tuple(
        _f("attribution", f"{site}_logit_diff", "float32", SITE_SHAPES[site],
           "attribution patching's estimate of patching/" + f"{site}_logit_diff: the receiving run's logit "
           "difference plus the sum over the group of (donor - receiver activation) . gradient")
        for site in SITES
    ),
    attrs=(
        Attr("directions", "JSON str", '["clean_into_corrupt", "corrupt_into_clean"]'),
        Attr("position_groups", "JSON str", 'names along groups: "all", "relevant", "distractor", "query", '
                                            '"answer", "appended" (only when both runs have tokens after the '
                                            'slot), "last:1" .. "last:k", "readout" (only where the prediction is '
                                            'read before the slot, Dream: the readout position)'),
        Attr("head_groups", "JSON str", '["answer", "all"], then "readout" where the prediction is read before '
                                        'the slot (Dream)'),
    ),
)

_ABLATION_RESULTS = (
    ("predicted_id", "int32", "argmax prediction for the answer slot"),
    ("p_answer", "float32", "p(answer)"),
    ("correct", "bool", "predicted_id == answer_id"),
)

ABLATION = StoreKind(
    name="ablation",
    rows="(example, mask count)",
    groups=("examples", "ablated", "control"),
    dims={
        "modes": 'ablation modes (attribute modes): "attention" (no attention to the masks after the answer slot, '
                 'renormalised; from every query, or from the readout position only where settings.positions is '
                 '"readout"), "zero", "mean" (the head output replaced)',
        "draws": "random head sets of the control (0 without a control)",
    },
    data=(
        _f("examples", "example", "int64", (),
           "example index (task index * n + i): the same prompt at every mask count"),
        _f("examples", "task", "str", (), "task name"),
        _f("examples", "masks", "int32", (), "n masks at the answer slot (the slot and n - 1 after it)"),
        _f("examples", "answer_id", "int32", (), "token id of the correct answer"),
        _f("examples", "input_length", "int32", (), "tokens in the model input"),
    ) + tuple(_f("examples", name, dtype, (), f"{doc}, without ablation") for name, dtype, doc in _ABLATION_RESULTS)
    + tuple(_f("ablated", name, dtype, ("modes",), f"{doc}, with the chosen heads ablated")
            for name, dtype, doc in _ABLATION_RESULTS)
    + tuple(_f("control", name, dtype, ("draws", "modes"), f"{doc}, with the random heads of each draw ablated")
            for name, dtype, doc in _ABLATION_RESULTS),
    attrs=(
        Attr("heads", "JSON str", 'the ablated heads as "layer.head" strings'),
        Attr("head_selection", "str", 'how they were chosen: "top:K" or the explicit list'),
        Attr("ranking", "JSON str", "[layers][heads] mean attention mass from the readout position on the masks "
                                    "after the answer slot that ranked the heads for top:K (null for an explicit "
                                    "list)"),
        Attr("modes", "JSON str", "names along modes"),
        Attr("control_heads", "JSON str", "per draw, the random heads (as many as chosen, none of them)"),
    ),
)

KINDS = {kind.name: kind for kind in (PATCHING, ABLATION)}


def write_results(path, kind: StoreKind, columns: dict, *, dims: dict, provenance: Provenance, settings: dict,
                  attrs: dict, overwrite: bool = False) -> Path:
    """Write a complete result store of ``kind`` to ``path``; return the path.

    ``columns`` maps every dataset path of the kind to its rows (as for ``StoreWriter.append``: arrays
    [rows, *shape]); ``dims`` gives the sizes of the kind's dimensions; ``attrs`` the kind's own root
    attributes (JSON ones as Python values). The file is written under a temporary name and renamed
    over ``path`` when complete. Raises ValueError for malformed columns, UsageError for an unusable path.
    """
    path = check_writable(path, overwrite=overwrite)
    expected = {f.path for f in kind.data}
    if set(columns) != expected:
        raise ValueError(f"columns: missing {sorted(expected - set(columns))}, "
                         f"unexpected {sorted(set(columns) - expected)}")
    if set(dims) != set(kind.dims):
        raise ValueError(f"dims must be exactly {sorted(kind.dims)}, got {sorted(dims)}")
    own = {a.name for a in kind.attrs}
    if set(attrs) != own:
        raise ValueError(f"attrs must be exactly {sorted(own)}, got {sorted(attrs)}")
    arrays = {f.path: as_rows(f, columns[f.path], f.row_shape(dims)) for f in kind.data}
    n_rows = {len(a) for a in arrays.values()}
    if len(n_rows) != 1:
        raise ValueError(f"columns have different row counts: { {p: len(a) for p, a in arrays.items()} }")
    values = {
        "store_kind": kind.name, "schema_version": RESULTS_SCHEMA_VERSION, "toolkit_version": __version__,
        "command_line": provenance.command_line, "model_id": provenance.model_id, "family": provenance.family,
        "dtype": provenance.dtype, "weights_fingerprint": provenance.weights_fingerprint,
        "task_config": provenance.task_config, "seed": int(provenance.seed), "settings": settings,
        "dims": {name: int(size) for name, size in dims.items()}, "n_rows": n_rows.pop(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **attrs,
    }
    with staged_path(path) as temporary, h5py.File(temporary, "w") as file:
        for attr in kind.all_attrs:
            value = values[attr.name]
            if attr.type == "JSON str":
                value = json.dumps(value, sort_keys=True)
            file.attrs[attr.name] = np.int64(value) if attr.type == "int" else value
        write_identity(file.attrs, provenance.identity)
        for field in kind.data:
            array = arrays[field.path]
            if array.dtype == object:
                typed = np.empty(len(array), dtype=field.h5_dtype)
                typed[:] = array
                array = typed
            file.create_dataset(field.path, data=array, dtype=field.h5_dtype,
                                compression="gzip" if array.size else None)
    return path


def result_kind(path) -> str | None:
    """Return the ``store_kind`` of the result store at ``path``, or None for anything else (a record store,
    a file that is not HDF5, a missing path), which ``open_store`` then judges."""
    path = Path(path)
    if not path.is_file() or not h5py.is_hdf5(path):
        return None
    try:
        with h5py.File(path, "r") as file:
            kind = file.attrs.get("store_kind")
    except OSError:
        return None
    return None if kind is None else str(kind)


def open_results(path, kind: str | None = None) -> "ResultStore":
    """Return the result store at ``path`` (of kind ``kind`` when given), open for reading.

    Raises UsageError (one line) for a missing file, a file that is not HDF5, not a result store,
    of another kind or schema version, or missing a dataset of its kind.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no store at {path}")
    if not h5py.is_hdf5(path):
        raise UsageError(f"{path} is not an HDF5 file")
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise UsageError(f"cannot open {path}: {error}") from None
    try:
        found = file.attrs.get("store_kind")
        if found is None:
            what = "a record store" if "n_rows_done" in file.attrs else "not an mdlm-interp result store"
            raise UsageError(f"{path} is {what}; expected a {kind or 'patching or ablation'} store")
        found = str(found)
        if found not in KINDS or (kind is not None and found != kind):
            raise UsageError(f"{path} is a {found} store; expected a {kind} store")
        if int(file.attrs["schema_version"]) != RESULTS_SCHEMA_VERSION:
            raise UsageError(f"{path} has {found} schema version {file.attrs['schema_version']}; this toolkit reads "
                             f"{RESULTS_SCHEMA_VERSION}")
        for field in KINDS[found].data:
            if field.path not in file:
                raise UsageError(f"{path} is damaged: {field.path} is missing")
    except BaseException:
        file.close()
        raise
    return ResultStore(file, path, KINDS[found])


class ResultStore:
    """An open result store; use as a context manager or call ``close()``.

    kind: its ``StoreKind``; attrs: root attributes (JSON ones parsed); dims: named dimension sizes;
    n_rows: rows per dataset.
    """

    def __init__(self, file: h5py.File, path: Path, kind: StoreKind):
        self.file = file
        self.path = path
        self.kind = kind
        self.attrs = {name: json.loads(value) if name in kind.json_attrs else _plain(value)
                      for name, value in file.attrs.items()}
        self.dims = self.attrs["dims"]
        self.n_rows = int(self.attrs["n_rows"])

    def array(self, name: str) -> np.ndarray:
        """Return dataset "group/name" as a numpy array [rows, ...] (str datasets: an object array of str)."""
        field = self.kind.field(name)
        dataset = self.file[name]
        return dataset.asstr()[:] if field.dtype == "str" else dataset[:]

    def frame(self, group: str):
        """Return a pandas DataFrame with one column per 1-D dataset of ``group``."""
        import pandas as pd

        scalars = [f for f in self.kind.data if f.group == group and len(f.shape) == 1]
        return pd.DataFrame({f.name: self.array(f.path) for f in scalars})

    @cached_property
    def examples(self):
        """Return the per-row DataFrame: /pairs of a patching store, /examples of an ablation store."""
        return self.frame(self.kind.groups[0])

    def close(self) -> None:
        """Close the file."""
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value
