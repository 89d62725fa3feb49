"""The store's schema: one table of datasets and root attributes, read by the writer, reader and docs.

Every dataset has one row per (example, condition) along its first axis ("rows"); the other axes are
named dimensions fixed per store (``DIMS``) or literal sizes. ``markdown()`` renders the tables that
docs/store.md carries verbatim (a test keeps the two equal); after changing them, paste the output of
``python -c "from mdlm_interp.store import schema; print(schema.markdown(), end='')"`` there.
"""

from dataclasses import dataclass


SCHEMA_VERSION = 1

# examples is always present; the others only when recorded.
GROUPS = ("examples", "tokens", "attention", "gradients", "lens", "decode", "attention_rows", "blocks", "routing")

DIMS = {
    "k": "top-k size of examples/topk_ids and topk_probs",
    "relevant": "most relevant examples per prompt (rows with fewer are padded with -1)",
    "layers": "transformer blocks of the model",
    "heads": "attention (query) heads per block",
    "steps": "denoising steps of the longest decode (decode group; rows with fewer steps are padded with -1 or NaN)",
    "experts": "routed experts per mixture-of-experts layer (routing group)",
}

READOUT = "the answer readout position (answer_position + the family's prediction offset)"


@dataclass(frozen=True)
class Field:
    """One dataset: ``group/name``, an element dtype, a shape starting with "rows", a doc line.

    dtype is one of "bool", "int32", "int64", "float32", "str" (UTF-8, variable length),
    "vlen int32", "vlen float32" (one 1-D array of any length per row).
    Shape entries after "rows" are names in DIMS, "layers+1", or literal ints. A vlen row holds
    input_length values, times the DIMS named in ``per_token`` (e.g. ("layers", "heads")); with
    ``may_be_empty`` a row may hold none instead.
    """

    group: str
    name: str
    dtype: str
    shape: tuple
    doc: str
    per_token: tuple = ()
    may_be_empty: bool = False

    def vlen_length(self, input_length: int, dims: dict) -> int:
        """Return the values a full row of this vlen dataset holds for a row of ``input_length`` tokens."""
        import math

        return input_length * math.prod(dims[name] for name in self.per_token)

    @property
    def path(self) -> str:
        """Return "group/name", the dataset's path in the file and its key in a writer batch."""
        return f"{self.group}/{self.name}"

    @property
    def vlen(self) -> bool:
        """Return True for datasets holding one variable-length 1-D array per row."""
        return self.dtype.startswith("vlen ")

    @property
    def numpy_dtype(self) -> "numpy.dtype":
        """Return the numpy dtype of one element (of the per-row arrays for vlen; object for str)."""
        import numpy as np

        if self.dtype == "str":
            return np.dtype(object)
        return np.dtype(self.dtype.removeprefix("vlen "))

    @property
    def h5_dtype(self):
        """Return the dtype to create the HDF5 dataset with (h5py special dtypes for str and vlen)."""
        import h5py

        if self.dtype == "str":
            return h5py.string_dtype("utf-8")
        if self.vlen:
            return h5py.vlen_dtype(self.numpy_dtype)
        return self.numpy_dtype

    def row_shape(self, dims: dict) -> tuple:
        """Return the shape of one row (the shape after "rows") as ints, given the store's dims."""
        out = []
        for entry in self.shape[1:]:
            if isinstance(entry, int):
                out.append(entry)
            elif entry.endswith("+1"):
                out.append(dims[entry[:-2]] + 1)
            else:
                out.append(dims[entry])
        return tuple(out)

    def dim_names(self) -> set:
        """Return the names in DIMS that this dataset's shape uses."""
        return {e.removesuffix("+1") for e in self.shape[1:] if isinstance(e, str)} | set(self.per_token)


def _f(group, name, dtype, shape, doc, **vlen):
    return Field(group, name, dtype, ("rows",) + tuple(shape), doc, **vlen)


DATA = (
    _f("examples", "row", "int64", (), "row index in the run's plan of (example, condition) pairs"),
    _f("examples", "example", "int64", (), "example index: the same index is the same prompt in every condition"),
    _f("examples", "task", "str", (), 'task name, e.g. "adjective+largest"'),
    _f("examples", "masks", "int32", (), "tokens appended after the prompt, answer slot first (0: causal twins)"),
    _f("examples", "filler", "bool", (), "the appended tokens after the answer slot are the neutral filler"),
    _f("examples", "placement", "str", (), 'prompt layout: "random", "relevant-at:K" or "query-at:K"'),
    _f("examples", "input_length", "int32", (), "tokens in the model input"),
    _f("examples", "relevant_spans", "int32", ("relevant", 2), "[start, end) of each relevant example, prompt order"),
    _f("examples", "query_start", "int32", (), "first token of the query"),
    _f("examples", "query_end", "int32", (), "end (exclusive) of the query"),
    _f("examples", "answer_position", "int32", (), "index of the answer slot (causal twins: input_length)"),
    _f("examples", "masks_start", "int32", (), "first appended token after the answer slot"),
    _f("examples", "masks_end", "int32", (), "end (exclusive) of the appended tokens; == masks_start when masks <= 1"),
    _f("examples", "answer_id", "int32", (), "token id of the correct answer"),
    _f("examples", "predicted_id", "int32", (), "argmax of the predicted distribution for the answer slot"),
    _f("examples", "p_answer", "float32", (), "probability of answer_id in that distribution"),
    _f("examples", "entropy", "float32", (), "entropy (nats) of that distribution"),
    _f("examples", "correct", "bool", (), "predicted_id == answer_id"),
    _f("examples", "topk_ids", "int32", ("k",), "the k most probable token ids in it, most probable first"),
    _f("examples", "topk_probs", "float32", ("k",), "their probabilities"),
    _f("tokens", "input_ids", "vlen int32", (), "model input token ids (length input_length)"),
    _f(
        "attention",
        "mask_mass_from_answer",
        "float32",
        ("layers", "heads"),
        f"attention weight from {READOUT} summed over the appended tokens [masks_start, masks_end)",
    ),
    _f(
        "attention",
        "mask_mass_from_context",
        "float32",
        ("layers", "heads"),
        "the same sum from each context query position (outside the answer slot and appended tokens), "
        "averaged over those positions",
    ),
    _f(
        "attention",
        "relevant_mass_from_answer",
        "float32",
        ("layers", "heads"),
        f"attention weight from {READOUT} summed over the tokens of all relevant_spans",
    ),
    _f(
        "gradients",
        "norms",
        "vlen float32",
        (),
        "per input token, L2 norm of d(answer logit at the readout)/d(input embedding) (length input_length)",
    ),
    _f(
        "gradients",
        "mask_mean",
        "float32",
        (),
        "mean of norms / sum(norms) over the answer slot and the appended tokens (NaN if there are none)",
    ),
    _f(
        "gradients",
        "last50_mean",
        "float32",
        (),
        "the same mean over the 50 non-mask tokens nearest before the answer slot (fewer if the prompt is shorter)",
    ),
    _f("gradients", "nonmask_mean", "float32", (), "the same mean over all tokens but the slot and appended ones"),
    _f(
        "lens",
        "p_answer",
        "float32",
        ("layers+1",),
        f"logit lens at {READOUT}: p(answer) after the embeddings (index 0) and after each block; "
        "the last entry equals examples/p_answer",
    ),
    _f("lens", "rank", "int32", ("layers+1",), "tokens with a strictly higher logit than the answer (0 = top 1)"),
    _f("lens", "entropy", "float32", ("layers+1",), "entropy (nats) of the lens distribution"),
    _f("decode", "predicted_id", "int32", (), "token at the answer slot after iterative decoding of the answer slot "
       "and the tokens after it (settings.decode names the sampler)"),
    _f("decode", "correct", "bool", (), "decode/predicted_id == answer_id"),
    _f("decode", "steps", "int32", (), "denoising steps of this row's decode (one forward pass each)"),
    _f("decode", "unmask_step", "int32", (), "step (0-based) at which the answer slot was unmasked"),
    _f("decode", "confidence", "float32", (), "the sampler's score for the answer slot at that step (LLaDA and "
       "maskgit_plus: probability of the token; topk_margin: top-1 minus top-2 probability; entropy: negative entropy)"),
    _f("decode", "settle_step", "int32", (), "first step from which the prediction for the answer slot (argmax at "
       f"{READOUT}) equals the decoded token at every step until it is unmasked"),
    _f("decode", "masks_left", "int32", ("steps",), "mask tokens at the answer slot and after it in the input of each "
       "step (before its unmasking)"),
    _f("decode", "step_predicted_id", "int32", ("steps",), "argmax of the prediction for the answer slot at each step "
       "while it is still masked (-1 after)"),
    _f("decode", "step_p_answer", "float32", ("steps",), "p(answer_id) in that prediction (NaN after)"),
    _f("decode", "mask_mass_from_answer", "float32", ("steps", "layers", "heads"), f"at each step, attention weight "
       f"from {READOUT} summed over the positions in [masks_start, masks_end) that are still masks; the first step "
       "equals attention/mask_mass_from_answer when no filler is used"),
    _f("attention_rows", "from_readout", "vlen float32", (), f"record --keep-examples K only: for the first K "
       "examples of each condition (prompt 0 of every task in turn, then prompt 1, ...), the attention weights "
       f"from {READOUT} to every input token in every layer and head, flattened [input_length, layers, heads] "
       "(4 bytes x input_length x layers x heads per kept row); empty for the other rows",
       per_token=("layers", "heads"), may_be_empty=True),
    _f("blocks", "block_start", "int32", (), "first position of the answer slot's block under block attention "
       "(settings.block_length positions per block, counted from the first token)"),
    _f("blocks", "masks_in_block", "int32", (), "how many of the n masks (the answer slot and the masks after it) "
       "lie in the answer slot's block: the masks the answer reads under block attention"),
    _f("routing", "answer_weights", "float32", ("layers", "experts"), "the answer slot's routing weights over the "
       "experts (the chosen experts' weights, 0 for the others), normalised to sum 1; NaN for dense layers"),
    _f("routing", "mask_share", "float32", ("layers", "experts"), "each expert's share of the top-k choices of the "
       "masks after the answer slot (mean over those masks; NaN without masks or for dense layers)"),
    _f("routing", "context_share", "float32", ("layers", "experts"), "the same share over the context tokens"),
)


@dataclass(frozen=True)
class Attr:
    """One root attribute: name, stored type, doc line."""

    name: str
    type: str
    doc: str


ATTRS = (
    Attr("schema_version", "int", f"layout version of the store (this toolkit writes {SCHEMA_VERSION})"),
    Attr("toolkit_version", "str", "mdlm_interp.__version__ that created the store"),
    Attr("command_line", "str", "the command that created the store"),
    Attr("model_id", "str", "checkpoint directory or hub id"),
    Attr("family", "str", '"llada", "dream", "llama" or "qwen2"'),
    Attr("dtype", "str", 'model dtype, e.g. "bfloat16"'),
    Attr("weights_fingerprint", "str", "fingerprint of the loaded weights"),
    Attr("task_config", "JSON str", "task / prompt configuration"),
    Attr("seed", "int", "the run's seed"),
    Attr("settings", "JSON str", "everything that determines the rows; resume requires it unchanged"),
    Attr("dims", "JSON str", "the named dimensions: " + ", ".join(DIMS)),
    Attr("status", "str", '"running" until every planned row is written, then "complete"'),
    Attr("n_planned", "int", "rows the run will write"),
    Attr("n_rows_done", "int", "rows written completely; readers ignore anything beyond"),
    Attr("created", "str", "creation time, ISO 8601 UTC"),
    Attr("merged_from", "JSON str", "merged stores only: the shard files, relative to the store's folder"),
)

JSON_ATTRS = tuple(a.name for a in ATTRS if a.type == "JSON str")


def fields(groups=GROUPS) -> list:
    """Return the Fields of the given groups, in table order."""
    return [f for f in DATA if f.group in groups]


def required_dims(groups) -> set:
    """Return the names in DIMS that the datasets of the given groups need."""
    return set().union(*(f.dim_names() for f in fields(groups)))


def markdown() -> str:
    """Return the schema as Markdown tables (dims, then one table per group, then root attributes)."""
    lines = ["| dimension | meaning |", "| --- | --- |"]
    lines += [f"| `{name}` | {doc} |" for name, doc in DIMS.items()]
    for group in GROUPS:
        lines += ["", f"#### /{group}", "", "| dataset | dtype | shape | meaning |", "| --- | --- | --- | --- |"]
        for f in fields((group,)):
            shape = ", ".join(str(e) for e in f.shape)
            lines.append(f"| `{f.path}` | {f.dtype} | [{shape}] | {f.doc} |")
    lines += ["", "#### Root attributes", "", "| attribute | type | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{a.name}` | {a.type} | {a.doc} |" for a in ATTRS]
    return "\n".join(lines) + "\n"

