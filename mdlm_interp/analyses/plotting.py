"""Figure conventions shared by the analyses: one colour per model, interval bands, a masks axis.

matplotlib is imported inside the functions (``mdlm-interp --help`` stays fast) and figures are
``matplotlib.figure.Figure`` objects, never pyplot state, so drawing is safe anywhere.
"""

FAMILY_COLORS = {"llada": "#1f77b4", "dream": "#ff7f0e", "llama": "#2ca02c", "qwen": "#d62728"}
OTHER_COLORS = ["#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
FILLER_STYLE = "--"
MASK_STYLE = "-"


def new_figure(nrows: int = 1, ncols: int = 1, width: float = 4.2, height: float = 3.2, **kwargs):
    """Return (Figure, axes as a 2-D array [nrows, ncols]) with panels of ``width`` x ``height`` inches
    (at least 6.5 inches wide in all, so that titles fit)."""
    import numpy as np
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(width * ncols, 6.5), height * nrows), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False, **kwargs)
    return figure, np.asarray(axes)


def model_colors(models) -> dict:
    """Return {model: colour}: LLaDA blue, Dream orange, Llama green, Qwen red (by name), others in order."""
    colors, spare = {}, iter(OTHER_COLORS * 4)
    for model in models:
        lowered = model.lower()
        match = next((c for family, c in FAMILY_COLORS.items() if family in lowered), None)
        colors[model] = match if match and match not in colors.values() else next(spare)
    return colors


MIN_TREND = 3  # x values a line (a trend) needs; fewer are drawn as points with interval bars


def line_with_band(ax, x, y, low, high, color, style=MASK_STYLE, label=None, marker="o"):
    """Draw y against x with a translucent 95% band between low and high; with fewer than ``MIN_TREND``
    x values, points with interval bars instead (two values are no trend). Draws nothing for no values."""
    import numpy as np

    x = np.asarray(x, dtype=float)
    if len(x) == 0:
        return
    if len(np.unique(x)) < MIN_TREND:
        ax.plot(x, y, linestyle="none", marker=marker, markersize=3.5, color=color, label=label)
        ax.errorbar(x, y, yerr=error_bars(y, low, high), fmt="none", ecolor=color, capsize=0, elinewidth=1)
        return
    ax.plot(x, y, linestyle=style, marker=marker, markersize=3.5, color=color, label=label)
    ax.fill_between(x, low, high, color=color, alpha=0.15, linewidth=0)


def error_bars(y, low, high):
    """Return matplotlib's ``yerr`` (or ``xerr``) for values ``y`` [n] with bounds ``low``, ``high`` [n]: an
    array [2, n] of distances below and above, never negative (a bound that rounding put beyond its
    estimate, or a missing one, draws no bar)."""
    import numpy as np

    y, low, high = (np.asarray(v, dtype=float).reshape(-1) for v in (y, low, high))
    return np.nan_to_num(np.clip(np.stack([y - low, high - y]), 0, None), nan=0.0)


def masks_axis(ax, masks) -> None:
    """Put the number of masks on a linear x axis, ticks at the recorded counts that do not crowd each other."""
    from matplotlib.ticker import FixedLocator

    counts = sorted({int(m) for m in masks if m >= 1})
    spacing = (counts[-1] - counts[0]) / 12 if counts else 0
    ticks = []
    for count in counts:
        if not ticks or count - ticks[-1] >= spacing or count == counts[-1]:
            if ticks and count == counts[-1] and count - ticks[-1] < spacing and len(ticks) > 1:
                ticks.pop()
            ticks.append(count)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.set_xlabel("masks (answer slot + masks after it)")


def figure_title(models, what: str = "", n_relevant=None, n_distractor=None, placement=None, n=None,
                 per: str = "condition") -> str:
    """Return a figure's title naming its models, what it shows, its condition and n, e.g.
    "LLaDA, Dream: accuracy per task, 2 relevant + 3 distractor examples, placement random, n = 48 per
    condition". ``n``: a count or the counts of the drawn conditions (several distinct ones read "n = 8 to
    48"); parts given as None are left out."""
    import numpy as np

    parts = [what] if what else []
    if n_relevant is not None:
        parts.append(f"{n_relevant} relevant + {n_distractor} distractor examples")
    if placement is not None:
        parts.append(f"placement {placement}")
    if n is not None:
        counts = sorted({int(c) for c in np.ravel(n) if np.isfinite(c)})
        if counts:
            spread = str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
            parts.append(f"n = {spread} per {per}")
    names = ", ".join(map(str, dict.fromkeys(models)))
    return f"{names}: {', '.join(parts)}" if names else ", ".join(parts)


def integer_head_axes(ax, n_layers: int | None = None, n_heads: int | None = None) -> None:
    """Put integer ticks (layers on y, heads on x, every one for up to 16, else matplotlib's integer choice)
    on a layer x head heatmap's axes; ``None`` leaves that axis alone."""
    from matplotlib.ticker import MaxNLocator

    for count, axis in ((n_heads, ax.xaxis), (n_layers, ax.yaxis)):
        if count is None:
            continue
        if count <= 16:
            axis.set_ticks(range(count))
        else:
            axis.set_major_locator(MaxNLocator(integer=True))


def stamp(command_line: str, created: str | None = None) -> str:
    """Return the provenance a PNG carries: "COMMAND | mdlm-interp VERSION | CREATED" (``created``: ISO 8601
    UTC, default now). ``command_line`` is the command that draws the figure, not the one that made its data."""
    from datetime import datetime, timezone

    from mdlm_interp.version import __version__

    created = created or datetime.now(timezone.utc).isoformat(timespec="seconds")
    return f"{command_line} | mdlm-interp {__version__} | {created}"


def save(figure, path, provenance: str) -> None:
    """Write ``figure`` as PNG (110 dpi) with ``provenance`` (``stamp``) in its metadata."""
    figure.savefig(path, dpi=110, metadata={"Software": "mdlm-interp", "Description": provenance})
