"""Frames -> matplotlib figures: patching heatmaps, the head ranking, ablation effects.

Each function takes a frame from ``circuits.frames`` or ``circuits.heads`` and returns a
``matplotlib.figure.Figure`` (matplotlib is imported inside, so importing this module is cheap).
"""

import numpy as np

RESIDUAL_PANELS = ("resid_pre", "attn_out", "mlp_out")
DIRECTION_TITLES = {"clean_into_corrupt": "clean activations patched into the corrupt run",
                    "corrupt_into_clean": "corrupt activations patched into the clean run"}


def _heatmap(axis, values: np.ndarray, rows: list, columns: list, title: str, ylabel: str, xlabel: str):
    """Draw ``values`` [rows, columns] as a recovery heatmap (0 = corrupt, 1 = clean) with the numbers in the cells."""
    image = axis.imshow(values, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    long = any(len(str(c)) > 3 for c in columns)
    axis.set_xticks(range(len(columns)), columns, rotation=45 if long else 0, ha="right" if long else "center")
    axis.set_yticks(range(len(rows)), rows)
    axis.set_title(title)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    for (r, c), value in np.ndenumerate(values):
        if np.isfinite(value):
            axis.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=7,
                      color="white" if abs(value) > 0.6 else "black")
    return image


def patching_heatmaps(frame, direction: str):
    """Return a figure with one panel per residual site (resid_pre, attn_out, mlp_out): recovery of the
    logit difference per layer (rows) x position group (columns) for ``direction``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    part = frame[(frame["direction"] == direction) & (frame["site"].isin(RESIDUAL_PANELS))]
    groups = list(dict.fromkeys(part["position"]))
    figure, axes = plt.subplots(1, 3, figsize=(4 + 1.1 * len(groups) * 1.6, 4.2), constrained_layout=True)
    for axis, site in zip(axes, RESIDUAL_PANELS):
        cells = part[part["site"] == site].pivot(index="layer", columns="position", values="recovery")[groups]
        labels = [str(layer) if site != "resid_pre" or layer < cells.index.max() else f"{layer} (final)"
                  for layer in cells.index]
        image = _heatmap(axis, cells.to_numpy(), labels, groups, site, "layer", "position group")
    figure.colorbar(image, ax=list(axes), label="recovery of logit(answer) - logit(wrong)", shrink=0.8)
    figure.suptitle(f"Activation patching: {DIRECTION_TITLES.get(direction, direction)}")
    return figure


def head_patching_heatmaps(frame, direction: str):
    """Return a figure with one panel per head group (answer slot, all positions): recovery per layer x head
    when one head's output (hook_z) is patched, for ``direction``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    part = frame[(frame["direction"] == direction) & (frame["site"] == "z")]
    positions = list(dict.fromkeys(part["position"]))
    figure, axes = plt.subplots(1, len(positions), figsize=(4.5 * len(positions), 3.8), constrained_layout=True)
    for axis, position in zip(np.atleast_1d(axes), positions):
        cells = part[part["position"] == position].pivot(index="layer", columns="head", values="recovery")
        image = _heatmap(axis, cells.to_numpy(), [str(l) for l in cells.index], [str(h) for h in cells.columns],
                         f"head output patched at: {position}", "layer", "head")
    figure.colorbar(image, ax=list(np.atleast_1d(axes)), label="recovery of logit(answer) - logit(wrong)", shrink=0.8)
    figure.suptitle(f"Head patching: {DIRECTION_TITLES.get(direction, direction)}")
    return figure


def head_ranking_figure(ranking, top: int | None = None):
    """Return a figure of the head ranking (``heads.head_ranking``): attention mass on the masks per head
    with 95% intervals (the filler control beside it where recorded), and the rank correlation of that
    mass with the loss of p(answer), with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    part = ranking.head(top) if top else ranking
    x = np.arange(len(part))
    figure, (top_axis, bottom_axis) = plt.subplots(2, 1, figsize=(max(6, 0.45 * len(part) + 2), 6), sharex=True,
                                                   constrained_layout=True)
    mass = part["mask_mass"].to_numpy()
    errors = [mass - part["mask_mass_low"].to_numpy(), part["mask_mass_high"].to_numpy() - mass]
    top_axis.bar(x - 0.2, mass, 0.4, yerr=errors, capsize=2, label=f"on the masks after the answer slot ({int(part['masks'].iloc[0])} masks)")
    if np.isfinite(part["filler_mass"]).any():
        top_axis.bar(x + 0.2, part["filler_mass"], 0.4, color="grey", label="on the fillers (filler control)")
    top_axis.set_ylabel("attention mass from the answer slot")
    top_axis.legend()
    rho = part["rho"].to_numpy()
    bottom_axis.errorbar(x, rho, yerr=[rho - part["rho_low"].to_numpy(), part["rho_high"].to_numpy() - rho], fmt="o",
                         capsize=2)
    bottom_axis.axhline(0, color="black", linewidth=0.8)
    bottom_axis.set_ylabel("Spearman rho (mass, loss of p(answer))")
    bottom_axis.set_xticks(x, part["head"], rotation=90)
    bottom_axis.set_xlabel("head (layer.head), by attention mass on the masks")
    figure.suptitle("Heads that attend to the masks, and whether that goes with the loss")
    return figure


def ablation_figure(frame):
    """Return a figure of accuracy (95% intervals) per ablation mode and mask count: no ablation, the chosen
    heads, and the random-head control pooled over draws (a thin line: the range of single draws)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    masks = sorted(set(frame["masks"]))
    modes = [m for m in dict.fromkeys(frame["mode"]) if m != "-"]
    figure, axes = plt.subplots(1, len(masks), figsize=(len(masks) * (1.8 + 1.3 * len(modes)), 4), sharey=True,
                                constrained_layout=True)
    colours = {"none": "black", "chosen": "tab:red", "control": "tab:grey"}
    for axis, m in zip(np.atleast_1d(axes), masks):
        part = frame[frame["masks"] == m]
        none = part[part["setting"] == "none"].iloc[0]
        axis.axhspan(none["ci_low"], none["ci_high"], color="black", alpha=0.12, label="no ablation (95% CI)")
        axis.axhline(none["accuracy"], color="black", linewidth=1)
        for i, mode in enumerate(modes):
            for offset, setting in ((-0.15, "chosen"), (0.15, "control")):
                rows = part[(part["setting"] == setting) & (part["mode"] == mode)]
                if rows.empty:
                    continue
                r = rows.iloc[0]
                interval = [[r["accuracy"] - r["ci_low"]], [r["ci_high"] - r["accuracy"]]]
                axis.errorbar(i + offset, r["accuracy"], yerr=interval,
                              fmt="o", color=colours[setting], capsize=3,
                              label={"chosen": "chosen heads", "control": "random heads, pooled over draws"}[setting]
                              if i == 0 else None)
                if np.isfinite(r["draw_min"]):
                    axis.vlines(i + offset + 0.06, r["draw_min"], r["draw_max"], color=colours[setting], linewidth=1,
                                label="range of single draws" if i == 0 else None)
        axis.set_xticks(range(len(modes)), modes)
        axis.set_xlim(-0.5, len(modes) - 0.5)
        axis.set_xlabel("ablation mode")
        axis.set_title(f"{m} mask" if m == 1 else f"{m} masks")
        axis.set_ylim(-0.02, 1.02)
    np.atleast_1d(axes)[0].set_ylabel("accuracy")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    figure.suptitle("Ablating the heads that attend to the masks against random heads")
    return figure


def save_figure(figure, path) -> None:
    """Write ``figure`` to ``path`` (PNG at 120 dpi) and close it."""
    import matplotlib.pyplot as plt

    figure.savefig(path, dpi=120)
    plt.close(figure)
