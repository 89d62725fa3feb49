"""Routing at the masks (mixture-of-experts models): which experts the answer slot, the masks after it and the
context are sent to, per layer, and how the answer slot's routing changes from the fewest masks (1) to more.

Reads the routing group of record stores (``hooks.routing``). The answer slot's routing is a distribution
over the experts (its top-k weights, normalised); the masks' and the context's are each expert's share
of their top-k choices. Shifts are paired by prompt: the Jensen-Shannon divergence (bits, 0..1) between
the answer slot's routing at the fewest masks and at n masks, and the overlap of its chosen experts
(the share of the experts chosen at the fewest masks still chosen at n).
"""

import numpy as np

from mdlm_interp.analyses.data import PAIR, SETTING, Skip
from mdlm_interp.analyses.grouped import clean_types, slug
from mdlm_interp.analyses.plotting import figure_title, line_with_band, model_colors, new_figure
from mdlm_interp.analyses.registry import Analysis, FigureOut
from mdlm_interp.analyses.stats import bootstrap_mean

DATASETS = {"answer_weight": "routing/answer_weights", "mask_share": "routing/mask_share",
            "context_share": "routing/context_share"}
KEYS = SETTING + ["placement", "masks"]


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Return the Jensen-Shannon divergence in bits (0..1) between distributions ``p`` and ``q`` [..., expert]
    along the last axis (NaN where either is NaN)."""
    m = (p + q) / 2

    def kl(a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(a > 0, a * np.log2(a / np.where(b > 0, b, 1)), 0.0).sum(-1)

    out = (kl(p, m) + kl(q, m)) / 2
    return np.where(np.isnan(p).any(-1) | np.isnan(q).any(-1), np.nan, out)


def chosen_overlap(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Return the share of the experts with weight in ``p`` [..., expert] that also have weight in ``q``
    (NaN where either is NaN)."""
    chosen_p, chosen_q = p > 0, q > 0
    out = (chosen_p & chosen_q).sum(-1) / np.maximum(chosen_p.sum(-1), 1)
    return np.where(np.isnan(p).any(-1) | np.isnan(q).any(-1), np.nan, out)


def positions(rows):
    """Return a Series: pairing key -> position of the row within ``rows`` (rows of one condition)."""
    import pandas as pd

    return pd.Series(np.arange(len(rows)), index=rows[PAIR].to_numpy())


def routing_tables(recordings) -> dict:
    """Return {"routing_experts", "routing_shift"} (mask conditions, filler controls left out).

    routing_experts: one row per condition (KEYS), layer and expert of the MoE layers: n, and for
    answer_weight (the answer slot's routing weight), mask_share and context_share (the expert's share of
    the masks' and the context's choices) the mean with bootstrap bounds ``<name>_low`` / ``<name>_high``.
    routing_shift: one row per condition with more masks than the setting's fewest and per MoE layer:
    n_pairs (prompts recorded under both), base_masks, js (the answer slot's routing divergence from
    base_masks, bits), overlap (its chosen experts kept) and mask_vs_context (total variation between
    the masks' and the context's expert shares at this count), each with bootstrap bounds."""
    import pandas as pd

    rows = recordings.rows
    rows = rows[(rows["masks"] >= 1) & ~rows["filler"]]
    if rows.empty:
        raise Skip("no store with routing has mask conditions")
    experts, shifts = [], []
    for keys, group in rows.groupby(SETTING + ["placement"]):
        arrays = {masks: {name: recordings.gather(part, path).astype(float) for name, path in DATASETS.items()}
                  for masks, part in group.groupby("masks")}
        first = next(iter(arrays.values()))["answer_weight"]
        layers = [layer for layer in range(first.shape[1]) if not np.isnan(first[:, layer]).all()]
        base_masks = min(arrays)
        there = positions(group[group["masks"] == base_masks])
        for masks, part in group.groupby("masks"):
            key = dict(zip(SETTING + ["placement"], keys), masks=masks)
            values = arrays[masks]
            for layer in layers:
                stats = {name: bootstrap_mean(values[name][:, layer]) for name in DATASETS}
                for expert in range(values["answer_weight"].shape[2]):
                    record = {**key, "layer": layer, "expert": expert, "n": len(part)}
                    for name, (mean, low, high) in stats.items():
                        record[name], record[f"{name}_low"], record[f"{name}_high"] = (
                            float(np.asarray(v)[expert]) for v in (mean, low, high))
                    experts.append(record)
            if masks == base_masks:
                continue
            matched = positions(part).to_frame("here").join(there.rename("there"), how="inner")
            mine, theirs = matched["here"].to_numpy(), matched["there"].to_numpy()
            for layer in layers:
                answer = values["answer_weight"][mine, layer]
                base_answer = arrays[base_masks]["answer_weight"][theirs, layer]
                tv = np.abs(values["mask_share"][:, layer] - values["context_share"][:, layer]).sum(-1) / 2
                record = {**key, "layer": layer, "n_pairs": len(matched), "base_masks": base_masks}
                for name, per_row in (("js", js_divergence(answer, base_answer)),
                                      ("overlap", chosen_overlap(base_answer, answer)), ("mask_vs_context", tv)):
                    mean, low, high = bootstrap_mean(per_row) if len(per_row) else (np.nan,) * 3
                    record[name], record[f"{name}_low"], record[f"{name}_high"] = float(mean), float(low), float(high)
                shifts.append(record)
    names = [n for name in DATASETS for n in (name, f"{name}_low", f"{name}_high")]
    shift_names = [n for name in ("js", "overlap", "mask_vs_context") for n in (name, f"{name}_low", f"{name}_high")]
    return {"routing_experts": clean_types(pd.DataFrame(experts, columns=KEYS + ["layer", "expert", "n"] + names)),
            "routing_shift": clean_types(pd.DataFrame(shifts, columns=KEYS + ["layer", "n_pairs", "base_masks"]
                                                      + shift_names))}


def figures(tables) -> list:
    """Per model and setting: the answer slot's routing divergence from the fewest masks, per layer (left),
    and the masks' against the context's share of each expert at the most masks (right)."""
    shift, experts = tables["routing_shift"], tables["routing_experts"]
    out = []
    if shift.empty:
        return out
    colors = model_colors(shift["model"].unique())
    for keys, group in shift.groupby(SETTING + ["placement"]):
        model, n_relevant, n_distractor, placement = keys
        figure, axes = new_figure(1, 2)
        for masks, line in group.groupby("masks"):
            line = line.sort_values("layer")
            line_with_band(axes[0, 0], line["layer"], line["js"], line["js_low"], line["js_high"], colors[model],
                           label=f"{masks} masks")
        axes[0, 0].set_xticks(sorted(group["layer"].unique()))
        axes[0, 0].set_xlabel("layer")
        axes[0, 0].set_ylabel(f"JS divergence from {int(group['base_masks'].iloc[0])} mask (bits)")
        axes[0, 0].set_title("answer slot's routing")
        axes[0, 0].legend(fontsize=7)
        most = group["masks"].max()
        cells = experts[(experts["model"] == model) & (experts["n_relevant"] == n_relevant)
                        & (experts["n_distractor"] == n_distractor) & (experts["placement"] == placement)
                        & (experts["masks"] == most)]
        layers = sorted(cells["layer"].unique())
        grid = np.array([[cells[(cells["layer"] == layer)].sort_values("expert")[column].to_numpy()
                          for column in ("mask_share", "context_share")] for layer in layers])  # [layer, 2, expert]
        image = axes[0, 1].imshow(grid.reshape(len(layers) * 2, -1), aspect="auto", cmap="viridis", vmin=0)
        axes[0, 1].set_yticks(range(len(layers) * 2),
                              [f"L{layer} {what}" for layer in layers for what in ("masks", "context")], fontsize=7)
        axes[0, 1].set_xticks(range(grid.shape[2]))
        axes[0, 1].set_xlabel("expert")
        axes[0, 1].set_title(f"share of top-k choices, {most} masks")
        figure.colorbar(image, ax=axes[0, 1])
        figure.suptitle(figure_title([model], "routing at the masks", n_relevant, n_distractor, placement))
        out.append(FigureOut(f"routing_{slug(model)}_{slug(placement)}", figure,
                             f"Left: Jensen-Shannon divergence of the answer slot's routing from its routing at "
                             f"{int(group['base_masks'].iloc[0])} mask, per MoE layer (95% bootstrap band, paired "
                             f"by prompt); right: each expert's share of the top-k choices of the masks and of the "
                             f"context at {most} masks."))
    return out


def paragraph(tables) -> str:
    """The findings in words: per model, the layer where the answer slot's routing moves most at the most
    masks, and how differently the masks and the context are routed there."""
    shift = tables["routing_shift"]
    if shift.empty:
        return "Only one mask count was recorded, so the routing shift cannot be measured."
    sentences = []
    for (model, placement), group in shift.groupby(["model", "placement"]):
        most = group[group["masks"] == group["masks"].max()]
        top = most.loc[most["js"].idxmax()]
        sentences.append(
            f"{model} ({placement}): from {int(top['base_masks'])} to {int(top['masks'])} masks the answer slot's "
            f"routing moves most in layer {int(top['layer'])} (JS divergence {top['js']:.3f} bits, 95% CI "
            f"{top['js_low']:.3f}-{top['js_high']:.3f}; {top['overlap']:.0%} of its experts kept), where the masks "
            f"and the context are routed {top['mask_vs_context']:.2f} apart (total variation of expert shares).")
    return " ".join(sentences)


ANALYSIS = Analysis(
    name="routing",
    title="Routing at the masks",
    needs=("routing",),
    tables=routing_tables,
    figures=figures,
    paragraph=paragraph,
)
