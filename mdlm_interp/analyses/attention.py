"""Attention to masks per layer x head: the attention mass that the readout position (the row that
predicts the answer: the answer slot for LLaDA, the position before it for Dream) and the context put
on the masks after the answer slot (or, in the filler control, on the fillers), and how the readout
position's attention to the relevant examples changes against 1 mask (paired by prompt).

At 1 mask no token follows the answer slot, so mass on masks is 0 there by definition; the change
against 1 mask is therefore measured on what the masks take attention away from: the relevant examples.
"""

import numpy as np

from mdlm_interp.analyses.data import PAIR, SETTING, Skip
from mdlm_interp.analyses.grouped import clean_types, matching, slug
from mdlm_interp.analyses.plotting import (FILLER_STYLE, MASK_STYLE, figure_title, integer_head_axes, line_with_band,
                                          masks_axis, new_figure)
from mdlm_interp.analyses.registry import Analysis, FigureOut
from mdlm_interp.analyses.stats import bootstrap_mean

DATASETS = {"from_answer": "attention/mask_mass_from_answer", "from_context": "attention/mask_mass_from_context",
            "relevant": "attention/relevant_mass_from_answer"}
LEVELS = {  # table name -> (reduction of [rows, layers, heads], names of the kept axes)
    "attention_heads": (lambda a: a, ("layer", "head")),
    "attention_layers": (lambda a: a.mean(2), ("layer",)),
    "attention_summary": (lambda a: a.mean((1, 2)), ()),
}
KEYS = SETTING + ["placement", "filler", "masks"]


def attention(recordings) -> dict:
    """Return {"attention_heads", "attention_layers", "attention_summary"}: one row per condition (KEYS) and
    per layer x head, per layer (mean over heads), or overall (mean over layers and heads).

    Columns: n, then for from_answer (mass from the readout position on the tokens after the answer
    slot), from_context (the same from each context position, averaged), relevant (mass from the readout
    position on the relevant examples) and relevant_delta (relevant minus relevant at 1 mask on the same
    prompt; n_pairs prompts) the mean with bootstrap bounds ``<name>_low`` / ``<name>_high``.
    Diffusion models only (masks >= 1); layers count from 0."""
    import pandas as pd

    rows = recordings.rows
    rows = rows[rows["masks"] >= 1]
    if rows.empty:
        raise Skip("no store with attention has masks (causal models take none)")
    out = {name: [] for name in LEVELS}
    for keys, group in rows.groupby(KEYS):
        key = dict(zip(KEYS, keys))
        arrays = {name: recordings.gather(group, path).astype(float) for name, path in DATASETS.items()}
        base = rows[matching(rows, {k: key[k] for k in SETTING + ["placement"]}) & (rows["masks"] == 1).to_numpy()
                    & ~rows["filler"].to_numpy()]
        here = pd.Series(np.arange(len(group)), index=group[PAIR].to_numpy())
        there = pd.Series(np.arange(len(base)), index=base[PAIR].to_numpy())
        matched = here.to_frame("here").join(there.rename("there"), how="inner")
        base_relevant = recordings.gather(base, DATASETS["relevant"]).astype(float) if len(base) else None
        for table, (reduce, axes) in LEVELS.items():
            stats = {name: bootstrap_mean(reduce(values)) for name, values in arrays.items()}
            if len(matched):
                delta = (reduce(arrays["relevant"][matched["here"].to_numpy()])
                         - reduce(base_relevant[matched["there"].to_numpy()]))
                stats["relevant_delta"] = bootstrap_mean(delta)
            out[table] += _rows(key, len(group), len(matched), stats, axes)
    return {table: clean_types(pd.DataFrame(records)) for table, records in out.items()}


def _rows(key: dict, n: int, n_pairs: int, stats: dict, axes: tuple) -> list:
    """Flatten per-cell statistics (arrays shaped like the kept axes) into one record per cell."""
    shape = np.shape(stats["from_answer"][0])
    records = []
    for cell in np.ndindex(*shape):
        record = {**key, **dict(zip(axes, cell)), "n": n, "n_pairs": n_pairs}
        for name in ("from_answer", "from_context", "relevant", "relevant_delta"):
            mean, low, high = stats.get(name, (np.full(shape, np.nan),) * 3)
            record[name], record[f"{name}_low"], record[f"{name}_high"] = (
                float(np.asarray(v)[cell]) for v in (mean, low, high))
        records.append(record)
    return records


def main_condition(summary) -> tuple | None:
    """Return (n_relevant, n_distractor, placement, masks) for the heatmaps: random placement preferred,
    the setting with the most mask counts, its largest mask count."""
    counts = summary.groupby(["n_relevant", "n_distractor", "placement"])["masks"].agg(["nunique", "max"])
    counts = counts[counts["max"] > 1]
    if counts.empty:
        return None
    best = sorted(counts.index, key=lambda k: (k[2] != "random", -counts.loc[k, "nunique"], -k[0]))[0]
    return (*best, int(counts.loc[best, "max"]))


def figure_heads(heads, condition) -> FigureOut:
    """Heatmaps layer x head at one condition, a row per model: mass on masks / fillers from the readout
    position (where the answer slot's prediction is read: the slot for LLaDA, the position before it for Dream)
    and from the context, and the change of attention to the relevant examples against 1 mask."""
    n_relevant, n_distractor, placement, masks = condition
    rows = heads[(heads["n_relevant"] == n_relevant) & (heads["n_distractor"] == n_distractor)
                 & (heads["placement"] == placement) & (heads["masks"] == masks)]
    models = list(rows["model"].unique())
    panels = [("from_answer", False, "from the readout position\n-> masks"),
              ("from_answer", True, "from the readout position\n-> fillers"),
              ("from_context", False, "context -> masks"), ("from_context", True, "context -> fillers"),
              ("relevant_delta", False, "from the readout position\n-> relevant examples,\nchange against 1 mask")]
    panels = [p for p in panels if (rows["filler"] == p[1]).any()]
    figure, axes = new_figure(len(models), len(panels), width=2.9, height=2.5)
    top = max(rows[["from_answer", "from_context"]].max().max(), 1e-6)
    spread = max(rows["relevant_delta"].abs().max(), 1e-6) if rows["relevant_delta"].notna().any() else 1.0
    for i, model in enumerate(models):
        for j, (column, filler, title) in enumerate(panels):
            ax = axes[i, j]
            cells = rows[(rows["model"] == model) & (rows["filler"] == filler)]
            grid = cells.pivot(index="layer", columns="head", values=column)
            delta = column == "relevant_delta"
            image = ax.imshow(grid.to_numpy(), aspect="auto", origin="lower", cmap="RdBu_r" if delta else "viridis",
                              vmin=-spread if delta else 0, vmax=spread if delta else top)
            if grid.size <= 64:
                for (y, x), value in np.ndenumerate(grid.to_numpy()):
                    ax.text(x, y, f"{value:.2f}".replace("-0.00", "0.00"), ha="center", va="center", fontsize=6,
                            color="black" if delta or value > top / 2 else "white")
            ax.set_title(f"{model}\n{title}" if j == 0 else title, fontsize=8)
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
            integer_head_axes(ax, grid.shape[0], grid.shape[1])
            figure.colorbar(image, ax=ax, shrink=0.8, label="attention mass" if not delta else "change in mass")
    figure.suptitle(figure_title(models, f"attention at {masks} masks", n_relevant, n_distractor, placement,
                                 rows["n"]))
    return FigureOut(
        f"attention_heads_r{n_relevant}_d{n_distractor}_{slug(placement)}_m{masks}", figure,
        f"Attention mass per layer (rows) and head (columns) at {masks} masks: from the readout position (the "
        f"answer slot for LLaDA, the position before it for Dream) and "
        f"(averaged) from the context positions onto the masks after the answer slot, the same onto the fillers of "
        f"the filler control, and the change of the readout position's attention to the relevant examples against "
        f"1 mask on the same prompts (red: more, blue: less).")


def figure_layers(layers, condition) -> FigureOut:
    """Mass from the readout position on the masks (mean over heads) against masks, a line per layer."""
    n_relevant, n_distractor, placement, _ = condition
    rows = layers[(layers["n_relevant"] == n_relevant) & (layers["n_distractor"] == n_distractor)
                  & (layers["placement"] == placement) & (layers["masks"] > 1)]
    models = list(rows["model"].unique())
    figure, axes = new_figure(1, len(models), width=4.0, height=3.3, sharey=True)
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    n_layers = int(rows["layer"].max()) + 1
    for ax, model in zip(axes[0], models):
        for (layer, filler), group in rows[rows["model"] == model].groupby(["layer", "filler"]):
            group = group.sort_values("masks")
            color = cmap(layer / max(n_layers - 1, 1))
            line_with_band(ax, group["masks"], group["from_answer"], group["from_answer_low"],
                           group["from_answer_high"], color, style=FILLER_STYLE if filler else MASK_STYLE,
                           marker="s" if filler else "o", label=f"layer {layer}" if not filler else None)
        masks_axis(ax, sorted(rows["masks"].unique()))
        ax.set_title(model, fontsize=10)
        ax.grid(alpha=0.3)
        if n_layers <= 12:
            ax.legend(fontsize=6.5, title="solid: masks, dashed: fillers", title_fontsize=6.5)
    axes[0, 0].set_ylabel("attention from the readout position\non the tokens after the answer slot\n(mean over heads)")
    figure.suptitle(figure_title(models, "attention per layer", n_relevant, n_distractor, placement, rows["n"]))
    return FigureOut(
        f"attention_layers_r{n_relevant}_d{n_distractor}_{slug(placement)}", figure,
        f"Attention mass from the readout position onto the masks after the answer slot (solid) or onto the "
        f"fillers (dashed), mean over heads, against the number of masks, one line per layer "
        f"({n_relevant} relevant + {n_distractor} distractor, {placement}); bands are bootstrap 95% intervals.")


def figures(tables: dict) -> list:
    """Heatmaps at the main condition's largest mask count and per-layer curves against masks (only with two
    counts above 1 at least: no axis around a single x value)."""
    condition = main_condition(tables["attention_summary"])
    if condition is None:
        return []
    summary = tables["attention_summary"]
    n_relevant, n_distractor, placement, _ = condition
    counts = summary.loc[(summary["n_relevant"] == n_relevant) & (summary["n_distractor"] == n_distractor)
                         & (summary["placement"] == placement) & (summary["masks"] > 1), "masks"].nunique()
    heads = figure_heads(tables["attention_heads"], condition)
    if counts >= 2:
        return [heads, figure_layers(tables["attention_layers"], condition)]
    return [heads, FigureOut(f"attention_layers_r{n_relevant}_d{n_distractor}_{slug(placement)}", None,
                             "attention against the number of masks needs two mask counts above 1; the table "
                             "attention_layers holds the one count there is.")]


def paragraph(tables: dict) -> str:
    """Overall mass on masks against fillers and the change of relevant attention, per model, in words."""
    summary, heads = tables["attention_summary"], tables["attention_heads"]
    condition = main_condition(summary)
    if condition is None:
        return "Only 1 mask was recorded: there are no masks after the answer slot to attend to."
    n_relevant, n_distractor, placement, masks = condition
    pick = lambda f: f[(f["n_relevant"] == n_relevant) & (f["n_distractor"] == n_distractor)  # noqa: E731
                       & (f["placement"] == placement) & (f["masks"] == masks)]
    parts = []
    for model, group in pick(summary).groupby("model", sort=False):
        plain = group[~group["filler"]].iloc[0]
        text = (f"{model}: the readout position puts {fmt(plain, 'from_answer')} of its attention (mean over layers "
                f"and heads) on the masks")
        filler = group[group["filler"]]
        if len(filler):
            text += f" against {fmt(filler.iloc[0], 'from_answer')} on the fillers"
        cells = pick(heads)
        cells = cells[(cells["model"] == model) & ~cells["filler"]]
        best = cells.loc[cells["from_answer"].idxmax()]
        text += (f"; the most mask-attending head is layer {best['layer']} head {best['head']} "
                 f"({best['from_answer']:.3f})")
        if not np.isnan(plain["relevant_delta"]):
            text += (f"; attention to the relevant examples changes by {fmt(plain, 'relevant_delta')} against 1 mask "
                     f"({plain['n_pairs']} prompts)")
        parts.append(text)
    return (f"At {masks} masks ({n_relevant} relevant + {n_distractor} distractor, {placement}): "
            + "; ".join(parts) + ".")


def fmt(row, name: str) -> str:
    """Return "0.123 [0.100, 0.150]" for a column with _low / _high bounds."""
    return f"{row[name]:.3f} [{row[name + '_low']:.3f}, {row[name + '_high']:.3f}]"


def shown(tables: dict) -> dict:
    """The overall summary and the ten most mask-attending heads per model (all heads: tables/attention_heads.csv)."""
    summary = tables["attention_summary"].copy()
    for name in ("from_answer", "from_context", "relevant", "relevant_delta"):
        summary[name] = [fmt(r, name) for _, r in summary.iterrows()]
        summary = summary.drop(columns=[f"{name}_low", f"{name}_high"])
    heads = tables["attention_heads"]
    heads = heads[~heads["filler"] & (heads["masks"] > 1)]
    top = heads.sort_values("from_answer", ascending=False).groupby("model", sort=False).head(10)
    columns = SETTING + ["placement", "masks", "layer", "head", "n", "from_answer", "from_context", "relevant_delta"]
    return {"Mean over layers and heads": summary,
            "The ten heads per model that put most attention from the readout position on masks": top[columns]}


ANALYSIS = Analysis(
    name="attention",
    title="Attention to masks, per layer and head",
    needs=("attention",),
    tables=attention,
    figures=figures,
    paragraph=paragraph,
    shown=shown,
)
