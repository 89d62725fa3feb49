"""Inverse scaling with masks: accuracy, p(answer) and entropy against the number of masks, with the
filler control beside it, pooled and per task; paired drops against 1 mask and filler-vs-mask
differences, matched by prompt."""

import numpy as np

from mdlm_interp.analyses.data import PAIR, SETTING, Skip
from mdlm_interp.analyses.grouped import accuracy_by, ci, clean_types, format_rows, slug, with_pooled_task
from mdlm_interp.analyses.plotting import (FILLER_STYLE, figure_title, line_with_band, masks_axis, model_colors,
                                          new_figure)
from mdlm_interp.analyses.registry import Analysis, FigureOut
from mdlm_interp.analyses.stats import paired_difference

KEYS = SETTING + ["task", "placement", "filler", "masks"]


def inverse_scaling(recordings):
    """Return the inverse-scaling frame: one row per (model, n_relevant, n_distractor, task, placement,
    filler, masks) with n, accuracy, ci_low, ci_high (Wilson 95%) and p_answer / entropy means with
    bootstrap bounds; task "all" pools the tasks. Causal models appear with masks 0."""
    rows = recordings.rows
    if rows.empty:
        raise Skip("the stores hold no rows")
    return clean_types(accuracy_by(with_pooled_task(rows), KEYS))


def mask_drop(recordings):
    """Return the paired drop in accuracy from 1 mask to each larger count (masks or filler control),
    per model, setting, task (and "all") and placement, over the prompts recorded under both.

    Columns: KEYS, n_pairs, accuracy_at_1, accuracy, drop (accuracy_at_1 - accuracy), drop_low, drop_high
    (bootstrap over matched prompts)."""
    import pandas as pd

    out = []
    rows = with_pooled_task(recordings.rows)
    for keys, group in rows[~rows["causal"]].groupby(SETTING + ["task", "placement"]):
        base = group[(group["masks"] == 1) & ~group["filler"]]
        if base.empty:
            continue
        base = base.set_index(PAIR)["correct"]
        for (filler, masks), condition in group[group["masks"] > 1].groupby(["filler", "masks"]):
            d = paired_difference(base, condition.set_index(PAIR)["correct"])
            if d["n_pairs"] == 0:
                continue
            out.append({**dict(zip(SETTING + ["task", "placement"], keys)), "filler": filler, "masks": masks,
                        "n_pairs": d["n_pairs"], "accuracy_at_1": d["base"], "accuracy": d["other"],
                        "drop": 0.0 - d["difference"], "drop_low": 0.0 - d["high"], "drop_high": 0.0 - d["low"]})
    columns = KEYS + ["n_pairs", "accuracy_at_1", "accuracy", "drop", "drop_low", "drop_high"]
    return clean_types(pd.DataFrame(out, columns=columns))


def filler_control(recordings):
    """Return, per model, setting, placement and mask count above 1, accuracy with masks against the
    filler control on the same prompts: n_pairs, accuracy_masks, accuracy_filler, difference (filler -
    masks) with bootstrap bounds low / high. Pooled over tasks."""
    import pandas as pd

    out = []
    rows = recordings.rows
    rows = rows[(rows["masks"] > 1)]
    for keys, group in rows.groupby(SETTING + ["placement", "masks"]):
        masks, filler = group[~group["filler"]], group[group["filler"]]
        if masks.empty or filler.empty:
            continue
        d = paired_difference(masks.set_index(PAIR)["correct"], filler.set_index(PAIR)["correct"])
        if d["n_pairs"] == 0:
            continue
        out.append({**dict(zip(SETTING + ["placement", "masks"], keys)), "n_pairs": d["n_pairs"],
                    "accuracy_masks": d["base"], "accuracy_filler": d["other"], "difference": d["difference"],
                    "low": d["low"], "high": d["high"]})
    columns = SETTING + ["placement", "masks", "n_pairs", "accuracy_masks", "accuracy_filler", "difference",
                         "low", "high"]
    return clean_types(pd.DataFrame(out, columns=columns))


def tables(recordings) -> dict:
    """Return {"inverse_scaling", "mask_drop", "filler_control"} frames."""
    return {"inverse_scaling": inverse_scaling(recordings), "mask_drop": mask_drop(recordings),
            "filler_control": filler_control(recordings)}


MIN_COUNTS = 2  # mask counts a figure against masks needs


def ladders(frame) -> list[tuple]:
    """Return the (n_relevant, n_distractor, placement) combinations worth a figure: those with at least
    ``MIN_COUNTS`` mask counts (one count is no axis; two are drawn as points with intervals, lines from
    ``plotting.MIN_TREND``); main one first (random placement, most mask counts, most relevant examples)."""
    pooled = frame[(frame["task"] == "all") & (frame["masks"] >= 1)]
    counts = pooled.groupby(["n_relevant", "n_distractor", "placement"])["masks"].nunique()
    found = [key for key, count in counts.items() if count >= MIN_COUNTS]
    return sorted(found, key=lambda k: (k[2] != "random", -counts[k], -k[0], k[1], k[2]))


def figure_ladder(frame, n_relevant: int, n_distractor: int, placement: str) -> FigureOut:
    """Accuracy, p(answer) and entropy against masks for one setting and placement, one colour per model."""
    pooled = frame[(frame["task"] == "all") & (frame["n_relevant"] == n_relevant)
                   & (frame["n_distractor"] == n_distractor) & (frame["placement"] == placement)]
    colors = model_colors(pooled["model"].unique())
    figure, axes = new_figure(1, 3, width=4.3, height=3.4)
    panels = [("accuracy", "ci_low", "ci_high", "accuracy"), ("p_answer", "p_answer_low", "p_answer_high",
                                                             "p(answer)"),
              ("entropy", "entropy_low", "entropy_high", "entropy of the prediction (nats)")]
    ladder = sorted(pooled.loc[pooled["masks"] >= 1, "masks"].unique())
    for ax, (column, low, high, label) in zip(axes[0], panels):
        for model, group in pooled.groupby("model", sort=False):
            color = colors[model]
            if (group["masks"] == 0).all():  # causal twin: no masks, a reference line
                row = group.iloc[0]
                ax.axhline(row[column], color=color, linestyle=":", label=f"{model} (causal, no masks)")
                ax.axhspan(row[low], row[high], color=color, alpha=0.1, linewidth=0)
                continue
            plain = group[~group["filler"]].sort_values("masks")
            line_with_band(ax, plain["masks"], plain[column], plain[low], plain[high], color, label=f"{model}, masks")
            filler = group[group["filler"] | (group["masks"] == 1)].sort_values("masks")
            if filler["filler"].any():
                line_with_band(ax, filler["masks"], filler[column], filler[low], filler[high], color,
                               style=FILLER_STYLE, label=f"{model}, filler control", marker="s")
        masks_axis(ax, ladder)
        ax.set_ylabel(label)
        if column != "entropy":
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="best")
    n = int(pooled.loc[pooled["masks"] >= 1, "n"].max()) if (pooled["masks"] >= 1).any() else int(pooled["n"].max())
    figure.suptitle(figure_title(colors, "", n_relevant, n_distractor, placement, n))
    name = f"inverse_scaling_r{n_relevant}_d{n_distractor}_{slug(placement)}"
    caption = (f"Accuracy, p(answer) and entropy at the answer slot against the number of masks with "
               f"{n_relevant} relevant + {n_distractor} distractor examples, placement {placement}: solid lines with "
               f"masks, dashed lines with the filler control (the masks after the answer slot replaced by a "
               f"neutral token), dotted lines the causal twins, which take no masks; bands are 95% intervals.")
    return FigureOut(name, figure, caption)


def figure_tasks(frame, n_relevant: int, n_distractor: int, placement: str) -> FigureOut:
    """Accuracy against masks per task (one panel per task) for one setting and placement."""
    rows = frame[(frame["task"] != "all") & (frame["n_relevant"] == n_relevant)
                 & (frame["n_distractor"] == n_distractor) & (frame["placement"] == placement) & (frame["masks"] >= 1)]
    tasks = sorted(rows["task"].unique())
    columns = 4
    figure, axes = new_figure(int(np.ceil(len(tasks) / columns)), columns, width=3.0, height=2.3,
                              sharex=True, sharey=True)
    colors = model_colors(rows["model"].unique())
    ladder = sorted(rows["masks"].unique())
    for ax, task in zip(axes.flat, tasks):
        for model, group in rows[rows["task"] == task].groupby("model", sort=False):
            plain = group[~group["filler"]].sort_values("masks")
            line_with_band(ax, plain["masks"], plain["accuracy"], plain["ci_low"], plain["ci_high"], colors[model],
                           label=f"{model}, masks")
            filler = group[group["filler"] | (group["masks"] == 1)].sort_values("masks")
            if filler["filler"].any():
                line_with_band(ax, filler["masks"], filler["accuracy"], filler["ci_low"], filler["ci_high"],
                               colors[model], style=FILLER_STYLE, label=f"{model}, filler control", marker="s")
        ax.set_title(task, fontsize=9)
        masks_axis(ax, ladder)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(tasks):]:
        ax.set_visible(False)
    for ax in axes.flat[:len(tasks) - columns]:
        ax.set_xlabel("")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy")
    axes.flat[0].legend(fontsize=6)
    figure.suptitle(figure_title(colors, "accuracy per task", n_relevant, n_distractor, placement,
                                 int(rows["n"].max()), per="task and condition"))
    name = f"inverse_scaling_tasks_r{n_relevant}_d{n_distractor}_{slug(placement)}"
    caption = (f"Accuracy against the number of masks for each task separately ({n_relevant} relevant + "
               f"{n_distractor} distractor examples, placement {placement}); dashed: filler control; bands are "
               f"Wilson 95% intervals.")
    return FigureOut(name, figure, caption)


def figures(tables: dict) -> list:
    """One ladder figure per setting and placement with at least ``MIN_COUNTS`` mask counts (``ladders``);
    per-task panels for the main one."""
    frame = tables["inverse_scaling"]
    found = ladders(frame)
    out = [figure_ladder(frame, *key) for key in found]
    if found:
        out.append(figure_tasks(frame, *found[0]))
    return out


def paragraph(tables: dict) -> str:
    """Accuracy at 1 mask and at the most masks per model in each ladder, the paired drop and the filler control."""
    frame, drop, filler = tables["inverse_scaling"], tables["mask_drop"], tables["filler_control"]
    found = ladders(frame)
    if not found:
        pooled = frame[frame["task"] == "all"]
        return ("No setting has more than one mask count with the random placement (or 3 with another), so "
                f"there is no curve to show; the table lists every condition ({len(pooled)} pooled rows).")
    sentences = []
    for n_relevant, n_distractor, placement in found:
        pooled = frame[(frame["task"] == "all") & (frame["n_relevant"] == n_relevant)
                       & (frame["n_distractor"] == n_distractor) & (frame["placement"] == placement)]
        parts = []
        for model, group in pooled.groupby("model", sort=False):
            if (group["masks"] == 0).all():
                row = group.iloc[0]
                parts.append(f"{model} (causal, no masks) {ci(row, 'accuracy')}")
                continue
            top = int(group["masks"].max())
            first = group[(group["masks"] == 1) & ~group["filler"]]
            last = group[(group["masks"] == top) & ~group["filler"]]
            text = f"{model} {ci(first.iloc[0], 'accuracy') if len(first) else 'n/a'} at 1 mask"
            text += f" and {ci(last.iloc[0], 'accuracy')} at {top}"
            paired = drop[(drop["model"] == model) & (drop["task"] == "all") & (drop["n_relevant"] == n_relevant)
                          & (drop["n_distractor"] == n_distractor) & (drop["placement"] == placement)
                          & (drop["masks"] == top) & ~drop["filler"]]
            if len(paired):
                p = paired.iloc[0]
                text += (f" (paired drop {p['drop']:.3f} [{p['drop_low']:.3f}, {p['drop_high']:.3f}], "
                         f"{p['n_pairs']} prompts)")
            control = filler[(filler["model"] == model) & (filler["n_relevant"] == n_relevant)
                             & (filler["n_distractor"] == n_distractor) & (filler["placement"] == placement)
                             & (filler["masks"] == top)]
            if len(control):
                c = control.iloc[0]
                text += f"; with the filler control {c['accuracy_filler']:.3f} at {top}"
            parts.append(text)
        sentences.append(f"With {n_relevant} relevant + {n_distractor} distractor examples ({placement}): "
                         + "; ".join(parts) + ".")
    return " ".join(sentences)


def shown(tables: dict) -> dict:
    """The pooled rows (task "all"), the paired drops and the filler control, as report tables."""
    frame = tables["inverse_scaling"]
    pooled = frame[frame["task"] == "all"].drop(columns="task")
    drop = tables["mask_drop"]
    return {
        "Pooled over tasks (per task: tables/inverse_scaling.csv)": format_rows(pooled, ["accuracy", "p_answer",
                                                                                        "entropy"]),
        "Paired drop from 1 mask, pooled over tasks (per task: tables/mask_drop.csv)":
            drop[drop["task"] == "all"].drop(columns="task").pipe(_drop_text),
        "Filler control against masks on the same prompts": tables["filler_control"].pipe(_difference_text),
    }


def _drop_text(frame):
    frame = frame.copy()
    frame["drop"] = [f"{r['drop']:.3f} [{r['drop_low']:.3f}, {r['drop_high']:.3f}]" for _, r in frame.iterrows()]
    return frame.drop(columns=["drop_low", "drop_high"])


def _difference_text(frame):
    frame = frame.copy()
    frame["difference"] = [f"{r['difference']:.3f} [{r['low']:.3f}, {r['high']:.3f}]" for _, r in frame.iterrows()]
    return frame.drop(columns=["low", "high"])


ANALYSIS = Analysis(
    name="inverse_scaling",
    title="Inverse scaling with masks, and the filler control",
    needs=(),
    tables=tables,
    figures=figures,
    paragraph=paragraph,
    shown=shown,
)
