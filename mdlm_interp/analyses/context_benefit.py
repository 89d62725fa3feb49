"""Context benefit against mask drop, per task: how much accuracy the relevant examples add (with them
against without them, at 1 mask) and how much accuracy the masks take away (1 mask against M masks,
paired by prompt), with the correlation across tasks."""

import numpy as np

from mdlm_interp.analyses.data import PAIR, Skip
from mdlm_interp.analyses.grouped import clean_types, masks_text
from mdlm_interp.analyses.plotting import error_bars, figure_title, line_with_band, masks_axis, model_colors, new_figure
from mdlm_interp.analyses.registry import Analysis, FigureOut
from mdlm_interp.analyses.stats import bootstrap_correlation, independent_difference, paired_difference

BASELINE = "random"


def context_benefit(recordings) -> dict:
    """Return {"context_benefit", "context_benefit_correlation"} for the random placement.

    context_benefit: per (model, n_relevant, n_distractor, masks, task), with n_relevant > 0 compared with
    the store of the same model and n_distractor without relevant examples: n_with, n_without,
    accuracy_with / accuracy_without (1 mask; causal models: none), benefit (with - without; bootstrap
    bounds, independent prompts), and for masks > 1: accuracy_masks and drop (accuracy at 1 mask minus at
    ``masks``, paired by prompt; bounds drop_low / drop_high). Causal models get one row per task with
    masks 0 and no drop. context_benefit_correlation: per (model, n_relevant, n_distractor, masks > 1):
    n_tasks, mean_benefit, mean_drop, pearson with bootstrap bounds over tasks, spearman."""
    import pandas as pd

    rows = recordings.rows
    rows = rows[(rows["placement"] == BASELINE) & ~rows["filler"]]
    without = rows[rows["n_relevant"] == 0]
    if without.empty:
        raise Skip("no store was recorded without relevant examples (n_relevant 0, random placement)")
    out = []
    for (model, n_distractor), base_rows in without.groupby(["model", "n_distractor"]):
        base_rows = base_rows[base_rows["masks"] <= 1]
        with_rows = rows[(rows["model"] == model) & (rows["n_distractor"] == n_distractor) & (rows["n_relevant"] > 0)]
        for (n_relevant, task), group in with_rows.groupby(["n_relevant", "task"]):
            first = group[group["masks"] <= 1]
            base = base_rows[base_rows["task"] == task]
            if first.empty or base.empty:
                continue
            benefit = independent_difference(base["correct"].to_numpy(), first["correct"].to_numpy())
            common = {"model": model, "n_relevant": n_relevant, "n_distractor": n_distractor, "task": task,
                      "n_with": len(first), "n_without": len(base), "accuracy_with": benefit["other"],
                      "accuracy_without": benefit["base"], "benefit": benefit["difference"],
                      "benefit_low": benefit["low"], "benefit_high": benefit["high"]}
            later = group[group["masks"] > 1]
            if later.empty:
                out.append({**common, "masks": int(first["masks"].iloc[0])})
            for masks, condition in later.groupby("masks"):
                d = paired_difference(first.set_index(PAIR)["correct"], condition.set_index(PAIR)["correct"])
                if d["n_pairs"] == 0:
                    continue
                out.append({**common, "masks": masks, "n_pairs": d["n_pairs"], "accuracy_masks": d["other"],
                            "drop": 0.0 - d["difference"], "drop_low": 0.0 - d["high"], "drop_high": 0.0 - d["low"]})
    if not out:
        raise Skip("no store with relevant examples matches a store without them (same model and distractors)")
    columns = ["model", "n_relevant", "n_distractor", "masks", "task", "n_with", "n_without", "accuracy_with",
               "accuracy_without", "benefit", "benefit_low", "benefit_high", "n_pairs", "accuracy_masks", "drop",
               "drop_low", "drop_high"]
    frame = pd.DataFrame(out).reindex(columns=columns)
    frame["n_pairs"] = frame["n_pairs"].astype("Int64")
    correlations = []
    for keys, group in frame[frame["masks"] > 1].groupby(["model", "n_relevant", "n_distractor", "masks"]):
        r = bootstrap_correlation(group["benefit"], group["drop"])
        correlations.append({**dict(zip(["model", "n_relevant", "n_distractor", "masks"], keys)), "n_tasks": r["n"],
                             "mean_benefit": group["benefit"].mean(), "mean_drop": group["drop"].mean(),
                             "pearson": r["pearson"], "low": r["low"], "high": r["high"], "spearman": r["spearman"]})
    correlation = pd.DataFrame(correlations, columns=["model", "n_relevant", "n_distractor", "masks", "n_tasks",
                                                      "mean_benefit", "mean_drop", "pearson", "low", "high",
                                                      "spearman"])
    return {"context_benefit": clean_types(frame.sort_values(["model", "n_relevant", "n_distractor", "masks", "task"])
                                           .reset_index(drop=True)),
            "context_benefit_correlation": clean_types(correlation)}


def most_varied_masks(frame, model: str, n_relevant: int, n_distractor: int):
    """Return the mask count at which the per-task drop varies most across tasks (None without drops)."""
    rows = frame[(frame["model"] == model) & (frame["n_relevant"] == n_relevant)
                 & (frame["n_distractor"] == n_distractor) & (frame["masks"] > 1)]
    if rows.empty:
        return None
    spread = rows.groupby("masks")["drop"].var().fillna(0)
    return int(spread.idxmax())


def figures(tables: dict) -> list:
    """Per setting with relevant examples: per-task scatter of benefit against drop at the mask count where
    the drop varies most, and the correlation across tasks against masks."""
    frame, correlation = tables["context_benefit"], tables["context_benefit_correlation"]
    out = []
    for (n_relevant, n_distractor), setting in frame.groupby(["n_relevant", "n_distractor"]):
        if not (setting["masks"] > 1).any():
            continue
        colors = model_colors(setting["model"].unique())
        figure, axes = new_figure(1, 2, width=4.6, height=3.6)
        scatter, trend = axes[0]
        for model in setting["model"].unique():
            masks = most_varied_masks(frame, model, n_relevant, n_distractor)
            if masks is None:
                continue
            points = setting[(setting["model"] == model) & (setting["masks"] == masks)]
            benefit_error = error_bars(points["benefit"], points["benefit_low"], points["benefit_high"])
            drop_error = error_bars(points["drop"], points["drop_low"], points["drop_high"])
            scatter.errorbar(points["benefit"], points["drop"], xerr=benefit_error, yerr=drop_error,
                             fmt="o", markersize=4, capsize=1.5, elinewidth=0.6, color=colors[model],
                             label=f"{model}, {masks_text(masks)}")
            line = correlation[(correlation["model"] == model) & (correlation["n_relevant"] == n_relevant)
                               & (correlation["n_distractor"] == n_distractor)].sort_values("masks")
            line_with_band(trend, line["masks"], line["pearson"], line["low"], line["high"], colors[model], label=model)
        scatter.set_xlabel("context benefit: accuracy with - without\nrelevant examples (1 mask)")
        scatter.set_ylabel("mask drop: accuracy at 1 mask - at M masks")
        scatter.axhline(0, color="grey", linewidth=0.6)
        scatter.grid(alpha=0.3)
        scatter.legend(fontsize=7)
        scatter.set_title("one point per task", fontsize=9)
        trend.axhline(0, color="grey", linewidth=0.6)
        masks_axis(trend, sorted(setting.loc[setting["masks"] > 1, "masks"].unique()))
        trend.set_ylabel("Pearson r across tasks")
        trend.set_ylim(-1.05, 1.05)
        trend.grid(alpha=0.3)
        trend.legend(fontsize=7)
        figure.suptitle(figure_title(colors, "context benefit against mask drop", n_relevant, n_distractor, BASELINE,
                                     setting["n_with"], per="task"))
        out.append(FigureOut(
            f"context_benefit_r{n_relevant}_d{n_distractor}", figure,
            f"Left: per task, the accuracy gained from {n_relevant} relevant examples (against none, {n_distractor} "
            f"distractors, 1 mask) against the accuracy lost to masks, at the mask count where the loss varies most "
            f"across tasks; right: the correlation across tasks at each mask count with a bootstrap 95% band "
            f"(resampling tasks)."))
    return out


def paragraph(tables: dict) -> str:
    """Mean benefit and the correlation at the most informative mask count per model and setting."""
    frame, correlation = tables["context_benefit"], tables["context_benefit_correlation"]
    parts = []
    for (model, n_relevant, n_distractor), group in frame.groupby(["model", "n_relevant", "n_distractor"], sort=False):
        first = group.drop_duplicates("task")
        text = (f"{model} ({n_relevant} relevant + {n_distractor} distractor): relevant examples add "
                f"{first['benefit'].mean():.3f} accuracy on average over {len(first)} tasks "
                f"(from {first['accuracy_without'].mean():.3f} to {first['accuracy_with'].mean():.3f})")
        masks = most_varied_masks(frame, model, n_relevant, n_distractor)
        if masks is not None:
            r = correlation[(correlation["model"] == model) & (correlation["n_relevant"] == n_relevant)
                            & (correlation["n_distractor"] == n_distractor) & (correlation["masks"] == masks)].iloc[0]
            if np.isnan(r["pearson"]):
                text += f"; at {masks} masks the drop or the benefit is the same for every task, so no correlation"
            else:
                text += (f"; at {masks} masks (mean drop {r['mean_drop']:.3f}) the correlation across tasks is "
                         f"r = {r['pearson']:.2f} [{r['low']:.2f}, {r['high']:.2f}] (Spearman {r['spearman']:.2f})")
        parts.append(text)
    return "; ".join(parts) + "."


def shown(tables: dict) -> dict:
    """Both tables as written."""
    frame = tables["context_benefit"].copy()
    frame["benefit"] = [f"{r['benefit']:.3f} [{r['benefit_low']:.3f}, {r['benefit_high']:.3f}]"
                        for _, r in frame.iterrows()]
    frame["drop"] = ["-" if r["drop"] != r["drop"] else f"{r['drop']:.3f} [{r['drop_low']:.3f}, {r['drop_high']:.3f}]"
                     for _, r in frame.iterrows()]
    return {"Per task": frame.drop(columns=["benefit_low", "benefit_high", "drop_low", "drop_high"]),
            "Correlation across tasks": tables["context_benefit_correlation"]}


ANALYSIS = Analysis(
    name="context_benefit",
    title="Context benefit against mask drop",
    needs=(),
    tables=context_benefit,
    figures=figures,
    paragraph=paragraph,
    shown=shown,
)
