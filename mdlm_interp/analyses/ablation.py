"""Head ablation against random heads: ablation stores -> accuracy per mode with intervals, a figure.

Reads ablation stores (``mdlm-interp ablate``; docs/store.md). Per mask count and mode: accuracy
without ablation, with the chosen heads ablated, and with random heads of the same number (pooled
over the control's draws: per prompt, the share of draws that answer correctly). Every accuracy carries
a Wilson interval (the pooled control's over its prompts x draws answers); the change against no
ablation a paired bootstrap over the same prompts.
"""

import numpy as np

from mdlm_interp.analyses.grouped import masks_text, slug
from mdlm_interp.analyses.plotting import error_bars, figure_title, new_figure
from mdlm_interp.analyses.registry import Analysis, FigureOut
from mdlm_interp.analyses.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, resample_weights, wilson_interval
from mdlm_interp.store.identity import read_identity
from mdlm_interp.store.results import open_results

COLOURS = {"none": "black", "chosen": "tab:red", "control": "tab:grey"}
POSITION_TEXT = {"all": "from every query",
                 "readout": "from the readout position only (the answer slot for LLaDA, the position before it "
                            "for Dream)",
                 "masks": "at the masks after the answer slot (experts: removed there)"}
LABELS = {"chosen": "chosen heads", "control": "random heads, pooled over draws"}


def ablation_effects(store, seed: int = BOOTSTRAP_SEED, resamples: int = BOOTSTRAP_RESAMPLES):
    """Return one row per (masks, setting, mode) of an open ablation store.

    setting: "none" (no ablation; mode "-"), "chosen" (the chosen heads), "control" (the random heads,
    pooled over draws). Columns: masks, setting, mode, heads, n, accuracy with ci_low / ci_high
    (Wilson; for the control over its n x draws answers), p_answer,
    delta_accuracy (against "none" on the same prompts) with delta_low / delta_high (95% paired
    bootstrap), for the control draw_min and draw_max (the lowest and highest single-draw accuracy), and
    positions: the queries whose attention to the masks mode "attention" removed ("all", or "readout": only
    the readout position, the answer slot for LLaDA and the position before it for Dream).
    """
    import pandas as pd

    examples = store.examples
    modes = store.attrs["modes"]
    ablated = {name: store.array(f"ablated/{name}") for name in ("correct", "p_answer")}
    control = {name: store.array(f"control/{name}") for name in ("correct", "p_answer")}
    n_draws = store.dims["draws"]
    chosen = ",".join(store.attrs["heads"])
    positions = store.attrs["settings"].get("positions", "all")
    rows = []
    for masks in sorted(set(examples["masks"])):
        selected = np.flatnonzero(examples["masks"].to_numpy() == masks)
        n = len(selected)
        weights = resample_weights(n, resamples, seed)
        base = examples["correct"].to_numpy()[selected].astype(float)

        def row(setting, mode, heads, correct, p_answer, draws=None):
            accuracy = float(correct.mean())
            trials = n if draws is None else n * len(draws)  # the control: every prompt in every draw
            low, high = (float(v) for v in wilson_interval(int(round(correct.sum() * trials / n)), trials))
            delta = weights @ (correct - base)
            rows.append({"masks": int(masks), "setting": setting, "mode": mode, "heads": heads, "n": n,
                         "accuracy": accuracy, "ci_low": low, "ci_high": high, "p_answer": float(np.mean(p_answer)),
                         "delta_accuracy": accuracy - float(base.mean()), "delta_low": float(np.percentile(delta, 2.5)),
                         "delta_high": float(np.percentile(delta, 97.5)),
                         "draw_min": np.nan if draws is None else float(draws.min()),
                         "draw_max": np.nan if draws is None else float(draws.max()), "positions": positions})

        row("none", "-", "", base, examples["p_answer"].to_numpy()[selected])
        for m, mode in enumerate(modes):
            row("chosen", mode, chosen, ablated["correct"][selected, m].astype(float), ablated["p_answer"][selected, m])
            if n_draws:
                correct = control["correct"][selected, :, m].astype(float)
                row("control", mode, f"{n_draws} random draws", correct.mean(1), control["p_answer"][selected, :, m],
                    draws=correct.mean(0))
    return pd.DataFrame(rows)


def ablation(paths) -> dict:
    """Return {"ablation": ``ablation_effects`` of every ablation store at ``paths``, with model and heads_chosen
    (the head selection, e.g. "top:1")}."""
    import pandas as pd

    frames = []
    for path in paths:
        with open_results(path, "ablation") as store:
            frame = ablation_effects(store)
            frame.insert(0, "model", read_identity(store.attrs).label)
            frame.insert(1, "selection", store.attrs["head_selection"])
            frames.append(frame)
    return {"ablation": pd.concat(frames, ignore_index=True)}


def ablation_figure(frame, model: str = "", selection: str = "") -> FigureOut:
    """Return accuracy (95% intervals) per ablation mode, one panel per mask count, for one store's ``frame``
    (``ablation_effects``): no ablation (band), the chosen heads, and the random heads pooled over draws
    (a thin line: the range of single draws); ``model`` and ``selection`` label it, the title says from which
    queries mode "attention" removed the attention to the masks (``frame``'s positions)."""
    title = f" ({selection})" if selection else ""
    positions = frame["positions"].iloc[0] if "positions" in frame else "all"
    masks = sorted(set(frame["masks"]))
    modes = [m for m in dict.fromkeys(frame["mode"]) if m != "-"]
    figure, axes = new_figure(1, len(masks), width=1.8 + 1.3 * len(modes), height=3.8, sharey=True)
    for ax, m in zip(axes[0], masks):
        part = frame[frame["masks"] == m]
        none = part[part["setting"] == "none"].iloc[0]
        ax.axhspan(none["ci_low"], none["ci_high"], color=COLOURS["none"], alpha=0.12, label="no ablation (95% CI)")
        ax.axhline(none["accuracy"], color=COLOURS["none"], linewidth=1)
        for i, mode in enumerate(modes):
            for offset, setting in ((-0.15, "chosen"), (0.15, "control")):
                rows = part[(part["setting"] == setting) & (part["mode"] == mode)]
                if rows.empty:
                    continue
                r = rows.iloc[0]
                ax.errorbar(i + offset, r["accuracy"], yerr=error_bars(r["accuracy"], r["ci_low"], r["ci_high"]),
                            fmt="o", color=COLOURS[setting], capsize=3, label=LABELS[setting] if i == 0 else None)
                if np.isfinite(r["draw_min"]):
                    ax.vlines(i + offset + 0.06, r["draw_min"], r["draw_max"], color=COLOURS[setting], linewidth=1,
                              label="range of single draws" if i == 0 else None)
        ax.set_xticks(range(len(modes)), modes)
        ax.set_xlim(-0.5, len(modes) - 0.5)
        ax.set_xlabel("ablation mode")
        ax.set_title(masks_text(m))
        ax.set_ylim(-0.02, 1.02)
    axes[0, 0].set_ylabel("accuracy")
    axes[0, 0].legend(fontsize=7)
    heads = part["heads"][part["setting"] == "chosen"].iloc[0] if (part["setting"] == "chosen").any() else ""
    where = f"'attention' removes attention to the masks {POSITION_TEXT[positions]}"
    figure.suptitle(figure_title([model] if model else [], f"ablating heads {heads}{title} against random heads",
                                 n=frame["n"], per="mask count") + f"\n({where})", fontsize=10)
    caption = (f"Accuracy with heads {heads} ablated (red) and with as many random heads (grey, pooled over draws; "
               f"thin line: the range of single draws), per ablation mode: 'attention' removes attention to the masks "
               f"after the answer slot {POSITION_TEXT[positions]} (renormalised), 'zero' and 'mean' replace the "
               f"head's output; the band is accuracy without ablation. 95% intervals.")
    return FigureOut(f"ablation_{slug(model)}_{slug(selection)}" if model else "ablation", figure, caption)


def figures(tables: dict) -> list:
    """One figure per ablation store (model and head selection)."""
    return [ablation_figure(group, model, selection)
            for (model, selection), group in tables["ablation"].groupby(["model", "selection"], sort=False)]


def paragraph(tables: dict) -> str:
    """Per store and mode at the largest mask count: accuracy without, with the chosen heads, with random heads."""
    parts = []
    for (model, selection), frame in tables["ablation"].groupby(["model", "selection"], sort=False):
        masks = frame["masks"].max()
        at = frame[frame["masks"] == masks]
        none = at[at["setting"] == "none"].iloc[0]
        text = (f"{model}, heads {at['heads'][at['setting'] == 'chosen'].iloc[0]} ({selection}), {masks_text(masks)}, "
                f"{none['n']} prompts: accuracy {_ci(none)} without ablation")
        for mode in [m for m in dict.fromkeys(at["mode"]) if m != "-"]:
            chosen = at[(at["setting"] == "chosen") & (at["mode"] == mode)].iloc[0]
            text += f"; {mode}: {_ci(chosen)} with them ablated"
            control = at[(at["setting"] == "control") & (at["mode"] == mode)]
            if len(control):
                text += f" against {_ci(control.iloc[0])} with random heads"
        parts.append(text)
    return "; ".join(parts) + "."


def _ci(row) -> str:
    return f"{row['accuracy']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


ANALYSIS = Analysis(
    name="ablation",
    title="Ablating heads against random heads",
    needs=(),
    tables=ablation,
    figures=figures,
    paragraph=paragraph,
    store_kind="ablation",
)
