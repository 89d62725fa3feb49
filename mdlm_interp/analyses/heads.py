"""Head ranking: which heads look at the masks from the readout position, and does that go with the loss?

Record stores with attention at masks 1 and at a larger count. Per model, setting and placement,
heads are ordered by their mean attention mass from the readout position (the row that predicts the
answer: the answer slot for LLaDA, the position before it for Dream) on the masks after the answer
slot (``attention/mask_mass_from_answer``) at the largest mask count (or the one asked for). Per
head, the Spearman rank correlation across prompts between that mass and the loss of p(answer)
against the same prompt at masks 1 (paired by the pairing key) says whether the prompts on which a
head looks more at the masks are the ones that lose more; its p-value comes from a seeded
permutation test (losses shuffled across prompts), and since every head of a group is tested, its
Holm-adjusted p-value (``p_adjusted``, over the heads of the group) is the one the text reads. Where
the filler control was recorded at that count, the same head's mass on the fillers is the control.
``mdlm-interp heads STORE`` prints it.
"""

import numpy as np

from mdlm_interp.analyses.data import PAIR, SETTING, Skip
from mdlm_interp.analyses.grouped import clean_types, masks_text, slug
from mdlm_interp.analyses.plotting import error_bars, new_figure
from mdlm_interp.analyses.registry import Analysis, FigureOut
from mdlm_interp.analyses.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, holm, spearman

MASS = "attention/mask_mass_from_answer"  # read from the readout position (hooks/recorders.py)
READOUT_WHERE = "the answer slot for LLaDA, the position before it for Dream"
KEYS = SETTING + ["placement"]


def head_ranking(recordings, masks: int | None = None, seed: int = BOOTSTRAP_SEED,
                 resamples: int = BOOTSTRAP_RESAMPLES):
    """Return {"head_ranking": DataFrame}, one row per (model, setting, placement, head), heads ranked by mass.

    Columns: the keys, masks (the count ranked at: ``masks``, default the largest recorded above 1),
    rank (1 = most mass), head_label ("L.H"), layer, head, n (prompts paired with masks 1), mask_mass
    (attention from the readout position on the masks after the answer slot) with mask_mass_low /
    mask_mass_high (95% bootstrap over prompts), filler_mass (NaN without the filler control), rho
    (Spearman of mass with p(answer at 1 mask) - p(answer at ``masks``)) with
    rho_low / rho_high (bootstrap), p_permutation (two-sided, ``resamples`` shuffles) and p_adjusted
    (``stats.holm`` over the heads of the group). Raises ``Skip`` when no group has rows at masks 1 and
    at a larger count on the same prompts.
    """
    import pandas as pd

    rows = recordings.rows
    frames = []
    for keys, group in rows.groupby(KEYS, sort=False):
        plain = group[~group["filler"].astype(bool)]
        counts = sorted(int(m) for m in plain["masks"].unique() if m > 1)
        target = int(masks) if masks is not None else (counts[-1] if counts else None)
        if target not in counts or not (plain["masks"] == 1).any():
            continue
        corrupt = plain[plain["masks"] == target].drop_duplicates(PAIR)
        clean = plain[plain["masks"] == 1].drop_duplicates(PAIR).set_index(PAIR)
        corrupt = corrupt[corrupt[PAIR].isin(clean.index)]
        if corrupt.empty:
            continue
        loss = clean.loc[corrupt[PAIR], "p_answer"].to_numpy(float) - corrupt["p_answer"].to_numpy(float)
        filler = group[group["filler"].astype(bool) & (group["masks"] == target)]
        filler_mass = recordings.gather(filler, MASS).astype(float) if len(filler) else None
        ranked = rank_heads(recordings.gather(corrupt, MASS).astype(float), loss, filler_mass, seed, resamples)
        for key, value in zip(reversed(KEYS), reversed(keys)):
            ranked.insert(0, key, value)
        ranked.insert(len(KEYS), "masks", target)
        frames.append(ranked)
    if not frames:
        asked = f"masks {masks}" if masks is not None else "a count above 1"
        raise Skip(f"no store has attention at masks 1 and at {asked} on the same prompts")
    return {"head_ranking": clean_types(pd.concat(frames, ignore_index=True))}


def rank_heads(mass: np.ndarray, loss: np.ndarray, filler_mass: np.ndarray | None, seed: int = BOOTSTRAP_SEED,
               resamples: int = BOOTSTRAP_RESAMPLES):
    """Return the ranking columns (rank .. p_adjusted of ``head_ranking``) for ``mass`` [prompts, layer,
    head] at the corrupt count, ``loss`` [prompts] and the filler control's ``filler_mass`` [rows, layer, head]."""
    import pandas as pd

    n, n_layers, n_heads = mass.shape
    rho = spearman(mass, loss)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    boot_mass = np.percentile(np.stack([mass[rows].mean(0) for rows in draws]), [2.5, 97.5], axis=0)
    boot_rho = np.stack([spearman(mass[rows], loss[rows]) for rows in draws])
    null = np.stack([spearman(mass, rng.permutation(loss)) for _ in range(resamples)])
    p_perm = (1 + (np.abs(null) >= np.abs(rho)[None] - 1e-12).sum(0)) / (1 + resamples)
    layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
    frame = pd.DataFrame({
        "head_label": [f"{l}.{h}" for l, h in zip(layer.ravel(), head.ravel())], "layer": layer.ravel(),
        "head": head.ravel(), "n": n, "mask_mass": mass.mean(0).ravel(),
        "mask_mass_low": boot_mass[0].ravel(), "mask_mass_high": boot_mass[1].ravel(),
        "filler_mass": (filler_mass.mean(0) if filler_mass is not None
                        else np.full((n_layers, n_heads), np.nan)).ravel(),
        "rho": rho.ravel(), "rho_low": _percentile(boot_rho, 2.5).ravel(),
        "rho_high": _percentile(boot_rho, 97.5).ravel(),
        "p_permutation": p_perm.ravel(), "p_adjusted": holm(p_perm.ravel()),
    })
    frame = frame.sort_values(["mask_mass", "layer", "head"], ascending=[False, True, True], kind="mergesort")
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    return frame.reset_index(drop=True)


def _percentile(values: np.ndarray, q: float) -> np.ndarray:
    """Return the q-th percentile along axis 0 ignoring NaN (NaN where every value is NaN)."""
    finite = np.isfinite(values).any(0)
    out = np.full(values.shape[1:], np.nan)
    if finite.any():
        out[finite] = np.nanpercentile(values[:, finite], q, axis=0)
    return out


def ranking_figure(ranking, top: int | None = None) -> FigureOut:
    """Return the ranking of one group (model, setting, placement) as a figure: attention mass on the masks per
    head with 95% intervals (the filler control beside it where recorded), and the rank correlation of that
    mass with the loss of p(answer), with 95% intervals."""
    part = ranking.head(top) if top else ranking
    first = part.iloc[0]
    x = np.arange(len(part))
    figure, axes = new_figure(2, 1, width=max(6.0, 0.45 * len(part) + 2), height=3.0, sharex=True)
    upper, lower = axes[0, 0], axes[1, 0]
    mass = part["mask_mass"].to_numpy()
    upper.bar(x - 0.2, mass, 0.4, yerr=error_bars(mass, part["mask_mass_low"], part["mask_mass_high"]), capsize=2,
              label=f"on the masks after the answer slot ({masks_text(first['masks'])})")
    if np.isfinite(part["filler_mass"]).any():
        upper.bar(x + 0.2, part["filler_mass"], 0.4, color="grey", label="on the fillers (filler control)")
    upper.set_ylabel("attention mass\nfrom the readout position")
    upper.legend(fontsize=8)
    rho = part["rho"].to_numpy()
    lower.errorbar(x, rho, yerr=error_bars(rho, part["rho_low"], part["rho_high"]), fmt="o", capsize=2)
    lower.axhline(0, color="black", linewidth=0.8)
    lower.set_ylabel("Spearman rho\n(mass, loss of p(answer))")
    lower.set_xticks(x, part["head_label"], rotation=90)
    lower.set_xlabel("head (layer.head), by attention mass on the masks")
    figure.suptitle(f"{first['model']}: heads that attend to the masks, and whether that goes with the loss\n"
                    f"({masks_text(first['masks'])} against 1, {first['placement']} placement, n = {first['n']} prompts)")
    name = (f"head_ranking_{slug(str(first['model']))}_r{first['n_relevant']}_d{first['n_distractor']}_"
            f"{slug(first['placement'])}_m{first['masks']}")
    caption = (f"Heads of {first['model']} ordered by the attention mass the readout position ({READOUT_WHERE}) "
               f"puts on the masks after the answer slot at {first['masks']} masks (bars, 95% bootstrap intervals; "
               f"grey: the same head on the fillers of the filler control), and the rank correlation across prompts "
               f"of that mass with the loss of p(answer) against 1 mask on the same prompt (dots, 95% bootstrap "
               f"intervals).")
    return FigureOut(name, figure, caption)


def figures(tables: dict) -> list:
    """One ranking figure per model, setting and placement."""
    ranking = tables["head_ranking"]
    return [ranking_figure(group) for _, group in ranking.groupby(KEYS + ["masks"], sort=False)]


def paragraph(tables: dict) -> str:
    """The top head per group, its mass against the fillers, and its correlation with the loss, in words."""
    parts = []
    for _, group in tables["head_ranking"].groupby(KEYS + ["masks"], sort=False):
        top = group.iloc[0]
        text = (f"{top['model']} ({top['n_relevant']} relevant + {top['n_distractor']} distractor, {top['placement']}, "
                f"{top['masks']} masks, {top['n']} prompts): head {top['head_label']} puts {top['mask_mass']:.3f} "
                f"[{top['mask_mass_low']:.3f}, {top['mask_mass_high']:.3f}] of the readout position's attention on the "
                f"masks")
        if np.isfinite(top["filler_mass"]):
            text += f" ({top['filler_mass']:.3f} on the fillers)"
        text += (f"; its rank correlation with the loss of p(answer) is {top['rho']:.2f} "
                 f"[{top['rho_low']:.2f}, {top['rho_high']:.2f}] (permutation p = {top['p_permutation']:.3f}, "
                 f"Holm-adjusted over the {len(group)} heads p = {top['p_adjusted']:.3f})")
        strongest = group.loc[group["rho"].abs().idxmax()] if group["rho"].notna().any() else None
        if strongest is not None and strongest["head_label"] != top["head_label"]:
            text += (f"; the strongest correlation is head {strongest['head_label']}'s, {strongest['rho']:.2f} "
                     f"[{strongest['rho_low']:.2f}, {strongest['rho_high']:.2f}], with mass "
                     f"{strongest['mask_mass']:.3f} (Holm-adjusted p = {strongest['p_adjusted']:.3f})")
        parts.append(text)
    return (f"Heads ranked by attention from the readout position ({READOUT_WHERE}) on the masks, with the rank "
            "correlation of that mass with the per-prompt loss of p(answer) against 1 mask. " + "; ".join(parts) + ".")


def shown(tables: dict) -> dict:
    """The five heads per group with the most mass on the masks (all heads: tables/head_ranking.csv)."""
    ranking = tables["head_ranking"]
    top = ranking[ranking["rank"] <= 5]
    columns = KEYS + ["masks", "rank", "head_label", "n", "mask_mass", "filler_mass", "rho", "rho_low", "rho_high",
                      "p_permutation", "p_adjusted"]
    return {"The five heads per model with the most attention from the readout position on the masks": top[columns]}


ANALYSIS = Analysis(
    name="head_ranking",
    title="Heads ranked by attention to the masks",
    needs=("attention",),
    tables=head_ranking,
    figures=figures,
    paragraph=paragraph,
    shown=shown,
)
