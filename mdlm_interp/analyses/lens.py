"""Logit lens at the answer readout position: p(answer), rank and entropy after the embeddings and
after each block, per mask count (and filler control)."""

import numpy as np

from mdlm_interp.analyses.data import SETTING, Skip
from mdlm_interp.analyses.grouped import clean_types, masks_text, slug
from mdlm_interp.analyses.plotting import FILLER_STYLE, MASK_STYLE, figure_title, line_with_band, new_figure
from mdlm_interp.analyses.registry import Analysis, FigureOut
from mdlm_interp.analyses.stats import bootstrap_mean, wilson_interval

KEYS = SETTING + ["placement", "filler", "masks"]


def logit_lens(recordings):
    """Return one row per (KEYS, layer) where layer 0 is the embeddings and layer l the output of block l:
    n, p_answer (mean, bootstrap bounds), top1 (share of prompts whose answer ranks first, Wilson bounds
    top1_low / top1_high), rank_mean, rank_median, entropy (nats; mean, bootstrap bounds)."""
    import pandas as pd

    rows = recordings.rows
    if rows.empty:
        raise Skip("no store recorded the logit lens")
    out = []
    for keys, group in rows.groupby(KEYS):
        p_answer = recordings.gather(group, "lens/p_answer").astype(float)
        rank = recordings.gather(group, "lens/rank")
        entropy = recordings.gather(group, "lens/entropy").astype(float)
        p_stats, e_stats = bootstrap_mean(p_answer), bootstrap_mean(entropy)
        top1 = (rank == 0).sum(0)
        low, high = wilson_interval(top1, len(group))
        for layer in range(p_answer.shape[1]):
            out.append({**dict(zip(KEYS, keys)), "layer": layer, "n": len(group),
                        "p_answer": p_stats[0][layer], "p_answer_low": p_stats[1][layer],
                        "p_answer_high": p_stats[2][layer], "top1": top1[layer] / len(group),
                        "top1_low": low[layer], "top1_high": high[layer], "rank_mean": rank[:, layer].mean(),
                        "rank_median": float(np.median(rank[:, layer])), "entropy": e_stats[0][layer],
                        "entropy_low": e_stats[1][layer], "entropy_high": e_stats[2][layer]})
    return clean_types(pd.DataFrame(out))


def tables(recordings) -> dict:
    """Return {"logit_lens"}."""
    return {"logit_lens": logit_lens(recordings)}


def figures(tables: dict) -> list:
    """Per setting and placement with more than one mask count: p(answer) against depth, a line per mask count."""
    frame = tables["logit_lens"]
    out = []
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    for (n_relevant, n_distractor, placement), setting in frame.groupby(["n_relevant", "n_distractor", "placement"]):
        if setting["masks"].nunique() < 2:
            continue
        models = list(setting["model"].unique())
        figure, axes = new_figure(2, len(models), width=3.9, height=2.9, sharey="row")
        ladder = sorted(setting["masks"].unique())
        for column, model in enumerate(models):
            group = setting[setting["model"] == model]
            for (masks, filler), curve in group.groupby(["masks", "filler"]):
                color = cmap(ladder.index(masks) / max(len(ladder) - 1, 1))
                for row, name in enumerate(("p_answer", "entropy")):
                    ax = axes[row, column]
                    line_with_band(ax, curve["layer"], curve[name], curve[f"{name}_low"], curve[f"{name}_high"],
                                   color, style=FILLER_STYLE if filler else MASK_STYLE, marker="s" if filler else "o",
                                   label=(masks_text(masks) + (" (filler)" if filler else "")) if row == 0 else None)
            n_layers = int(group["layer"].max())
            for row in range(2):
                ax = axes[row, column]
                ax.set_xticks(range(n_layers + 1), ["emb"] + [str(i) for i in range(1, n_layers + 1)]
                              if n_layers <= 12 else None)
                ax.grid(alpha=0.3)
                ax.set_xlabel("after block (emb: embeddings)")
            axes[0, column].set_title(model, fontsize=10)
            axes[0, column].set_ylim(-0.02, 1.02)
            axes[0, column].legend(fontsize=6, ncol=2)
        axes[0, 0].set_ylabel("p(answer), logit lens")
        axes[1, 0].set_ylabel("entropy (nats)")
        figure.suptitle(figure_title(models, "logit lens", n_relevant, n_distractor, placement, setting["n"]))
        out.append(FigureOut(
            f"logit_lens_r{n_relevant}_d{n_distractor}_{slug(placement)}", figure,
            f"Logit lens at the answer readout: p(answer) (top) and entropy (bottom) after the embeddings and after "
            f"each block, one line per mask count (dashed: filler control; {n_relevant} relevant + {n_distractor} "
            f"distractor, {placement}), showing at which depth the masks take the answer away; bands are bootstrap "
            f"95% intervals."))
    return out


def paragraph(tables: dict) -> str:
    """Where in depth the answer appears at 1 mask and at the most masks, per model."""
    def describe(curve, masks) -> str:
        layer = next((int(r["layer"]) for _, r in curve.iterrows() if r["top1"] >= 0.5), None)
        text = (f"at {masks_text(masks)} the answer is top-1 for half the prompts from layer {layer} on"
                if layer is not None else
                f"at {masks_text(masks)} the answer is top-1 for under half the prompts at every depth")
        return text + f", final p(answer) {curve['p_answer'].iloc[-1]:.3f}"

    frame = tables["logit_lens"]
    parts = []
    plain = frame[~frame["filler"]]
    for (model, n_relevant, n_distractor, placement), group in plain.groupby(
            ["model", "n_relevant", "n_distractor", "placement"], sort=False):
        if group["masks"].nunique() < 2:
            continue
        low, high = group["masks"].min(), group["masks"].max()
        first, last = group[group["masks"] == low], group[group["masks"] == high]
        parts.append(f"{model} ({n_relevant}+{n_distractor}, {placement}): {describe(first, low)}; "
                     f"{describe(last, high)}")
    if not parts:
        return "Only one mask count per setting was recorded with the lens; see the table."
    return "; ".join(parts) + "."


def shown(tables: dict) -> dict:
    """p(answer), top-1 share and entropy per layer (rank details: tables/logit_lens.csv)."""
    frame = tables["logit_lens"].copy()
    for name in ("p_answer", "top1", "entropy"):
        frame[name] = [f"{r[name]:.3f} [{r[name + '_low']:.3f}, {r[name + '_high']:.3f}]" for _, r in frame.iterrows()]
        frame = frame.drop(columns=[f"{name}_low", f"{name}_high"])
    return {"Logit lens per layer (0: embeddings)": frame}


ANALYSIS = Analysis(
    name="logit_lens",
    title="Logit lens: where in depth the answer is lost",
    needs=("lens",),
    tables=tables,
    figures=figures,
    paragraph=paragraph,
    shown=shown,
)
