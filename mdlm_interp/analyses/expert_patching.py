"""Experts as units of activation patching: expert patching stores -> one row per direction, expert and
position group.

Reads expert patching stores (``mdlm-interp patch --experts``; docs/store.md). Per direction, expert and
position group, over the prompt pairs: the receiving run's mean logit difference logit(answer) -
logit(wrong) without and with the donor's contribution of the expert patched in, the effect in logits
(patched - receiver) and the recovery (patched - corrupt) / (clean - corrupt) of the means, undefined (NaN)
where the clean - corrupt gap is under ``analyses.patching.MIN_GAP`` logits.
"""

from mdlm_interp.analyses.patching import MIN_GAP, comparison
from mdlm_interp.analyses.registry import Analysis
from mdlm_interp.store.identity import read_identity
from mdlm_interp.store.results import open_results


def expert_patching_cells(store, min_gap: float = MIN_GAP) -> "pandas.DataFrame":
    """Return one row per (direction, expert, group) of an open expert patching store, in the store's order:
    direction, expert, group, n (pairs), clean, corrupt, receiver and patched (mean logit differences), effect
    (patched - receiver, logits) and recovery ((patched - corrupt) / (clean - corrupt); NaN where the gap is
    under ``min_gap`` logits)."""
    import numpy as np

    cells = store.examples.copy()
    cells["receiver"] = cells["corrupt"].where(cells["direction"] == "clean_into_corrupt", cells["clean"])
    keys = ["direction", "expert", "group"]
    means = cells.groupby(keys, sort=False)[["clean", "corrupt", "receiver", "patched"]].mean().reset_index()
    means.insert(3, "n", cells.groupby(keys, sort=False).size().to_numpy())
    means["effect"] = means["patched"] - means["receiver"]
    gap = means["clean"] - means["corrupt"]
    means["recovery"] = np.where(gap.abs() >= min_gap, (means["patched"] - means["corrupt"]) / gap.where(gap != 0, 1),
                                 np.nan)
    return means


def expert_patching(paths) -> dict:
    """Return {"expert_patching": the cells of every store (``expert_patching_cells``) with model and
    comparison ("1 vs 50 masks") columns}."""
    import pandas as pd

    frames = []
    for path in paths:
        with open_results(path, "expert_patching") as store:
            frame = expert_patching_cells(store)
            frame.insert(0, "model", read_identity(store.attrs).label)
            frame.insert(1, "comparison", comparison(store.attrs["settings"]))
        frames.append(frame)
    return {"expert_patching": pd.concat(frames, ignore_index=True)}


def paragraph(tables: dict) -> str:
    """Per store and direction: the cell whose patch moves the logit difference most, in logits."""
    parts = []
    for (model, compared, direction), frame in tables["expert_patching"].groupby(
            ["model", "comparison", "direction"], sort=False):
        best = frame.loc[frame["effect"].abs().idxmax()]
        parts.append(f"{model} ({compared}), {direction.replace('_', ' ')}: expert {best['expert']} at the "
                     f"{best['group']} positions moves the logit difference most, by {best['effect']:+.2f} logits "
                     f"over {best['n']} pairs")
    return "; ".join(parts) + "."


ANALYSIS = Analysis(
    name="expert_patching",
    title="Patching experts between mask configurations",
    needs=(),
    tables=expert_patching,
    figures=lambda tables: [],
    paragraph=paragraph,
    store_kind="expert_patching",
)
