"""Per-condition summary of a store: accuracy, p(answer), entropy, attention to masks, gradient shares,
accuracy after iterative decoding."""

import math
import re

CONDITION = ("masks", "filler", "placement")

# summary key -> store dataset (attention arrays are first averaged over layers and heads per row)
OPTIONAL_METRICS = {
    "mask_attention": "attention/mask_mass_from_answer",
    "grad_mask": "gradients/mask_mean",
    "grad_last50": "gradients/last50_mean",
    "grad_nonmask": "gradients/nonmask_mean",
    "decoded_accuracy": "decode/correct",
    "masks_in_block": "blocks/masks_in_block",
}

COLUMNS = {  # key -> table heading, in table order
    "placement": "placement",
    "filler": "filler",
    "masks": "masks",
    "n": "n",
    "accuracy": "accuracy",
    "p_answer": "p(answer)",
    "entropy": "entropy",
    "mask_attention": "mask attn",
    "grad_mask": "grad mask",
    "grad_last50": "grad last50",
    "grad_nonmask": "grad non-mask",
    "decoded_accuracy": "decoded acc",
    "masks_in_block": "masks in block",
}


def summarize(store) -> list:
    """Return one dict per condition, sorted by (placement with numeric slots, filler, masks).

    Keys: masks (int), filler (bool), placement (str), n (rows), accuracy (mean of correct),
    p_answer and entropy (means), and for recorded groups mask_attention (mean over rows, layers and
    heads of attention/mask_mass_from_answer) and grad_mask, grad_last50, grad_nonmask (means of the
    gradients/*_mean datasets), decoded_accuracy (mean of decode/correct: accuracy after iterative
    decoding) and masks_in_block (mean of blocks/masks_in_block: the masks the answer reads under block
    attention). Means skip NaN rows; a mean with no rows left is None.
    """
    frame = store.examples[list(CONDITION) + ["correct", "p_answer", "entropy"]].copy()
    for key, name in OPTIONAL_METRICS.items():
        if name.split("/")[0] in store.groups:
            values = store.array(name)
            frame[key] = values.mean(axis=(1, 2)) if values.ndim == 3 else values
    metrics = [c for c in frame.columns if c not in CONDITION + ("correct",)]
    conditions = []
    for (masks, filler, placement), group in frame.groupby(list(CONDITION)):
        row = {"masks": int(masks), "filler": bool(filler), "placement": str(placement), "n": len(group)}
        row["accuracy"] = float(group["correct"].mean())
        for key in metrics:
            mean = float(group[key].astype("float64").mean())
            row[key] = None if math.isnan(mean) else mean
        conditions.append(row)
    conditions.sort(key=lambda r: (placement_order(r["placement"]), r["filler"], r["masks"]))
    return conditions


def placement_order(placement: str) -> tuple:
    """Return a sort key that orders placements by name with their slot numbers compared as numbers
    ("relevant-at:5" before "relevant-at:10"; "relevant-at:K,query-at:J" by K, then J)."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", placement))


def format_table(conditions: list) -> str:
    """Return the conditions from ``summarize`` as an aligned text table (one line per condition)."""
    keys = [k for k in COLUMNS if any(k in c for c in conditions)] or list(COLUMNS)[:7]
    cells = [[COLUMNS[k] for k in keys]]
    for condition in conditions:
        cells.append([_cell(condition[k]) for k in keys])
    widths = [max(len(row[i]) for row in cells) for i in range(len(keys))]
    lines = []
    for row in cells:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def plain_table(rows: list) -> str:
    """Return dicts with the same keys as an aligned text table, a column per key (for kinds other than record)."""
    if not rows:
        return "(no rows)"
    keys = list(rows[0])
    cells = [keys] + [[_cell(row.get(k)) for k in keys] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(keys))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


# ---------------------------------------------------------------- one describer per kind of file (``store.kinds``)


def describe_record(path) -> dict:
    """Return what ``summary`` says about a record store: {"kind", "header", "conditions"} (``summarize``)."""
    from mdlm_interp.store import open_store

    with open_store(path) as store:
        attrs = store.attrs
        header = (f"{store.path}: record store, {store.n_rows} of {attrs['n_planned']} rows ({attrs['status']}), "
                  f"model {attrs['model_id']} ({attrs['family']}, {attrs['dtype']})")
        block_length = attrs["settings"].get("block_length")
        if block_length:
            header += (f"; block attention, blocks of {block_length} positions (masks in block: how many of the n "
                       "masks the answer reads)")
        return {"kind": "record", "header": header, "conditions": summarize(store)}


def describe_trace(path) -> dict:
    """Return {"kind", "header", "conditions"} of a decode trace: per prompt the steps, positions unmasked
    and the generated text."""
    from mdlm_interp.store.reader import open_file

    with open_file(path) as file:
        unmasked, texts = file["unmasked"][:], file["text"].asstr()[:]
        settings = file.attrs["settings"]
        header = (f"{path}: decode trace, {unmasked.shape[0]} steps, {len(texts)} prompts, model "
                  f"{_plain(file.attrs['model_id'])}, sampler settings {_plain(settings)}")
        rows = [{"prompt": i, "steps": int(unmasked.shape[0]), "unmasked": int(unmasked[:, i].sum()),
                 "text": str(text)} for i, text in enumerate(texts)]
    return {"kind": "trace", "header": header, "conditions": rows}


def _plain(value):
    return value.decode() if isinstance(value, bytes) else value
