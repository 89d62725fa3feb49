"""Before/after comparison: stores of several models (a base model and its fine-tuned adapters) side
by side -> tables with 95% intervals -> figures -> report.md.

A model is a label: the store's model id, plus the adapter's folder name when it was recorded with
one (``record --adapter``), or the caller's own labels. Several stores of one model pool their rows
(e.g. one store with the mask ladder, one with gradients); the first model is the reference
("before"). Rows are paired across models by prompt: same seed, task and prompt index is the same
prompt, so differences are paired. Categories are split into held-in (those the fine-tuning pairs
covered, ``tasks.SFT_CATEGORIES`` by default) and held-out.

Tables (``tables/NAME.csv``): ``accuracy`` (per model, category group, filler, masks: Wilson 95%),
``accuracy_change`` (each model minus the reference on the same prompts, bootstrap 95%),
``attribution`` (normalised gradient on masks / last 50 / all non-mask tokens, bootstrap 95%),
``attention_heads`` (attention mass on the tokens after the answer slot per layer x head at the most
masks, from the answer position and from the context, and its change against the reference).
Analyses read stores only.
"""

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mdlm_interp.errors import UsageError
from mdlm_interp.store import open_store
from mdlm_interp.tasks import SFT_CATEGORIES, get_task
from mdlm_interp.version import __version__

Z95 = 1.959963984540054
RESAMPLES = 2000
INTERVALS = (f"accuracies: Wilson score 95% intervals; means and paired differences: 95% percentile bootstrap "
             f"over prompts ({RESAMPLES} resamples, seed 0)")
GROUPS = ("all", "held-in", "held-out")


@dataclass(frozen=True)
class StoreInfo:
    """One store of the comparison: its path, model label and provenance."""

    path: Path
    label: str
    model_id: str
    adapter: dict | None
    fingerprint: str
    seed: int
    n: int
    groups: tuple
    command_line: str
    n_rows: int


def model_label(settings: dict, model_id: str) -> str:
    """Return a store's model label: the model id's last path component, plus "+ADAPTER" (the adapter
    folder's name) when the store was recorded with one."""
    label = Path(str(model_id).rstrip("/")).name or str(model_id)
    adapter = settings.get("adapter")
    return f"{label}+{Path(adapter['path']).name}" if adapter else label


def store_info(path, label: str | None = None) -> StoreInfo:
    """Return the ``StoreInfo`` of the store at ``path`` (``label`` replaces the derived one)."""
    with open_store(path) as store:
        attrs = store.attrs
        settings = attrs["settings"]
        return StoreInfo(Path(path), label or model_label(settings, attrs["model_id"]), attrs["model_id"],
                         settings.get("adapter"), attrs["weights_fingerprint"], int(attrs["seed"]), int(settings["n"]),
                         tuple(store.groups), attrs["command_line"], store.n_rows)


def load_rows(paths, labels=None, held_in=SFT_CATEGORIES):
    """Return (rows, infos): one pandas row per (example, condition) of every store, with the columns
    store, row_in_store, label, pair ("seed:task:prompt"), category and group ("held-in"/"held-out")
    next to the store's /examples columns; and the ``StoreInfo`` of each store.

    Raises ``UsageError`` for a path that is not a store, labels that do not match the paths, or fewer
    than two models.
    """
    import pandas as pd

    paths = [Path(p) for p in paths]
    if labels is not None and len(labels) != len(paths):
        raise UsageError(f"--labels gives {len(labels)} labels for {len(paths)} stores")
    infos = [store_info(path, None if labels is None else labels[i]) for i, path in enumerate(paths)]
    if len({info.label for info in infos}) < 2:
        raise UsageError("compare needs stores of at least two models (labels: "
                         + ", ".join(sorted({i.label for i in infos})) + ")")
    frames = []
    for index, info in enumerate(infos):
        with open_store(info.path) as store:
            frame = store.examples.copy()
        frame["store"] = index
        frame["row_in_store"] = np.arange(len(frame))
        frame["label"] = info.label
        frame["pair"] = [f"{info.seed}:{task}:{example % info.n}" for task, example in
                         zip(frame["task"], frame["example"])]
        frame["category"] = [get_task(task).category for task in frame["task"]]
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    rows["group"] = np.where(rows["category"].isin(list(held_in)), "held-in", "held-out")
    rows = rows.drop_duplicates(subset=["label", "pair", "placement", "filler", "masks"]).reset_index(drop=True)
    return rows, infos


def wilson(successes, n) -> tuple[float, float]:
    """Return the Wilson score 95% interval (low, high) of ``successes`` out of ``n``."""
    p = successes / n
    z2n = Z95 ** 2 / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = Z95 * np.sqrt(p * (1 - p) / n + z2n / (4 * n)) / (1 + z2n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap(values) -> tuple:
    """Return (mean, low, high) of ``values`` [n, ...] over axis 0 with a 95% percentile bootstrap
    (prompts resampled, seed 0); shapes of one row."""
    values = np.asarray(values, dtype=float)
    draws = np.random.default_rng(0).integers(0, len(values), size=(RESAMPLES, len(values)))
    means = values[draws].mean(1)
    low, high = np.percentile(means, [2.5, 97.5], axis=0)
    return values.mean(0), low, high


def with_groups(rows):
    """Return ``rows`` twice: once with ``group`` "all", then as they are (held-in and held-out)."""
    import pandas as pd

    return pd.concat([rows.assign(group="all"), rows], ignore_index=True)


def accuracy_table(rows):
    """Return accuracy per (label, group, placement, filler, masks): n, accuracy, ci_low, ci_high."""
    import pandas as pd

    out = []
    for (label, group, placement, filler, masks), part in with_groups(rows).groupby(
            ["label", "group", "placement", "filler", "masks"], sort=False):
        hits = int(part["correct"].sum())
        low, high = wilson(hits, len(part))
        out.append({"label": label, "group": group, "placement": placement, "filler": bool(filler),
                    "masks": int(masks), "n": len(part), "accuracy": hits / len(part), "ci_low": low, "ci_high": high})
    return pd.DataFrame(out).sort_values(["label", "group", "placement", "filler", "masks"], kind="stable",
                                         key=lambda c: c.map(label_order(rows)) if c.name == "label" else c)


def label_order(rows) -> dict:
    """Return label -> position in the order the stores were given (the reference first)."""
    return {label: i for i, label in enumerate(dict.fromkeys(rows["label"]))}


def change_table(rows):
    """Return, for every label but the reference and every (group, placement, filler, masks), the
    accuracy change against the reference on the same prompts: n_pairs, reference, accuracy, change,
    low, high (bootstrap over the matched prompts)."""
    import pandas as pd

    labels = list(label_order(rows))
    reference = labels[0]
    keys = ["group", "placement", "filler", "masks"]
    out = []
    grouped = with_groups(rows)
    for key, part in grouped.groupby(keys, sort=False):
        base = part[part["label"] == reference].set_index("pair")["correct"].astype(float)
        for label in labels[1:]:
            other = part[part["label"] == label].set_index("pair")["correct"].astype(float)
            joined = base.to_frame("reference").join(other.rename("accuracy"), how="inner")
            if joined.empty:
                continue
            change, low, high = bootstrap((joined["accuracy"] - joined["reference"]).to_numpy())
            out.append({"label": label, **dict(zip(keys, key)), "n_pairs": len(joined),
                        "reference": joined["reference"].mean(), "accuracy": joined["accuracy"].mean(),
                        "change": float(change), "low": float(low), "high": float(high)})
    return pd.DataFrame(out)


def gather(rows, infos, name: str) -> np.ndarray:
    """Return dataset ``name`` for ``rows`` (from any stores), one row each, in the order of ``rows``."""
    cache = {}
    out = []
    for store, position in zip(rows["store"], rows["row_in_store"]):
        if store not in cache:
            with open_store(infos[store].path) as opened:
                cache[store] = opened.array(name)
        out.append(cache[store][position])
    return np.stack(out)


def attribution_table(rows, infos):
    """Return the attribution table per (label, masks, filler) of the rows with gradients and masks > 1:
    normalised gradient means on the masks, the last 50 and all non-mask tokens, with bootstrap bounds."""
    import pandas as pd

    with_gradients = {i for i, info in enumerate(infos) if "gradients" in info.groups}
    part = rows[rows["store"].isin(with_gradients) & (rows["masks"] > 1)]
    out = []
    for (label, filler, masks), cell in part.groupby(["label", "filler", "masks"], sort=False):
        entry = {"label": label, "filler": bool(filler), "masks": int(masks), "n": len(cell)}
        for short, name in (("mask", "mask_mean"), ("last50", "last50_mean"), ("nonmask", "nonmask_mean")):
            mean, low, high = bootstrap(gather(cell, infos, f"gradients/{name}"))
            entry.update({short: float(mean), f"{short}_low": float(low), f"{short}_high": float(high)})
        out.append(entry)
    return pd.DataFrame(out)


def head_table(rows, infos):
    """Return per label, layer and head the attention mass on the tokens after the answer slot at the
    most masks recorded with attention (no filler): from_answer and from_context with bootstrap bounds,
    and the paired change of from_answer against the reference (delta, delta_low, delta_high)."""
    import pandas as pd

    with_attention = {i for i, info in enumerate(infos) if "attention" in info.groups}
    part = rows[rows["store"].isin(with_attention) & ~rows["filler"]]
    if part.empty:
        return pd.DataFrame()
    masks = int(part["masks"].max())
    part = part[part["masks"] == masks]
    labels = list(label_order(rows))
    masses = {}
    for label in labels:
        cell = part[part["label"] == label]
        if not cell.empty:
            masses[label] = (cell["pair"].to_numpy(), gather(cell, infos, "attention/mask_mass_from_answer"),
                             gather(cell, infos, "attention/mask_mass_from_context"))
    out = []
    reference = masses.get(labels[0])
    for label, (pairs, answer, context) in masses.items():
        stats = [bootstrap(answer), bootstrap(context)]
        delta = None
        if reference is not None and label != labels[0]:
            common, mine, theirs = np.intersect1d(pairs, reference[0], return_indices=True)
            if len(common):
                delta = bootstrap(answer[mine] - reference[1][theirs])
        layers, heads = answer.shape[1:]
        for layer in range(layers):
            for head in range(heads):
                entry = {"label": label, "masks": masks, "layer": layer, "head": head, "n": len(pairs)}
                for name, (mean, low, high) in zip(("from_answer", "from_context"), stats):
                    entry.update({name: mean[layer, head], f"{name}_low": low[layer, head],
                                  f"{name}_high": high[layer, head]})
                if delta is not None:
                    entry.update({"delta": delta[0][layer, head], "delta_low": delta[1][layer, head],
                                  "delta_high": delta[2][layer, head]})
                out.append(entry)
    return pd.DataFrame(out)


def accuracy_figure(accuracy, path: Path) -> None:
    """Save accuracy against masks, one panel per category group, a colour per model; masks solid,
    filler control dashed, 95% bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    placement = accuracy["placement"].iloc[0]
    frame = accuracy[accuracy["placement"] == placement]
    labels = list(dict.fromkeys(frame["label"]))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=90, sharey=True)
    for ax, group in zip(axes, GROUPS):
        for color, label in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], labels):
            cell = frame[(frame["label"] == label) & (frame["group"] == group)]
            for filler, style in ((False, "-"), (True, "--")):
                line = cell[(cell["filler"] == filler) | (cell["masks"] == 1)].sort_values("masks")
                if filler and not cell["filler"].any():
                    continue
                ax.plot(line["masks"], line["accuracy"], style, color=color, marker="o", markersize=3,
                        label=f"{label}, {'filler' if filler else 'masks'}")
                ax.fill_between(line["masks"], line["ci_low"], line["ci_high"], color=color, alpha=0.12, linewidth=0)
        ax.set_title(f"{group} categories", fontsize=10)
        ax.set_xlabel("n masks (answer slot + n - 1 after it)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].set_ylim(-0.02, 1.02)
    axes[-1].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"accuracy against masks, placement {placement} (dashed: filler control; bands: Wilson 95%)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def heads_figure(heads, path: Path) -> None:
    """Save layer x head heatmaps of the attention mass from the answer position on the tokens after the
    answer slot, one per model, and the change against the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(heads["label"]))
    panels = [(label, "from_answer") for label in labels] + [(label, "delta") for label in labels[1:]]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3), dpi=90, squeeze=False)
    layers, n_heads = heads["layer"].max() + 1, heads["head"].max() + 1
    for ax, (label, column) in zip(axes[0], panels):
        grid = heads[heads["label"] == label].pivot(index="layer", columns="head", values=column).to_numpy()
        delta = column == "delta"
        image = ax.imshow(grid, cmap="RdBu_r" if delta else "viridis", vmin=-1 if delta else 0, vmax=1,
                          aspect="auto")
        ax.set_title(f"{label}\n{'change' if delta else 'mass'}", fontsize=8)
        ax.set_xticks(range(n_heads))
        ax.set_yticks(range(layers))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(f"attention from the answer position to the tokens after it, {int(heads['masks'].iloc[0])} masks",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def summary_lines(accuracy, change, heads, attribution) -> list[str]:
    """Return the report's findings: numbers with intervals, whatever they are."""
    lines = []
    plain = accuracy[~accuracy["filler"]]
    most = int(plain["masks"].max())
    for label in dict.fromkeys(accuracy["label"]):
        cells = []
        for group in GROUPS:
            for masks in (1, most):
                row = plain[(plain["label"] == label) & (plain["group"] == group) & (plain["masks"] == masks)]
                if len(row):
                    r = row.iloc[0]
                    cells.append(f"{group} {masks} mask{'s' if masks > 1 else ''} {r.accuracy:.1%} "
                                 f"[{r.ci_low:.1%}, {r.ci_high:.1%}]")
        filler = accuracy[(accuracy["label"] == label) & accuracy["filler"] & (accuracy["group"] == "all")
                          & (accuracy["masks"] == most)]
        if len(filler):
            r = filler.iloc[0]
            cells.append(f"filler at {most}: {r.accuracy:.1%} [{r.ci_low:.1%}, {r.ci_high:.1%}]")
        lines.append(f"- {label}: " + "; ".join(cells) + ".")
    if not change.empty:
        for (label, group), part in change[~change["filler"]].groupby(["label", "group"], sort=False):
            row = part[part["masks"] == part["masks"].max()].iloc[0]
            lines.append(f"- {label} against the reference, {group}, {int(row.masks)} masks: {row.change:+.1%} "
                         f"[{row.low:+.1%}, {row.high:+.1%}] over {int(row.n_pairs)} matched prompts.")
    if not heads.empty:
        for label, part in heads.groupby("label", sort=False):
            top = part.sort_values("from_answer", ascending=False).iloc[0]
            text = (f"- {label}: attention from the answer position to the {int(top.masks) - 1} masks after it, mean "
                    f"over heads {part['from_answer'].mean():.3f}; strongest head L{int(top['layer'])}.H{int(top['head'])} "
                    f"{top.from_answer:.3f} [{top.from_answer_low:.3f}, {top.from_answer_high:.3f}]")
            if "delta" in part and part["delta"].notna().any():
                largest = part.loc[part["delta"].abs().idxmax()]
                text += (f"; largest change L{int(largest['layer'])}.H{int(largest['head'])} {largest.delta:+.3f} "
                         f"[{largest.delta_low:+.3f}, {largest.delta_high:+.3f}]")
            lines.append(text + ".")
    if not attribution.empty:
        for row in attribution[~attribution["filler"]].itertuples():
            lines.append(f"- {row.label}, {row.masks} masks: normalised gradient on masks {row.mask:.3f} "
                         f"[{row.mask_low:.3f}, {row.mask_high:.3f}], last 50 non-mask {row.last50:.3f}, all non-mask "
                         f"{row.nonmask:.3f}.")
    return lines


def markdown(frame, columns=None, rows: int = 60) -> str:
    """Return a markdown table of ``frame`` (the given columns, at most ``rows`` rows, floats to 4 places)."""
    frame = frame if columns is None else frame[columns]
    head = "| " + " | ".join(frame.columns) + " |"
    lines = [head, "|" + "---|" * len(frame.columns)]
    for values in frame.head(rows).itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in values) + " |")
    if len(frame) > rows:
        lines.append(f"\n({len(frame) - rows} more rows in the CSV)")
    return "\n".join(lines)


def write_comparison(paths, out, *, labels=None, held_in=SFT_CATEGORIES, command_line: str = "") -> Path:
    """Compare the stores ``paths`` into folder ``out``; return the path of report.md.

    Writes tables/*.csv (see the module docstring), figures/accuracy.png, figures/attention_heads.png
    (when attention was recorded), provenance.json and report.md. Raises ``UsageError`` before writing
    anything for a path that is not a store or fewer than two models.
    """
    rows, infos = load_rows(paths, labels, held_in)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    (out / "tables").mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    accuracy, change = accuracy_table(rows), change_table(rows)
    attribution, heads = attribution_table(rows, infos), head_table(rows, infos)
    tables = {"accuracy": accuracy, "accuracy_change": change, "attribution": attribution, "attention_heads": heads}
    for name, frame in tables.items():
        frame.to_csv(out / "tables" / f"{name}.csv", index=False, float_format="%.6g")
    accuracy_figure(accuracy, out / "figures" / "accuracy.png")
    if not heads.empty:
        heads_figure(heads, out / "figures" / "attention_heads.png")
    provenance = {
        "command_line": command_line, "toolkit_version": __version__, "intervals": INTERVALS,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "held_in": list(held_in),
        "stores": [{"path": str(i.path), "label": i.label, "model_id": i.model_id, "adapter": i.adapter,
                    "weights_fingerprint": i.fingerprint, "seed": i.seed, "rows": i.n_rows,
                    "command_line": i.command_line} for i in infos],
    }
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    report = out / "report.md"
    report.write_text(render(provenance, tables, summary_lines(accuracy, change, heads, attribution)))
    return report


def render(provenance: dict, tables: dict, findings: list[str]) -> str:
    """Return report.md's text."""
    stores = [f"| {s['label']} | `{s['path']}` | {s['seed']} | {s['rows']} | "
              f"{(s['adapter'] or {}).get('fingerprint', '-')[:19]} |" for s in provenance["stores"]]
    lines = [
        "# mdlm-interp comparison", "",
        f"Made by `{provenance['command_line']}` with mdlm-interp {provenance['toolkit_version']} on "
        f"{provenance['created']}. Intervals: {provenance['intervals']}. Held-in categories: "
        f"{', '.join(provenance['held_in'])}; the others are held out. The first model is the reference.", "",
        "## Stores", "", "| model | store | seed | rows | adapter |", "|---|---|---|---|---|", *stores, "",
        "## Findings", "", *findings, "",
        "## Accuracy against masks", "", "![accuracy](figures/accuracy.png)", "",
        markdown(tables["accuracy"], ["label", "group", "filler", "masks", "n", "accuracy", "ci_low", "ci_high"],
                 rows=200), "",
        "## Change against the reference (same prompts)", "",
        markdown(tables["accuracy_change"], rows=200) if not tables["accuracy_change"].empty else "(no matched prompts)",
        "",
        "## Attribution (normalised gradient)", "",
        markdown(tables["attribution"]) if not tables["attribution"].empty else "(no store recorded /gradients)", "",
        "## Attention-to-mask heads", "",
    ]
    heads = tables["attention_heads"]
    if heads.empty:
        lines += ["(no store recorded /attention)", ""]
    else:
        lines += ["![heads](figures/attention_heads.png)", "",
                  markdown(heads, [c for c in ("label", "layer", "head", "from_answer", "from_answer_low",
                                               "from_answer_high", "from_context", "delta", "delta_low", "delta_high")
                                   if c in heads], rows=100), ""]
    lines += ["## Patching maps", "",
              "Not compared: this toolkit version has no patching stores (activation patching lands with the "
              "circuits module).", ""]
    return "\n".join(lines)
