"""Every kind of file the toolkit writes, as a registry: how to recognise it, check it, describe it.

A ``FileKind`` recognises its files from their root attributes and groups (``matches``), checks a
file's layout once when it is opened (``check``: root attributes as a dict, or a one-line
``UsageError`` naming the file and what is wrong), and says what the file holds (``describe``: lines
of text for ``mdlm-interp summary``, or a JSON-ready dict). Record stores and decode traces are
registered here, every result kind registered with ``store.results.register_result_kind`` (the
experiments' own schemas) is added from that registry, and a later kind adds itself with ``register``.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py

from mdlm_interp.errors import UsageError
from mdlm_interp.store.layout import Dataset, Layout, check_layout, damaged, first_line
from mdlm_interp.store.schema import Attr


@dataclass(frozen=True)
class FileKind:
    """One kind of file: ``name``; ``matches(file) -> bool``; ``check(file, path) -> attrs``;
    ``describe(path) -> dict`` (``{"kind", "header": str, "table": list of dicts}``)."""

    name: str
    matches: Callable
    check: Callable
    describe: Callable


_KINDS: list[FileKind] = []
_FROM_RESULTS: dict = {}  # result kind name -> the (StoreKind, describe) its FileKind was built from


class UnknownKind(UsageError):
    """A file that names a ``store_kind`` no registered kind reads (a later toolkit's, or a foreign one)."""


def register(kind: FileKind) -> FileKind:
    """Add ``kind`` to the registry (the first that matches a file is its kind); return it."""
    _KINDS[:] = [k for k in _KINDS if k.name != kind.name] + [kind]
    return kind


def kinds() -> list[FileKind]:
    """Return the registered kinds (record, trace, the registered result kinds and any added later)."""
    _register_builtin()
    _register_result_kinds()
    return list(_KINDS)


def open_checked(path) -> tuple[FileKind, dict]:
    """Return (kind, root attributes) of the file at ``path`` after checking its layout against its kind's
    schema; ``UsageError`` (one line) for a missing file, one that is not HDF5, of no known kind, or damaged."""
    from mdlm_interp.store.reader import open_file

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no store at {path}")
    if not h5py.is_hdf5(path):
        raise UsageError(f"{path} is not an HDF5 file")
    try:
        file = open_file(path)
    except OSError as error:
        raise damaged(path, f"cannot open it ({first_line(error)})") from None
    try:
        kind = kind_of(file, path)
        return kind, kind.check(file, path)
    except UsageError:
        raise
    except Exception as error:  # h5py reading a damaged header: OSError, KeyError, RuntimeError, ...
        raise damaged(path, f"cannot read its layout ({first_line(error)})") from None
    finally:
        file.close()


def kind_of(file: h5py.File, path) -> FileKind:
    """Return the registered kind of an open file; ``UnknownKind`` for a ``store_kind`` none reads, UsageError
    for a file of no kind."""
    for kind in kinds():
        try:
            if kind.matches(file):
                return kind
        except Exception:  # a damaged header is judged by the kind that claims the file
            continue
    found = _text(file.attrs.get("store_kind"))
    if found is not None:
        raise UnknownKind(f"{path} is a {found} store, which this toolkit does not read")
    raise UsageError(f"{path} is not an mdlm-interp store (no schema_version attribute)")


def _register_builtin() -> None:
    if _KINDS:
        return
    from mdlm_interp.store import summary
    from mdlm_interp.store.integrity import check_store

    register(FileKind("record", lambda f: "store_kind" not in f.attrs and "n_rows_done" in f.attrs,
                      check_store, summary.describe_record))
    register(FileKind("trace", _is_trace, lambda file, path: check_layout(file, path, TRACE), summary.describe_trace))


def _register_result_kinds() -> None:
    """Add (or renew) a FileKind for every kind in ``store.results``' registry: each claims the files whose
    ``store_kind`` is its name, checks them against its schema and describes them with its describer."""
    from mdlm_interp.store.layout import result_layout
    from mdlm_interp.store.results import result_kinds

    for name, entry in result_kinds().items():
        if _FROM_RESULTS.get(name) == entry:
            continue
        kind, describe = _FROM_RESULTS[name] = entry
        layout = result_layout(kind)
        register(FileKind(name, lambda f, name=name: _text(f.attrs.get("store_kind")) == name,
                          lambda file, path, layout=layout: check_layout(file, path, layout), describe))


def _text(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else None if value is None else str(value)


def _is_trace(file: h5py.File) -> bool:
    kind = _text(file.attrs.get("store_kind"))
    return kind == "trace" or (kind is None and "prompt_length" in file.attrs and "ids" in file)


# A decode trace (``mdlm-interp generate --trace``): the canvas before and after every step.
TRACE = Layout(
    kind="trace",
    attrs=(
        Attr("command_line", "str", "the command that wrote the trace"),
        Attr("toolkit_version", "str", "mdlm_interp.__version__"),
        Attr("model_id", "str", "checkpoint directory or hub id"),
        Attr("family", "str", "model family"),
        Attr("weights_fingerprint", "str", "fingerprint of the loaded weights"),
        Attr("seed", "int", "the sampler's seed"),
        Attr("settings", "JSON str", "sampler, steps, gen_length and the sampler's options"),
        Attr("prompt_length", "int", "columns of the left-padded prompts"),
    ),
    data=(
        Dataset("block", "int32", ("steps",), "block decoded at each step"),
        Dataset("text", "str", ("batch",), "generated text per prompt"),
        Dataset("attention_mask", "int8", ("batch", "positions"), "1 for prompt tokens and the generated region"),
        Dataset("ids", "int32", ("steps+1", "batch", "positions"), "the canvas before the first step, then after each"),
        Dataset("proposed", "int32", ("steps", "batch", "positions"), "the token proposed at each position"),
        Dataset("confidence", "float32", ("steps", "batch", "positions"), "the sampler's confidence"),
        Dataset("unmasked", "bool", ("steps", "batch", "positions"), "positions unmasked at the step"),
    ),
    rows_attr=None,
    dims_attr=None,
    objects=("settings",),
    counts=("seed", "prompt_length"),
)
