"""compare, record stores: accuracy and its paired change per category group, attention change, findings."""

import numpy as np

from mdlm_interp.analyses.data import Skip
from mdlm_interp.analyses.grouped import accuracy_by, clean_types, masks_text
from mdlm_interp.analyses.plotting import FILLER_STYLE, line_with_band, masks_axis, model_colors, new_figure
from mdlm_interp.analyses.stats import bootstrap_mean, paired_difference
from mdlm_interp.compare.pairing import CONDITION, GROUPS, grouped

def accuracy_table(recordings):
    """Return accuracy per (model, group, placement, filler, masks), models in the order given."""
    rows = grouped(recordings.rows[recordings.rows["masks"] >= 1])
    frame = accuracy_by(rows, ["model", "group", *CONDITION])
    order = {model: i for i, model in enumerate(recordings.models())}
    return clean_types(frame.sort_values(["model", "group", *CONDITION], key=lambda c: c.map(order)
                                         if c.name == "model" else c, kind="stable").reset_index(drop=True))


def change_table(recordings):
    """Return, for every model but the reference and every (group, placement, filler, masks), the accuracy
    change against the reference on the same prompts: n_pairs, reference, accuracy, change, low, high."""
    import pandas as pd

    models = recordings.models()
    out = []
    rows = grouped(recordings.rows[recordings.rows["masks"] >= 1])
    for key, part in rows.groupby(["group", *CONDITION], sort=False):
        base = part[part["model"] == models[0]].set_index("pair")["correct"]
        for model in models[1:]:
            d = paired_difference(base, part[part["model"] == model].set_index("pair")["correct"])
            if d["n_pairs"]:
                out.append({"model": model, **dict(zip(["group", *CONDITION], key)), "n_pairs": d["n_pairs"],
                            "reference": d["base"], "accuracy": d["other"], "change": d["difference"],
                            "low": d["low"], "high": d["high"]})
    columns = ["model", "group", *CONDITION, "n_pairs", "reference", "accuracy", "change", "low", "high"]
    return clean_types(pd.DataFrame(out, columns=columns))


def attention_change(recordings):
    """Return per model but the reference, layer and head the paired change of the attention mass from the
    readout position on the masks after the answer slot, at the most masks recorded with attention (random
    placement when there is one, no filler): n_pairs, delta, delta_low, delta_high."""
    import pandas as pd

    subset, _ = recordings.with_groups(("attention",))
    rows = subset.rows[~subset.rows["filler"] & (subset.rows["masks"] > 1)]
    if rows.empty:
        return pd.DataFrame()
    if (rows["placement"] == "random").any():
        rows = rows[rows["placement"] == "random"]
    rows = rows[rows["masks"] == rows["masks"].max()]
    models = recordings.models()
    base = rows[rows["model"] == models[0]]
    out = []
    for model in models[1:]:
        mine = rows[rows["model"] == model]
        pairs = pd.Series(np.arange(len(mine)), index=mine["pair"].to_numpy()).to_frame("mine").join(
            pd.Series(np.arange(len(base)), index=base["pair"].to_numpy()).rename("base"), how="inner")
        if pairs.empty:
            continue
        name = "attention/mask_mass_from_answer"
        delta = (subset.gather(mine, name)[pairs["mine"].to_numpy()].astype(float)
                 - subset.gather(base, name)[pairs["base"].to_numpy()].astype(float))
        mean, low, high = bootstrap_mean(delta)
        for layer, head in np.ndindex(*mean.shape):
            out.append({"model": model, "placement": rows["placement"].iloc[0], "masks": int(rows["masks"].iloc[0]),
                        "layer": layer, "head": head, "n_pairs": len(pairs), "delta": mean[layer, head],
                        "delta_low": low[layer, head], "delta_high": high[layer, head]})
    return clean_types(pd.DataFrame(out))


def analysis_tables(recordings, needs: str, function) -> dict:
    """Return an analysis's tables on the stores that recorded ``needs`` ({} when none did)."""
    subset, _ = recordings.with_groups((needs,))
    if subset.rows.empty:
        return {}
    try:
        result = function(subset)
    except Skip:
        return {}
    return result if isinstance(result, dict) else {function.__name__: result}


def accuracy_figure(accuracy, reference: str):
    """Accuracy against masks, one panel per category group, a colour per model; masks solid, filler
    control dashed, Wilson 95% bands. Returns a matplotlib Figure."""
    placement = "random" if (accuracy["placement"] == "random").any() else accuracy["placement"].iloc[0]
    frame = accuracy[accuracy["placement"] == placement]
    colors = model_colors(list(dict.fromkeys(frame["model"])))
    present = [g for g in GROUPS if (frame["group"] == g).any()]
    figure, axes = new_figure(1, len(present), width=4.3, height=3.5, sharey=True)
    for ax, group in zip(axes[0], present):
        for model, color in colors.items():
            cell = frame[(frame["model"] == model) & (frame["group"] == group)]
            for filler in (False, True):
                line = cell[(cell["filler"] == filler) | (cell["masks"] == 1)].sort_values("masks")
                if filler and not cell["filler"].any():
                    continue
                line_with_band(ax, line["masks"], line["accuracy"], line["ci_low"], line["ci_high"], color,
                               style=FILLER_STYLE if filler else "-", marker="s" if filler else "o",
                               label=f"{model}, {'filler' if filler else 'masks'}")
        masks_axis(ax, frame["masks"].unique())
        ax.set_title(f"{group} categories", fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("accuracy")
    axes[0, -1].legend(fontsize=7, loc="lower left")
    n = int(frame.loc[(frame["model"] == reference) & (frame["group"] == "all"), "n"].max())
    figure.suptitle(f"Accuracy against masks, placement {placement}, reference {reference}, n = {n} per condition\n"
                    "(dashed: filler control; bars or bands: Wilson 95%)")
    return figure


def change_figure(change, reference: str):
    """Heatmaps layer x head of the paired change in attention from the readout position to the masks, one
    per model against the reference. Returns a matplotlib Figure."""
    models = list(dict.fromkeys(change["model"]))
    figure, axes = new_figure(1, len(models), width=3.2, height=2.8)
    spread = max(float(change["delta"].abs().max()), 1e-6)
    for ax, model in zip(axes[0], models):
        grid = change[change["model"] == model].pivot(index="layer", columns="head", values="delta").to_numpy()
        image = ax.imshow(grid, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-spread, vmax=spread)
        for (y, x), value in np.ndenumerate(grid):
            ax.text(x, y, f"{value:+.2f}".replace("-0.00", "0.00").replace("+0.00", "0.00"), ha="center",
                    va="center", fontsize=6)
        ax.set_title(model, fontsize=8)
        ax.set_xticks(range(grid.shape[1]))
        ax.set_yticks(range(grid.shape[0]))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        figure.colorbar(image, ax=ax, shrink=0.8, label="change in mass")
    figure.suptitle(f"Attention from the readout position to the masks after the answer slot:\nchange against "
                    f"{reference} at {int(change['masks'].iloc[0])} masks (paired by prompt)")
    return figure


def findings(models: list, accuracy, change, heads, heads_change, attributions) -> list[str]:
    """Return the record stores' findings as sentences with numbers and intervals, whatever they are."""
    lines = []
    plain = accuracy[~accuracy["filler"] & (accuracy["placement"] == accuracy["placement"].iloc[0])]
    most = int(plain["masks"].max())
    for model in models:
        cells = []
        for group in [g for g in GROUPS if (plain["group"] == g).any()]:
            for masks in (1, most):
                row = plain[(plain["model"] == model) & (plain["group"] == group) & (plain["masks"] == masks)]
                if len(row):
                    r = row.iloc[0]
                    cells.append(f"{group}, {masks_text(masks)}: {r.accuracy:.1%} [{r.ci_low:.1%}, {r.ci_high:.1%}]")
        filler = accuracy[(accuracy["model"] == model) & accuracy["filler"] & (accuracy["group"] == "all")
                          & (accuracy["masks"] == most)]
        if len(filler):
            r = filler.iloc[0]
            cells.append(f"filler control at {most}: {r.accuracy:.1%} [{r.ci_low:.1%}, {r.ci_high:.1%}]")
        if cells:
            lines.append(f"- {model}: " + "; ".join(cells) + ".")
    for (model, group), part in change[~change["filler"]].groupby(["model", "group"], sort=False):
        row = part[part["masks"] == part["masks"].max()].iloc[0]
        lines.append(f"- {model} against {models[0]}, {group}, {int(row.masks)} masks: {row.change:+.1%} "
                     f"[{row.low:+.1%}, {row.high:+.1%}] over {int(row.n_pairs)} matched prompts.")
    if not heads.empty:
        at = heads[~heads["filler"] & (heads["masks"] == heads["masks"].max())]
        for model in models:
            part = at[(at["model"] == model) & at["from_answer"].notna()]
            if part.empty:
                lines.append(f"- {model}: no attention mass from the readout position is a number (NaN in the store).")
                continue
            top = part.loc[part["from_answer"].idxmax()]
            text = (f"- {model}: attention from the readout position to the {int(top['masks']) - 1} masks after it, "
                    f"mean over heads {part['from_answer'].mean():.3f}; strongest head L{top['layer']}.H{top['head']} "
                    f"{top['from_answer']:.3f} [{top['from_answer_low']:.3f}, {top['from_answer_high']:.3f}]")
            mine = (heads_change[(heads_change["model"] == model) & heads_change["delta"].notna()]
                    if not heads_change.empty else heads_change)
            if len(mine):
                big = mine.loc[mine["delta"].abs().idxmax()]
                text += (f"; largest change against {models[0]} L{big['layer']}.H{big['head']} {big['delta']:+.3f} "
                         f"[{big['delta_low']:+.3f}, {big['delta_high']:+.3f}]")
            lines.append(text + ".")
    for row in attributions.itertuples() if not attributions.empty else ():
        if not row.filler and row.masks > 1:
            lines.append(f"- {row.model}, {row.masks} masks: normalised gradient per mask token {row.mask:.4f} "
                         f"[{row.mask_low:.4f}, {row.mask_high:.4f}], per last-50 context token {row.last50:.4f}, "
                         f"per non-mask token {row.nonmask:.4f}.")
    return lines

