"""Grouped summaries shared by the analyses: accuracy with Wilson intervals, means with bootstrap intervals."""

import numpy as np

from mdlm_interp.analyses.stats import bootstrap_mean, wilson_interval


def accuracy_by(rows, keys: list, means=("p_answer", "entropy")):
    """Return one row per group of ``keys``: the keys, n, accuracy (proportion of ``correct``), ci_low,
    ci_high (Wilson 95%), and for each column in ``means`` its mean with bootstrap bounds
    ``<column>_low`` / ``<column>_high``. Groups are sorted by the keys (masks numerically)."""
    import pandas as pd

    out = []
    for values, group in rows.groupby(keys, sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        record = dict(zip(keys, values))
        record["n"] = len(group)
        record["accuracy"] = float(group["correct"].mean())
        low, high = wilson_interval(group["correct"].sum(), len(group))
        record["ci_low"], record["ci_high"] = float(low), float(high)
        for column in means:
            record[column], record[f"{column}_low"], record[f"{column}_high"] = bootstrap_mean(group[column].to_numpy())
        out.append(record)
    return pd.DataFrame(out, columns=[*keys, "n", "accuracy", "ci_low", "ci_high",
                                      *[f"{c}{s}" for c in means for s in ("", "_low", "_high")]])


def matching(frame, values: dict):
    """Return the boolean row mask of ``frame`` where every column in ``values`` equals its value."""
    mask = np.ones(len(frame), dtype=bool)
    for column, value in values.items():
        mask &= (frame[column] == value).to_numpy()
    return mask


def with_pooled_task(rows):
    """Return ``rows`` twice: once per task and once with task "all" (for pooled summaries)."""
    import pandas as pd

    return pd.concat([rows, rows.assign(task="all")], ignore_index=True)


def clean_types(frame):
    """Return ``frame`` with plain dtypes for CSV: bool filler, int masks and counts."""
    frame = frame.copy()
    for column in ("filler", "causal"):
        if column in frame:
            frame[column] = frame[column].astype(bool)
    for column in ("masks", "n", "n_relevant", "n_distractor", "n_pairs", "layer", "head"):
        if column in frame:
            frame[column] = frame[column].astype("Int64" if frame[column].isna().any() else np.int64)
    return frame


def ci(row, column: str, low: str | None = None, high: str | None = None) -> str:
    """Return "0.953 [0.912, 0.977]" from a row's value and its interval columns."""
    low = low or ("ci_low" if column == "accuracy" else f"{column}_low")
    high = high or ("ci_high" if column == "accuracy" else f"{column}_high")
    return f"{row[column]:.3f} [{row[low]:.3f}, {row[high]:.3f}]"


def format_rows(frame, columns: list):
    """Replace each value column and its interval columns by one "value [low, high]" text column."""
    frame = frame.copy()
    for column in columns:
        low, high = ("ci_low", "ci_high") if column == "accuracy" else (f"{column}_low", f"{column}_high")
        frame[column] = [ci(row, column, low, high) for _, row in frame.iterrows()]
        frame = frame.drop(columns=[low, high])
    return frame


def slug(text: str) -> str:
    """Return ``text`` usable in a file name ("relevant-at:20,query-at:10" -> "relevant-at20_query-at10")."""
    return text.replace(":", "").replace(",", "_").replace("/", "-").replace(" ", "")


def masks_text(masks) -> str:
    """Return "1 mask", "30 masks" or, for causal rows (0), "no masks"."""
    masks = int(masks)
    return "no masks" if masks == 0 else f"{masks} mask{'s' if masks != 1 else ''}"
