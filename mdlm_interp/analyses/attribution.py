"""Gradient attribution in the paper's form: the normalised gradient (per-token L2 norm of
d(answer logit)/d(input embedding), divided by its sum over the input) averaged over the mask tokens
(the answer slot and the masks after it), the last 50 non-mask tokens and all non-mask tokens;
mean and sd over prompts, per model and mask count."""

from mdlm_interp.analyses.data import SETTING, Skip
from mdlm_interp.analyses.grouped import clean_types, slug
from mdlm_interp.analyses.plotting import MIN_TREND, error_bars, figure_title, masks_axis, new_figure
from mdlm_interp.analyses.registry import Analysis, FigureOut
from mdlm_interp.analyses.stats import bootstrap_mean

SPANS = {"grad_mask": "mask tokens", "grad_last50": "non-mask (last 50)", "grad_nonmask": "non-mask (all)"}
SPAN_STYLES = {"grad_mask": "-", "grad_last50": "--", "grad_nonmask": ":"}
SPAN_COLORS = {"grad_mask": "#d62728", "grad_last50": "#9467bd", "grad_nonmask": "#7f7f7f"}


def attribution(recordings):
    """Return one row per (model, n_relevant, n_distractor, placement, filler, masks) with n and, for each
    of mask (answer slot + masks or fillers after it), last50 and nonmask: the mean, the sd over prompts
    (``<span>_sd``) and a bootstrap 95% interval of the mean (``<span>_low``, ``<span>_high``).
    Spans that a row lacks (no masks for a causal model) are NaN and left out of that span's numbers."""
    import pandas as pd

    rows = recordings.rows
    if rows.empty:
        raise Skip("no store recorded gradients")
    keys = SETTING + ["placement", "filler", "masks"]
    out = []
    for values, group in rows.groupby(keys):
        record = {**dict(zip(keys, values)), "n": len(group)}
        for column in SPANS:
            span = column.removeprefix("grad_")
            data = group[column].dropna()
            mean, low, high = bootstrap_mean(data.to_numpy())
            record[span] = mean
            record[f"{span}_sd"] = float(data.std(ddof=1)) if len(data) > 1 else float("nan")
            record[f"{span}_low"], record[f"{span}_high"] = low, high
        out.append(record)
    return clean_types(pd.DataFrame(out))


def tables(recordings) -> dict:
    """Return {"attribution"}."""
    return {"attribution": attribution(recordings)}


def paper_form(frame):
    """Return the table as the paper prints it: "mean ± sd" per span, one row per model, setting,
    placement, filler and mask count."""
    out = frame[SETTING + ["placement", "filler", "masks", "n"]].copy()
    for column, title in SPANS.items():
        span = column.removeprefix("grad_")
        out[title] = [("-" if mean != mean else f"{mean:.3g} ± {sd:.2g}")
                      for mean, sd in zip(frame[span], frame[f"{span}_sd"])]
    return out


def figures(tables: dict) -> list:
    """Normalised gradient of the three spans against masks, one panel per model (main setting)."""
    frame = tables["attribution"]
    out = []
    for (n_relevant, n_distractor, placement), setting in frame.groupby(["n_relevant", "n_distractor", "placement"]):
        if setting["masks"].nunique() < 2 and not (setting["masks"] == 0).all():
            continue
        models = list(setting["model"].unique())
        figure, axes = new_figure(1, len(models), width=3.9, height=3.3, sharey=True)
        ladder = sorted(setting.loc[setting["masks"] >= 1, "masks"].unique()) or [1]
        for ax, model in zip(axes[0], models):
            group = setting[setting["model"] == model]
            for filler in (False, True):
                part = group[(group["filler"] == filler) | ((group["masks"] <= 1) & filler)].sort_values("masks")
                if filler and not part["filler"].any():
                    continue
                for column, title in SPANS.items():
                    span = column.removeprefix("grad_")
                    if part[span].isna().all():
                        continue
                    x = part["masks"].clip(lower=1)
                    label = f"{title}" + (" (filler control)" if filler else "")
                    trend = x.nunique() >= MIN_TREND  # fewer x values are points, not a line
                    ax.errorbar(x, part[span], yerr=error_bars(part[span], part[f"{span}_low"], part[f"{span}_high"]),
                                linestyle=SPAN_STYLES[column] if trend else "none",
                                marker="s" if filler else "o", markersize=3.5, capsize=2, label=label,
                                color=SPAN_COLORS[column], alpha=0.45 if filler else 1.0)
            ax.set_yscale("log")
            masks_axis(ax, ladder)
            if (group["masks"] == 0).all():
                ax.set_xlabel("no masks (causal)")
            ax.set_title(model, fontsize=10)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=6.5)
        axes[0, 0].set_ylabel("normalised gradient per token\n(mean, 95% interval)")
        figure.suptitle(figure_title(models, "gradient attribution", n_relevant, n_distractor, placement,
                                     setting["n"]))
        out.append(FigureOut(
            f"attribution_r{n_relevant}_d{n_distractor}_{slug(placement)}", figure,
            f"Mean normalised gradient per token (error bars: bootstrap 95% interval of the mean; the sd over prompts "
            f"is in the table; log scale) on the mask tokens, the "
            f"last 50 non-mask tokens and all non-mask tokens against the number of masks ({n_relevant} relevant + "
            f"{n_distractor} distractor, {placement}); faded: the filler control, whose fillers take the masks' "
            f"place."))
    return out


def paragraph(tables: dict) -> str:
    """The paper's table at the largest mask count per model, in words."""
    frame = tables["attribution"]
    parts = []
    for (model, n_relevant, n_distractor, placement), group in frame[~frame["filler"]].groupby(
            ["model", "n_relevant", "n_distractor", "placement"], sort=False):
        row = group.loc[group["masks"].idxmax()]
        if row["masks"] == 0:
            parts.append(f"{model} ({n_relevant}+{n_distractor}, {placement}, causal): last 50 non-mask "
                         f"{row['last50']:.3g} ± {row['last50_sd']:.2g}, all non-mask {row['nonmask']:.3g} ± "
                         f"{row['nonmask_sd']:.2g}")
            continue
        ratio = row["mask"] / row["nonmask"] if row["nonmask"] else float("nan")
        parts.append(f"{model} ({n_relevant}+{n_distractor}, {placement}, {row['masks']} masks): mask tokens "
                     f"{row['mask']:.3g} ± {row['mask_sd']:.2g}, last 50 non-mask {row['last50']:.3g} ± "
                     f"{row['last50_sd']:.2g}, all non-mask {row['nonmask']:.3g} ± {row['nonmask_sd']:.2g} "
                     f"(a mask token gets {ratio:.1f}x the gradient of an average non-mask token)")
    return "At the most masks recorded: " + "; ".join(parts) + "."


def shown(tables: dict) -> dict:
    """The table in the paper's form (mean ± sd); intervals of the means are in tables/attribution.csv."""
    return {"Normalised gradient, mean ± sd over prompts (95% intervals of the means: tables/attribution.csv)":
            paper_form(tables["attribution"])}


ANALYSIS = Analysis(
    name="attribution",
    title="Gradient attribution: mask tokens against non-mask tokens",
    needs=("gradients",),
    tables=tables,
    figures=figures,
    paragraph=paragraph,
    shown=shown,
)
