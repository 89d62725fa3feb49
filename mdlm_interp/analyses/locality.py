"""Locality profile: accuracy against the slot of the relevant block (``relevant-at:K``) and against the
query's slot (``query-at:K``), slots as numbers; the nearest-against-farthest contrast is paired by prompt."""

import re

import numpy as np

from mdlm_interp.analyses.data import PAIR, SETTING, Skip
from mdlm_interp.analyses.grouped import accuracy_by, ci, clean_types, format_rows, masks_text, matching
from mdlm_interp.analyses.plotting import figure_title, line_with_band, model_colors, new_figure
from mdlm_interp.analyses.registry import Analysis, FigureOut
from mdlm_interp.analyses.stats import paired_difference

MASK_MARKERS = ["o", "s", "^", "D", "v", "P", "X"]
MASK_STYLES = ["-", "--", "-.", ":"]


def parse_slots(placement: str) -> tuple:
    """Return (relevant block's first slot or None, query slot or None) of a placement string."""
    relevant = re.search(r"relevant-at:(\d+)", placement)
    query = re.search(r"query-at:(\d+)", placement)
    return (int(relevant.group(1)) if relevant else None, int(query.group(1)) if query else None)


def block_gap(relevant_at, query_slot, n_relevant):
    """Examples between the relevant block and the query: positive when the block is before the query,
    negative when after it, 0 when adjacent or the query sits inside the block; NaN without a block."""
    if relevant_at is None or np.isnan(relevant_at):
        return np.nan
    end = relevant_at + n_relevant
    if query_slot >= end:
        return query_slot - end
    if query_slot <= relevant_at:
        return -(relevant_at - query_slot)
    return 0


def locality(recordings):
    """Return one row per (model, n_relevant, n_distractor, placement, filler, masks) for placements that
    move the relevant block or the query, plus the random placement of the same settings as reference.

    Columns: the keys, relevant_at (first slot of the relevant block; empty for a random mix), query_slot
    (examples before the query; n_relevant + n_distractor when the query is last), gap (examples between
    block and query, negative when the block follows the query), n, accuracy, ci_low, ci_high (Wilson),
    p_answer and entropy with bootstrap bounds. Sorted by slot numerically."""
    rows = recordings.rows
    moved = rows[rows["placement"] != "random"]
    if moved.empty:
        raise Skip("no store has relevant-at:K or query-at:K placements")
    settings = moved[SETTING + ["masks"]].drop_duplicates()
    rows = rows.merge(settings, on=SETTING + ["masks"])
    frame = accuracy_by(rows, SETTING + ["placement", "filler", "masks"])
    slots = [parse_slots(p) for p in frame["placement"]]
    frame.insert(6, "relevant_at", [np.nan if r is None else r for r, _ in slots])
    n_examples = frame["n_relevant"] + frame["n_distractor"]
    frame.insert(7, "query_slot", [n if q is None else q for (_, q), n in zip(slots, n_examples)])
    frame.insert(8, "gap", [block_gap(r, q, k) for r, q, k in zip(frame["relevant_at"], frame["query_slot"],
                                                                   frame["n_relevant"])])
    frame["relevant_at"] = frame["relevant_at"].astype("Int64")
    frame["gap"] = frame["gap"].astype("Int64")
    frame = frame.sort_values(SETTING + ["filler", "masks", "relevant_at", "query_slot"], na_position="first")
    return clean_types(frame.reset_index(drop=True))


def locality_contrast(recordings, frame):
    """Return, per model, setting, filler and masks, accuracy with the relevant block nearest the query
    minus accuracy with it farthest (query last), over the same prompts: placements, n_pairs, accuracy_near,
    accuracy_far, difference (near - far) with bootstrap bounds low / high."""
    import pandas as pd

    rows = recordings.rows
    blocks = frame[frame["relevant_at"].notna() & (frame["query_slot"] == frame["n_relevant"] + frame["n_distractor"])]
    out = []
    for keys, group in blocks.groupby(SETTING + ["filler", "masks"]):
        if len(group) < 2:
            continue
        near = group.loc[group["gap"].abs().idxmin(), "placement"]
        far = group.loc[group["gap"].abs().idxmax(), "placement"]
        pick = rows[matching(rows, dict(zip(SETTING + ["filler", "masks"], keys)))]
        d = paired_difference(pick[pick["placement"] == far].set_index(PAIR)["correct"],
                              pick[pick["placement"] == near].set_index(PAIR)["correct"])
        if d["n_pairs"] == 0:
            continue
        out.append({**dict(zip(SETTING + ["filler", "masks"], keys)), "near": near, "far": far,
                    "n_pairs": d["n_pairs"], "accuracy_near": d["other"], "accuracy_far": d["base"],
                    "difference": d["difference"], "low": d["low"], "high": d["high"]})
    columns = SETTING + ["filler", "masks", "near", "far", "n_pairs", "accuracy_near", "accuracy_far", "difference",
                         "low", "high"]
    return clean_types(pd.DataFrame(out, columns=columns))


def tables(recordings) -> dict:
    """Return {"locality", "locality_contrast"}."""
    frame = locality(recordings)
    return {"locality": frame, "locality_contrast": locality_contrast(recordings, frame)}


def figures(tables: dict) -> list:
    """One figure per setting: accuracy against the relevant block's slot and against the query's slot."""
    import pandas as pd

    frame = tables["locality"]
    out = []
    for (n_relevant, n_distractor), setting in frame.groupby(["n_relevant", "n_distractor"]):
        n_examples = n_relevant + n_distractor
        block = setting[setting["relevant_at"].notna() & (setting["query_slot"] == n_examples)]
        moved = setting[[("query-at:" in p) for p in setting["placement"]]]
        # the same block with the query last (slot n_examples) completes each query curve
        query = pd.concat([moved, block[block["relevant_at"].isin(moved["relevant_at"].dropna().unique())]])
        # a panel needs two slots at least: no axis around a single x value
        panels = [p for p in (("block", block, "relevant_at"), ("query", query, "query_slot"))
                  if p[1][p[2]].nunique() >= 2]
        if not panels:
            out.append(FigureOut(f"locality_r{n_relevant}_d{n_distractor}", None,
                                 "no placement of this setting moves the relevant block or the query over two slots "
                                 "or more (no axis around a single x value); the table locality holds the numbers."))
            continue
        figure, axes = new_figure(1, len(panels), width=5.2, height=3.6)
        colors = model_colors(setting["model"].unique())
        masks = sorted(setting["masks"].unique())
        for ax, (kind, rows, x) in zip(axes[0], panels):
            reference = setting[setting["placement"] == "random"]
            curve_keys = ["model", "masks", "filler"] + (["relevant_at"] if kind == "query" else [])
            for keys, group in rows.assign(relevant_at=rows["relevant_at"].fillna(-1)).groupby(curve_keys, sort=False):
                model, masks_count, filler = keys[:3]
                relevant_at = keys[3] if kind == "query" else -1
                group = group.sort_values(x)
                label = f"{model}, {masks_text(masks_count)}" + (" (filler)" if filler else "")
                if kind == "query" and relevant_at >= 0:
                    label += f", block at {int(relevant_at)}"
                style = MASK_STYLES[masks.index(masks_count) % len(MASK_STYLES)]
                line_with_band(ax, group[x].astype(float), group["accuracy"], group["ci_low"], group["ci_high"],
                               colors[model], style=style, label=label,
                               marker=MASK_MARKERS[masks.index(masks_count) % len(MASK_MARKERS)])
            for _, row in reference.iterrows():
                if kind == "block" and not row["filler"]:
                    ax.axhline(row["accuracy"], color=colors[row["model"]], linewidth=0.8, alpha=0.6, linestyle=":")
            if kind == "block":
                ax.set_xlabel(f"slot of the relevant block's first example (query after slot {n_examples - 1})")
            else:
                for start in rows["relevant_at"].dropna().unique():
                    ax.axvspan(start, start + n_relevant, color="grey", alpha=0.12, linewidth=0)
                ax.set_xlabel("examples before the query (grey: the relevant block)")
            ax.set_ylabel("accuracy")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6.5)
        figure.suptitle(figure_title(colors, "locality", n_relevant, n_distractor, None,
                                     pd.concat([p[1] for p in panels])["n"]))
        what = " and ".join(
            ("the first slot of the relevant block (query last; dotted: random mix)" if k == "block"
             else "the slot of the query") for k, _, _ in panels)
        out.append(FigureOut(f"locality_r{n_relevant}_d{n_distractor}", figure,
                             f"Accuracy against {what} with {n_relevant} relevant + {n_distractor} distractor "
                             f"examples, one colour per model and one line style per mask count; bands are Wilson "
                             f"95% intervals."))
    return out


def paragraph(tables: dict) -> str:
    """Nearest-against-farthest contrasts in words."""
    contrast = tables["locality_contrast"]
    if contrast.empty:
        return "No setting moves the relevant block over more than one slot, so there is no near-far contrast."
    parts = []
    for _, r in contrast.iterrows():
        parts.append(f"{r['model']} ({r['n_relevant']}+{r['n_distractor']}, {masks_text(r['masks'])}"
                     f"{', filler' if r['filler'] else ''}): {r['accuracy_near']:.3f} with the block nearest the "
                     f"query ({r['near']}) against {r['accuracy_far']:.3f} farthest ({r['far']}), paired difference "
                     f"{r['difference']:.3f} [{r['low']:.3f}, {r['high']:.3f}] over {r['n_pairs']} prompts")
    return "Relevant block near against far from the query: " + "; ".join(parts) + "."


def shown(tables: dict) -> dict:
    """The profile and the contrast as report tables."""
    frame = format_rows(tables["locality"], ["accuracy", "p_answer", "entropy"])
    contrast = tables["locality_contrast"].copy()
    contrast["difference"] = [ci(r, "difference", "low", "high") for _, r in contrast.iterrows()]
    return {"Locality profile": frame, "Nearest against farthest relevant block, paired by prompt":
            contrast.drop(columns=["low", "high"])}


ANALYSIS = Analysis(
    name="locality",
    title="Locality: where the relevant examples and the query sit",
    needs=(),
    tables=tables,
    figures=figures,
    paragraph=paragraph,
    shown=shown,
)
