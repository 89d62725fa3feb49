"""compare, patching stores: every cell's recovery and effect in logits, paired by prompt against the reference."""

import numpy as np

from mdlm_interp.analyses.grouped import slug
from mdlm_interp.analyses.patching import (
    DIRECTION_TITLES,
    RESIDUAL_SITES,
    SITES,
    cell_values,
    head_heatmaps,
    heatmap,
    position_heatmaps,
    strongest,
)
from mdlm_interp.analyses.plotting import new_figure
from mdlm_interp.analyses.registry import FigureOut
from mdlm_interp.analyses.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, recovery, resample_weights
from mdlm_interp.compare.pairing import mismatch, prompt_keys
from mdlm_interp.store.results import open_results

def paired_cells(cells, reference: dict, other: dict, seed: int = BOOTSTRAP_SEED,
                 resamples: int = BOOTSTRAP_RESAMPLES):
    """Return the paired change of every patching cell between two models on the same prompt pairs.

    ``cells``: ``analyses.patching.cell_values``' cell frame (shared by both stores); ``reference`` and
    ``other``: its values, restricted to the same pairs in the same order. Adds to ``cells``: n_pairs,
    reference_recovery and recovery ((mean patched - mean corrupt) / (mean clean - mean corrupt) of each
    model on these pairs) with reference_recovery_low / _high and recovery_low / _high, change (other -
    reference) with change_low / change_high (95% bootstrap, both models resampled with the same pairs);
    reference_effect and effect (mean patched minus the receiving run's own logit
    difference: the corrupt run's for clean_into_corrupt, the clean run's for corrupt_into_clean), and
    effect_change with effect_change_low / effect_change_high (paired bootstrap).
    """
    n = len(reference["clean"])
    receiver = cells["direction"].str.split("_into_").str[1].to_numpy()  # "corrupt" or "clean"
    weights = resample_weights(n, resamples, seed)

    def recoveries(values):
        point = recovery(values["logit_diff"].mean(0), values["clean"].mean(), values["corrupt"].mean())
        boot = recovery(weights @ values["logit_diff"], (weights @ values["clean"])[:, None],
                        (weights @ values["corrupt"])[:, None])
        return point, boot

    def effects(values):
        own = np.where(receiver == "corrupt", values["corrupt"][:, None], values["clean"][:, None])
        return values["logit_diff"] - own  # [pairs, cells]

    (base, base_boot), (mine, mine_boot) = recoveries(reference), recoveries(other)
    with np.errstate(invalid="ignore"):
        boot = mine_boot - base_boot
    difference = effects(other) - effects(reference)
    effect_boot = weights @ difference
    return cells.assign(
        n_pairs=n, reference_recovery=base, reference_recovery_low=np.nanpercentile(base_boot, 2.5, axis=0),
        reference_recovery_high=np.nanpercentile(base_boot, 97.5, axis=0), recovery=mine,
        recovery_low=np.nanpercentile(mine_boot, 2.5, axis=0), recovery_high=np.nanpercentile(mine_boot, 97.5, axis=0),
        change=mine - base,
        change_low=np.nanpercentile(boot, 2.5, axis=0), change_high=np.nanpercentile(boot, 97.5, axis=0),
        reference_effect=effects(reference).mean(0), effect=effects(other).mean(0),
        effect_change=difference.mean(0), effect_change_low=np.percentile(effect_boot, 2.5, axis=0),
        effect_change_high=np.percentile(effect_boot, 97.5, axis=0))


def by_comparison(paths, labels: dict, models: list, notes: list) -> dict:
    """Return {comparison: [(model, path), ...]} of the patching stores at ``paths`` (``labels``: path -> model),
    models in ``models``' order; a second store of one model and comparison is left out with a note."""
    from mdlm_interp.analyses.patching import comparison

    groups = {}
    for path in paths:
        with open_results(path, "patching") as store:
            compared, model = comparison(store.attrs["settings"]), labels[path]
        if any(m == model for m, _ in groups.get(compared, [])):
            notes.append(f"{path}: a second patching store of {model} at {compared}; only the first is compared.")
            continue
        groups.setdefault(compared, []).append((model, path))
    return {c: sorted(members, key=lambda m: models.index(m[0])) for c, members in groups.items()}


def patching_change(paths, labels: dict, models: list, notes: list):
    """Return ``paired_cells`` of every model against the first model of each comparison that has a patching
    store (with model, reference and comparison columns). Stores that cannot be paired with the reference's
    (other prompt settings, another grid, no shared prompts) are left out with a note in ``notes``."""
    import pandas as pd

    frames = []
    for compared, members in by_comparison(paths, labels, models, notes).items():
        if len(members) < 2:
            notes.append(f"Only {members[0][0]} has a patching store at {compared}: its maps are shown, no change.")
            continue
        (reference, reference_path), others = members[0], members[1:]
        with open_results(reference_path, "patching") as store:
            base_settings, base_keys = store.attrs["settings"], prompt_keys(store, "pairs")
            base_cells, base_values = cell_values(store)
        for model, path in others:
            with open_results(path, "patching") as store:
                settings, keys = store.attrs["settings"], prompt_keys(store, "pairs")
                cells, values = cell_values(store)
            reason = mismatch(base_settings, settings)
            if reason is None and not cells.equals(base_cells):
                reason = "the grid (layers, heads or position groups)"
            shared, mine, theirs = np.intersect1d(keys, base_keys, return_indices=True)
            if reason is None and not len(shared):
                reason = "the prompts (none shared)"
            if reason is not None:
                notes.append(f"{path} ({model}, {compared}) differs from {reference}'s patching store in {reason}; "
                             "no change computed.")
                continue
            pick = lambda v, rows: {name: array[rows] for name, array in v.items()}  # noqa: E731
            frame = paired_cells(cells, pick(base_values, theirs), pick(values, mine))
            frame.insert(0, "model", model)
            frame.insert(1, "reference", reference)
            frame.insert(2, "comparison", compared)
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()



def patching_change_figure(change, compared: str, direction: str, value: str = "change") -> FigureOut:
    """Return heatmaps of one comparison and direction of ``patching_change``, a panel per residual site (layer x
    position group) and per head group (layer x head). ``value`` "change": a row per model, its recovery minus
    the reference's; "effect": a row per model with the reference first, the effect of the patch in logits."""
    part = change[(change["comparison"] == compared) & (change["direction"] == direction)]
    reference = part["reference"].iloc[0]
    models = list(dict.fromkeys(part["model"]))
    rows = [(m, part[part["model"] == m], value) for m in models]
    if value == "effect":
        rows.insert(0, (reference, rows[0][1], "reference_effect"))
    heads = part[part["site"] == "z"]
    head_groups = list(dict.fromkeys(heads["position"]))
    n_groups = part[part["site"] == "resid_pre"]["position"].nunique()
    ratios = [n_groups] * len(RESIDUAL_SITES) + [max(heads["head"].max() + 1, 2)] * len(head_groups)
    width = (0.45 * sum(ratios) + 1.1 * len(ratios)) / len(ratios)
    figure, axes = new_figure(len(rows), len(ratios), width=width, height=3.2, gridspec_kw={"width_ratios": ratios})
    spread = float(part[["effect", "reference_effect"]].abs().max().max())
    limit, digits = (1.0, 2) if value == "change" else (max(spread, 1e-6), 1)
    image = None
    for axes_row, (model, mine, column) in zip(axes, rows):
        for ax, site in zip(axes_row, RESIDUAL_SITES):
            cells = mine[mine["site"] == site]
            groups = list(dict.fromkeys(cells["position"]))
            grid = cells.pivot(index="layer", columns="position", values=column)[groups]
            image = heatmap(ax, grid.to_numpy(), [str(l) for l in grid.index], groups, site, "layer", "position group",
                            limit, digits)
        for ax, group in zip(axes_row[len(RESIDUAL_SITES):], head_groups):
            cells = mine[(mine["site"] == "z") & (mine["position"] == group)]
            grid = cells.pivot(index="layer", columns="head", values=column)
            image = heatmap(ax, grid.to_numpy(), [str(l) for l in grid.index], [str(h) for h in grid.columns],
                            f"head output at: {group}", "layer", "head", limit, digits)
        axes_row[0].set_ylabel(f"{model}\nlayer")
    words = DIRECTION_TITLES.get(direction, direction)
    if value == "change":
        label, title = "change in recovery against the reference", f"change in recovery against {reference}"
        caption = (f"Recovery of each model minus {reference}'s on the same prompt pairs ({compared}, {words}): "
                   f"resid_pre, attn_out and mlp_out per layer x position group (the last resid_pre row is the final "
                   f"residual), and each head's output per layer x head. Intervals: tables/patching_change.csv.")
    else:
        label, title = "effect of the patch in logits", "effect of each patch in logits"
        caption = (f"The effect of each patch in logits ({compared}, {words}): the patched run's logit(answer) - "
                   f"logit(wrong) minus the receiving run's own, mean over the pairs the models share, {reference} "
                   f"first; unlike recovery it is not divided by each model's own clean - corrupt gap. Intervals of "
                   f"the paired change: tables/patching_change.csv.")
    figure.colorbar(image, ax=list(axes.ravel()), label=label, shrink=0.8)
    figure.suptitle(f"Activation patching, {compared}: {title}\n({words})")
    return FigureOut(f"patching_{value}_{slug(compared)}_{direction}", figure, caption)


def patching_findings(tables: dict, change) -> list[str]:
    """Return sentences on the patching stores: per model and comparison, the two runs and their gap; per model
    but the reference and direction, at the reference's strongest cell of every site, both models' recovery
    on the shared pairs (95% intervals), its paired change, and the effect of the patch in logits."""
    lines = []
    for row in tables["patching_runs"].to_dict("records"):
        lines.append(f"- {row['model']}, {row['comparison']} ({row['n']} pairs): accuracy {row['clean_accuracy']:.1%} "
                     f"clean against {row['corrupt_accuracy']:.1%} corrupt; logit(answer) - logit(wrong) "
                     f"{row['clean_logit_diff']:.2f} against {row['corrupt_logit_diff']:.2f} (gap "
                     f"{row['clean_logit_diff'] - row['corrupt_logit_diff']:.2f}).")
    if change.empty:
        return lines
    cells = tables["patching_cells"]
    for (model, compared), part in change.groupby(["model", "comparison"], sort=False):
        reference = part["reference"].iloc[0]
        base = cells[(cells["model"] == reference) & (cells["comparison"] == compared)]
        indexed = part.set_index(["direction", "site", "layer", "position", "head"])
        for direction in dict.fromkeys(part["direction"]):
            texts = []
            for site in SITES:
                top = strongest(base, direction, site, 1).iloc[0]
                r = indexed.loc[(direction, site, top["layer"], top["position"], top["head"])]
                where = f"L{top['layer']}" + (f".H{top['head']}" if top["head"] >= 0 else "")
                texts.append(f"{site} {where} {top['position']} {r['recovery']:.2f} [{r['recovery_low']:.2f}, "
                             f"{r['recovery_high']:.2f}] against {r['reference_recovery']:.2f} "
                             f"[{r['reference_recovery_low']:.2f}, {r['reference_recovery_high']:.2f}], change "
                             f"{r['change']:+.2f} [{r['change_low']:+.2f}, {r['change_high']:+.2f}]; effect "
                             f"{r['effect']:+.1f} logits against {r['reference_effect']:+.1f}, change "
                             f"{r['effect_change']:+.1f} [{r['effect_change_low']:+.1f}, "
                             f"{r['effect_change_high']:+.1f}]")
            lines.append(f"- {model} against {reference}, {compared}, {direction} ({int(part['n_pairs'].iloc[0])} "
                         f"shared pairs), at the reference's strongest cell per site: " + "; ".join(texts) + ".")
    return lines



def patching_maps(tables: dict, change, models: list) -> list[list[FigureOut]]:
    """Return the patching figures as rows to show side by side: per comparison and direction, the layer x
    position-group maps of every model (``analyses.patching.position_heatmaps``), their layer x head maps
    (``head_heatmaps``), then the change in recovery against the reference and every model's effect in logits
    (``patching_change_figure``)."""
    cells = tables["patching_cells"]
    rows = []
    for compared in dict.fromkeys(cells["comparison"]):
        here = cells[cells["comparison"] == compared]
        present = [m for m in models if m in set(here["model"])]
        for direction in dict.fromkeys(here["direction"]):
            for draw in (position_heatmaps, head_heatmaps):
                rows.append([draw(here[here["model"] == m], direction, m, compared) for m in present])
            if not change.empty and ((change["comparison"] == compared) & (change["direction"] == direction)).any():
                rows += [[patching_change_figure(change, compared, direction, value)] for value in ("change", "effect")]
    return rows


