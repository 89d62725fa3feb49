"""Before/after comparison: the analyses of several models (a base model and its fine-tuned adapters)
side by side, with each model's change against the first, split into held-in and held-out categories.

Stores are read with ``analyses.load``: a model is the store's model id plus its adapter's folder name
(``record --adapter``), several stores of one model pool their rows, and rows pair across models by
prompt ("seed:task:prompt"), so every change is paired. The first model is the reference ("before").
Categories are split into held-in (those the fine-tuning pairs covered, ``tasks.SFT_CATEGORIES`` by
default) and held-out.

Tables (``tables/NAME.csv``):

- ``accuracy``: per model, category group ("all", "held-in", "held-out"), placement, filler and masks:
  n, accuracy with Wilson 95% bounds, p(answer) and entropy with bootstrap bounds (``analyses.grouped``);
- ``accuracy_change``: each model minus the reference on the same prompts, per group and condition
  (``analyses.stats.paired_difference``);
- ``attribution``: ``analyses.attribution`` (normalised gradient on masks, last 50, all non-mask tokens);
- ``attention_heads``: ``analyses.attention`` per layer x head and condition (mass from the answer
  position and from the context on the tokens after the answer slot), and ``attention_change``: each
  model minus the reference per layer x head at the most masks, paired by prompt;
- patching maps are not compared yet: the circuits module has not landed.
"""

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mdlm_interp.analyses import Skip, attention, attribution, load
from mdlm_interp.analyses.attention import figure_heads, main_condition
from mdlm_interp.analyses.grouped import accuracy_by, clean_types
from mdlm_interp.analyses.plotting import FILLER_STYLE, line_with_band, masks_axis, model_colors, new_figure, save
from mdlm_interp.analyses.report import markdown_table
from mdlm_interp.analyses.stats import INTERVALS, bootstrap_mean, paired_difference
from mdlm_interp.errors import UsageError
from mdlm_interp.tasks import SFT_CATEGORIES
from mdlm_interp.version import __version__

GROUPS = ("all", "held-in", "held-out")
CONDITION = ["placement", "filler", "masks"]


def load_models(paths, held_in=SFT_CATEGORIES):
    """Return the ``analyses.Recordings`` of the stores ``paths`` with a ``group`` column ("held-in" or
    "held-out" by the task's relevant category). ``UsageError`` for a path that is not a store, or when
    the stores hold fewer than two models."""
    recordings = load(paths)
    models = recordings.models()
    if len(models) < 2:
        raise UsageError(f"compare needs stores of at least two models, got {', '.join(models) or 'none'}")
    categories = recordings.rows["task"].str.split("+").str[0]
    recordings.rows["group"] = np.where(categories.isin(list(held_in)), "held-in", "held-out")
    return recordings


def grouped(rows):
    """Return ``rows`` twice: once with ``group`` "all", then as they are (held-in and held-out)."""
    import pandas as pd

    return pd.concat([rows.assign(group="all"), rows], ignore_index=True)


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
    answer position on the masks after the answer slot, at the most masks recorded with attention (random
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


def accuracy_figure(accuracy):
    """Accuracy against masks, one panel per category group, a colour per model; masks solid, filler
    control dashed, Wilson 95% bands. Returns a matplotlib Figure."""
    placement = "random" if (accuracy["placement"] == "random").any() else accuracy["placement"].iloc[0]
    frame = accuracy[accuracy["placement"] == placement]
    colors = model_colors(list(dict.fromkeys(frame["model"])))
    figure, axes = new_figure(1, 3, width=4.3, height=3.5, sharey=True)
    for ax, group in zip(axes[0], GROUPS):
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
    figure.suptitle(f"Accuracy against masks, placement {placement} (dashed: filler control; bands: Wilson 95%)")
    return figure


def change_figure(change):
    """Heatmaps layer x head of the paired change in attention from the answer position to the masks, one
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
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        figure.colorbar(image, ax=ax, shrink=0.8, label="change in mass")
    figure.suptitle(f"Attention from the answer position to the masks after it:\nchange against the reference "
                    f"at {int(change['masks'].iloc[0])} masks (paired by prompt)")
    return figure


def findings(models: list, accuracy, change, heads, heads_change, attributions) -> list[str]:
    """Return the report's findings as sentences with numbers and intervals, whatever they are."""
    lines = []
    plain = accuracy[~accuracy["filler"] & (accuracy["placement"] == accuracy["placement"].iloc[0])]
    most = int(plain["masks"].max())
    for model in models:
        cells = []
        for group in GROUPS:
            for masks in (1, most):
                row = plain[(plain["model"] == model) & (plain["group"] == group) & (plain["masks"] == masks)]
                if len(row):
                    r = row.iloc[0]
                    cells.append(f"{group}, {masks} mask{'s' if masks > 1 else ''}: {r.accuracy:.1%} "
                                 f"[{r.ci_low:.1%}, {r.ci_high:.1%}]")
        filler = accuracy[(accuracy["model"] == model) & accuracy["filler"] & (accuracy["group"] == "all")
                          & (accuracy["masks"] == most)]
        if len(filler):
            r = filler.iloc[0]
            cells.append(f"filler control at {most}: {r.accuracy:.1%} [{r.ci_low:.1%}, {r.ci_high:.1%}]")
        lines.append(f"- {model}: " + "; ".join(cells) + ".")
    for (model, group), part in change[~change["filler"]].groupby(["model", "group"], sort=False):
        row = part[part["masks"] == part["masks"].max()].iloc[0]
        lines.append(f"- {model} against {models[0]}, {group}, {int(row.masks)} masks: {row.change:+.1%} "
                     f"[{row.low:+.1%}, {row.high:+.1%}] over {int(row.n_pairs)} matched prompts.")
    if not heads.empty:
        at = heads[~heads["filler"] & (heads["masks"] == heads["masks"].max())]
        for model in models:
            part = at[at["model"] == model]
            if part.empty:
                continue
            top = part.loc[part["from_answer"].idxmax()]
            text = (f"- {model}: attention from the answer position to the {int(top['masks']) - 1} masks after it, "
                    f"mean over heads {part['from_answer'].mean():.3f}; strongest head L{top['layer']}.H{top['head']} "
                    f"{top['from_answer']:.3f} [{top['from_answer_low']:.3f}, {top['from_answer_high']:.3f}]")
            mine = heads_change[heads_change["model"] == model] if not heads_change.empty else heads_change
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


def write_comparison(paths, out, *, held_in=SFT_CATEGORIES, command_line: str = "") -> Path:
    """Compare the stores ``paths`` (files, or folders searched for .h5 stores) into folder ``out``;
    return the path of report.md.

    Writes tables/*.csv (module docstring), figures/accuracy.png, and figures/attention_heads.png (the
    analyses' heatmaps, a row per model) and figures/attention_change.png when attention was recorded, provenance.json and report.md. Raises ``UsageError`` before writing anything
    for a path that is not a store or fewer than two models.
    """
    recordings = load_models(paths, held_in)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    models = recordings.models()
    accuracy, change = accuracy_table(recordings), change_table(recordings)
    tables = {"accuracy": accuracy, "accuracy_change": change,
              **analysis_tables(recordings, "gradients", attribution)}
    attention_tables = analysis_tables(recordings, "attention", attention)
    heads = attention_tables.get("attention_heads")
    heads_change = attention_change(recordings)
    if heads is not None:
        tables.update(attention_heads=heads, attention_change=heads_change)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    for name, frame in tables.items():
        frame.to_csv(out / "tables" / f"{name}.csv", index=False, float_format="%.6g")
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    stamp = f"{command_line} | mdlm-interp {__version__} | {created}"
    save(accuracy_figure(accuracy), out / "figures" / "accuracy.png", stamp)
    if heads is not None and not heads_change.empty:
        save(change_figure(heads_change), out / "figures" / "attention_change.png", stamp)
    condition = main_condition(attention_tables["attention_summary"]) if heads is not None else None
    if condition is not None:
        save(figure_heads(heads, condition).figure, out / "figures" / "attention_heads.png", stamp)
    provenance = {
        "command_line": command_line, "toolkit_version": __version__, "created": created, "intervals": INTERVALS,
        "held_in": list(held_in), "reference": models[0],
        "stores": [{"path": str(s.path), "model": s.model, "model_id": s.model_id, "weights": s.fingerprint,
                    "seed": s.seed, "rows": s.n_rows, "command_line": s.command_line} for s in recordings.stores],
    }
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    import pandas as pd

    report = out / "report.md"
    lines = findings(models, accuracy, change, pd.DataFrame() if heads is None else heads, heads_change,
                     tables.get("attribution", pd.DataFrame()))
    report.write_text(render(provenance, tables, lines))
    return report


def render(provenance: dict, tables: dict, lines: list[str]) -> str:
    """Return report.md's text."""
    stores = [{"model": s["model"], "store": s["path"], "seed": s["seed"], "rows": s["rows"],
               "weights": s["weights"][:19] + ("+adapter" if "+" in s["weights"] else "")} for s in provenance["stores"]]
    accuracy = tables["accuracy"][["model", "group", *CONDITION, "n", "accuracy", "ci_low", "ci_high"]]
    text = [
        "# mdlm-interp comparison", "",
        f"Made by `{provenance['command_line']}` with mdlm-interp {provenance['toolkit_version']} on "
        f"{provenance['created']}. Intervals: {provenance['intervals']}. The reference is {provenance['reference']}; "
        f"held-in categories: {', '.join(provenance['held_in'])} (the others are held out).", "",
        "## Stores", "", markdown_table(stores), "",
        "## Findings", "", *lines, "",
        "## Accuracy against masks", "", "![accuracy](figures/accuracy.png)", "",
        markdown_table(accuracy.to_dict("records")), "",
        "## Change against the reference on the same prompts", "",
        markdown_table(tables["accuracy_change"].to_dict("records")), "",
        "## Attribution (normalised gradient)", "",
        markdown_table(tables["attribution"].to_dict("records")) if "attribution" in tables
        else "(no store recorded /gradients)", "",
        "## Attention to the masks per layer x head", "",
    ]
    if "attention_heads" in tables:
        heads = tables["attention_heads"]
        heads = heads[~heads["filler"] & (heads["masks"] == heads["masks"].max())]
        columns = ["model", "placement", "masks", "layer", "head", "n", "from_answer", "from_answer_low",
                   "from_answer_high", "from_context"]
        text += ["![attention heads](figures/attention_heads.png)", "",
                 "![attention change](figures/attention_change.png)", "",
                 markdown_table(heads[columns].to_dict("records")), "",
                 markdown_table(tables["attention_change"].to_dict("records")), ""]
    else:
        text += ["(no store recorded /attention)", ""]
    text += ["## Patching maps", "", "Not compared: activation patching (the circuits module) has not landed in "
             "this version; compare will put patching stores side by side once it has.", ""]
    return "\n".join(text)
