"""Activation patching between two mask configurations: patching stores -> recovery per cell, heatmaps.

Reads patching stores (``mdlm-interp patch``; docs/store.md). The recovery of a cell is a ratio of
means over the pairs, (mean patched - mean corrupt) / (mean clean - mean corrupt) of logit(answer) -
logit(wrong), so a pair whose two runs barely differ cannot blow it up; its 95% interval is a
percentile bootstrap over pairs. ``clean_into_corrupt`` cells near 1 restore the answer;
``corrupt_into_clean`` cells near 0 break it. Attribution patching's estimate of every cell sits
beside it (``attribution_recovery``). Recovery divides by the clean - corrupt gap, so where the gap is
under ``MIN_GAP`` logits (``mdlm-interp patch --min-gap``) it is left undefined (NaN in tables, blank
in figures); each cell's effect in logits (mean patched - mean receiving run) stands beside it. Per site the Pearson correlation of the two over the grid
(``attribution_agreement``), computed here when the store is read (stores do not carry it).
"""

import numpy as np

from mdlm_interp.analyses.grouped import slug
from mdlm_interp.analyses.plotting import new_figure
from mdlm_interp.analyses.registry import Analysis, FigureOut
from mdlm_interp.analyses.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, recovery, resample_weights, wilson_interval
from mdlm_interp.store.identity import read_identity
from mdlm_interp.store.results import open_results, registered_kind

SITES = registered_kind("patching").names("attribution", "_logit_diff")  # read from the registered schema

RESIDUAL_SITES = ("resid_pre", "attn_out", "mlp_out")
MIN_GAP = 1.0  # logits: under this clean - corrupt gap, recovery is undefined
HEAD_GROUP_TITLES = {"answer": "the answer slot", "all": "every position", "readout": "the readout position"}
RECEIVERS = {"clean_into_corrupt": "corrupt", "corrupt_into_clean": "clean"}
DIRECTION_TITLES = {"clean_into_corrupt": "clean activations patched into the corrupt run",
                    "corrupt_into_clean": "corrupt activations patched into the clean run"}


def comparison(settings: dict) -> str:
    """Return "1 vs 50 masks" or "50 filler vs 50 masks" from a patching store's settings."""
    clean, corrupt = settings["clean"], settings["corrupt"]
    return f"{clean['masks']}{' filler' if clean['filler'] else ''} vs {corrupt['masks']} masks"


def cell_values(store) -> tuple:
    """Return (cells, values) of an open patching store: the per-pair numbers behind ``patching_cells``.

    cells: a DataFrame with one row per cell of the store's grids (both directions, every site): direction,
    site, layer, position, head, in the order of ``patching_cells``. values: {"clean", "corrupt": the pairs'
    logit differences [pairs]; "logit_diff", "p_answer": the patched runs' [pairs, cells];
    "attribution": attribution patching's estimate of logit_diff [pairs, cells] (NaN when not computed)}.
    """
    import pandas as pd

    groups, head_groups = store.attrs["position_groups"], store.attrs["head_groups"]
    n = store.n_rows
    frames, columns = [], {"logit_diff": [], "p_answer": [], "attribution": []}
    for d, direction in enumerate(store.attrs["directions"]):
        for site in SITES:
            exact = store.array(f"patching/{site}_logit_diff")[:, d].astype(float)
            grid = exact.shape[1:]
            columns["logit_diff"].append(exact.reshape(n, -1))
            columns["p_answer"].append(store.array(f"patching/{site}_p_answer")[:, d].astype(float).reshape(n, -1))
            columns["attribution"].append(
                store.array(f"attribution/{site}_logit_diff")[:, d].astype(float).reshape(n, -1))
            index = np.indices(grid).reshape(len(grid), -1)
            if site == "z":
                layer, head, position = index[0], index[1], [head_groups[k] for k in index[2]]
            else:
                layer, head, position = index[0], np.full(index.shape[1], -1), [groups[g] for g in index[1]]
            frames.append(pd.DataFrame({"direction": direction, "site": site, "layer": layer, "position": position,
                                        "head": head}))
    values = {name: np.concatenate(parts, axis=1) for name, parts in columns.items()}
    values["clean"] = store.array("pairs/clean_logit_diff").astype(float)
    values["corrupt"] = store.array("pairs/corrupt_logit_diff").astype(float)
    return pd.concat(frames, ignore_index=True), values


def patching_cells(store, seed: int = BOOTSTRAP_SEED, resamples: int = BOOTSTRAP_RESAMPLES, min_gap: float = MIN_GAP):
    """Return one row per cell of an open patching store's grids (both directions, every site).

    Columns: direction, site, layer (for resid_pre, ``n_layers`` is the final residual), position (the
    position group, or the head group for z), head (-1 for the residual sites), n (pairs), logit_diff
    and p_answer (means over the patched runs), effect (logit_diff minus the receiving run's mean logit
    difference: what the patch does, in logits), recovery with recovery_low / recovery_high (95%
    bootstrap over pairs), attribution_recovery (the same ratio for attribution patching's estimate;
    NaN when it was not computed). The recovery columns are NaN when the clean - corrupt gap of the
    mean logit differences is under ``min_gap`` logits in size.
    """
    cells, values = cell_values(store)
    clean, corrupt, exact = values["clean"], values["corrupt"], values["logit_diff"]
    weights = resample_weights(len(clean), resamples, seed)  # [resamples, pairs]
    boot = recovery(weights @ exact, (weights @ clean)[:, None], (weights @ corrupt)[:, None])
    receiver = cells["direction"].map(RECEIVERS).map({"clean": clean.mean(), "corrupt": corrupt.mean()})
    defined = abs(clean.mean() - corrupt.mean()) >= min_gap

    def ratio(values: np.ndarray) -> np.ndarray:
        return values if defined else np.full(len(cells), np.nan)

    return cells.assign(
        n=len(clean), logit_diff=exact.mean(0), p_answer=values["p_answer"].mean(0),
        effect=exact.mean(0) - receiver.to_numpy(),
        recovery=ratio(recovery(exact.mean(0), clean.mean(), corrupt.mean())),
        recovery_low=ratio(np.nanpercentile(boot, 2.5, axis=0)),
        recovery_high=ratio(np.nanpercentile(boot, 97.5, axis=0)),
        attribution_recovery=ratio(recovery(values["attribution"].mean(0), clean.mean(), corrupt.mean())))


def attribution_agreement(store) -> dict | None:
    """Return direction -> site -> Pearson correlation, over the cells of the site's grid, between the exact
    recovery and attribution patching's recovery of an open patching store (None for a site where either
    is constant or fewer than two cells are finite); None when attribution was not computed."""
    if np.isnan(store.array("attribution/resid_pre_logit_diff")).all():
        return None
    clean = float(np.mean(store.array("pairs/clean_logit_diff").astype(np.float64)))
    corrupt = float(np.mean(store.array("pairs/corrupt_logit_diff").astype(np.float64)))

    def cell_recovery(prefix: str, site: str, d: int) -> np.ndarray:
        patched = np.nanmean(store.array(f"{prefix}/{site}_logit_diff")[:, d].astype(np.float64), axis=0)
        return recovery(patched, clean, corrupt).ravel()

    agreement = {}
    for d, direction in enumerate(store.attrs["directions"]):
        agreement[direction] = {}
        for site in SITES:
            exact, estimate = cell_recovery("patching", site, d), cell_recovery("attribution", site, d)
            keep = np.isfinite(exact) & np.isfinite(estimate)
            both = exact[keep], estimate[keep]
            usable = keep.sum() > 1 and both[0].std() > 0 and both[1].std() > 0
            agreement[direction][site] = float(np.corrcoef(*both)[0, 1]) if usable else None
    return agreement


def pair_summary(store, seed: int = BOOTSTRAP_SEED, resamples: int = BOOTSTRAP_RESAMPLES) -> dict:
    """Return n; "gap": the clean - corrupt difference of the mean logit differences (in logits) with
    gap_low / gap_high (95% bootstrap over pairs); per run ("clean", "corrupt") accuracy with its Wilson
    interval (ci_low, ci_high), mean p(answer) and mean logit difference; and the share of corrupt runs
    that predict the wrong token."""
    differences = (store.array("pairs/clean_logit_diff").astype(float)
                   - store.array("pairs/corrupt_logit_diff").astype(float))
    boot = resample_weights(len(differences), resamples, seed) @ differences
    summary = {"n": store.n_rows, "gap": float(differences.mean()), "gap_low": float(np.percentile(boot, 2.5)),
               "gap_high": float(np.percentile(boot, 97.5))}
    for run in ("clean", "corrupt"):
        correct = store.array(f"pairs/{run}_correct")
        low, high = wilson_interval(int(correct.sum()), len(correct))
        summary[run] = {"accuracy": float(correct.mean()), "ci_low": float(low), "ci_high": float(high),
                        "p_answer": float(store.array(f"pairs/{run}_p_answer").mean()),
                        "logit_diff": float(store.array(f"pairs/{run}_logit_diff").mean())}
    summary["corrupt_says_wrong_token"] = float(
        (store.array("pairs/corrupt_predicted_id") == store.array("pairs/wrong_id")).mean())
    return summary


def patching(paths) -> dict:
    """Return {"patching_runs", "patching_cells", "patching_attribution"} for the patching stores at ``paths``.

    patching_runs: one row per store (model, comparison, n, the clean - corrupt gap in logits with its
    95% bootstrap interval, the clean and corrupt runs' accuracy with
    Wilson bounds, p(answer) and logit difference, the share of corrupt runs predicting the wrong
    token). patching_cells: ``patching_cells`` of every store, with model and comparison.
    patching_attribution: per store, direction and site, the Pearson correlation between exact and
    attribution recovery over the grid's cells (``attribution_agreement``).
    """
    import pandas as pd

    runs, cells, agreement = [], [], []
    for path in paths:
        with open_results(path, "patching") as store:
            settings = store.attrs["settings"]
            label = {"model": read_identity(store.attrs).label,
                     "comparison": comparison(settings)}
            summary = pair_summary(store)
            runs.append({**label, "n": summary["n"], "gap": summary["gap"], "gap_low": summary["gap_low"],
                         "gap_high": summary["gap_high"], "wrong_token_share": summary["corrupt_says_wrong_token"],
                         **{f"{run}_{k}": v for run in ("clean", "corrupt") for k, v in summary[run].items()}})
            cells.append(patching_cells(store).assign(**label))
            for direction, sites in (attribution_agreement(store) or {}).items():
                agreement += [{**label, "direction": direction, "site": site, "pearson": r}
                              for site, r in sites.items()]
    cells = pd.concat(cells, ignore_index=True)
    cells = cells[["model", "comparison"] + [c for c in cells.columns if c not in ("model", "comparison")]]
    return {"patching_runs": pd.DataFrame(runs), "patching_cells": cells,
            "patching_attribution": pd.DataFrame(agreement, columns=["model", "comparison", "direction", "site",
                                                                     "pearson"])}


def heatmap(ax, values: np.ndarray, rows: list, columns: list, title: str, ylabel: str, xlabel: str,
            limit: float = 1.0, digits: int = 2):
    """Draw ``values`` [rows, columns] on ``ax`` as a heatmap with colours from -``limit`` to ``limit`` (recovery:
    -1 .. 1) and the numbers in the cells (``digits`` decimals); return the image (for a colour bar)."""
    image = ax.imshow(values, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    long = any(len(str(c)) > 3 for c in columns)
    ax.set_xticks(range(len(columns)), columns, rotation=45 if long else 0, ha="right" if long else "center")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    for (r, c), value in np.ndenumerate(values):
        if np.isfinite(value):
            zero = f"{0:.{digits}f}"
            ax.text(c, r, f"{value:.{digits}f}".replace(f"-{zero}", zero), ha="center", va="center", fontsize=6.5,
                    color="white" if abs(value) > 0.6 * limit else "black")
    return image


def undefined_note(cells) -> str:
    """Return a title note when every recovery of ``cells`` is undefined (blank cells), else ""."""
    if cells["recovery"].isna().all():
        return f"\n(recovery undefined: the clean - corrupt gap is under {MIN_GAP:g} logit; see the effects in logits)"
    return ""


def _label(model: str, compared: str) -> tuple[str, str]:
    """Return (title part, file name part) for a store's model and comparison ("" when not given)."""
    if not model:
        return "", ""
    return f" ({model}, {compared})", f"_{slug(model)}_{slug(compared)}"


def position_heatmaps(cells, direction: str, model: str = "", compared: str = "") -> FigureOut:
    """Return the layer x position-group heatmaps of recovery for resid_pre, attn_out and mlp_out of one store's
    ``cells`` (``patching_cells``) in one ``direction``; ``model`` and ``compared`` label the figure."""
    title, suffix = _label(model, compared)
    part = cells[(cells["direction"] == direction) & cells["site"].isin(RESIDUAL_SITES)]
    groups = list(dict.fromkeys(part["position"]))
    figure, axes = new_figure(1, 3, width=1.0 + 0.55 * len(groups), height=3.6)
    image = None
    for ax, site in zip(axes[0], RESIDUAL_SITES):
        grid = part[part["site"] == site].pivot(index="layer", columns="position", values="recovery")[groups]
        last = grid.index.max()
        labels = [f"{l} (final)" if site == "resid_pre" and l == last else str(l) for l in grid.index]
        image = heatmap(ax, grid.to_numpy(), labels, groups, site, "layer", "position group")
    figure.colorbar(image, ax=list(axes[0]), label="recovery of logit(answer) - logit(wrong)", shrink=0.85)
    figure.suptitle(f"Activation patching{title}: {DIRECTION_TITLES.get(direction, direction)}{undefined_note(part)}")
    caption = (f"Recovery of logit(answer) - logit(wrong) when one site (resid_pre, attn_out, mlp_out) of one layer "
               f"(rows; the last resid_pre row is the final residual) is patched over one position group (columns), "
               f"{DIRECTION_TITLES.get(direction, direction)}: 1 = the clean result, 0 = the corrupt one.")
    return FigureOut(f"patching_positions{suffix}_{direction}", figure, caption)


def head_heatmaps(cells, direction: str, model: str = "", compared: str = "") -> FigureOut:
    """Return layer x head heatmaps of recovery when one head's output (hook_z) is patched at the answer slot
    and at every position, for one store's ``cells`` in one ``direction``."""
    title, suffix = _label(model, compared)
    part = cells[(cells["direction"] == direction) & (cells["site"] == "z")]
    positions = list(dict.fromkeys(part["position"]))
    figure, axes = new_figure(1, len(positions), width=3.6, height=3.3)
    image = None
    for ax, position in zip(axes[0], positions):
        grid = part[part["position"] == position].pivot(index="layer", columns="head", values="recovery")
        image = heatmap(ax, grid.to_numpy(), [str(l) for l in grid.index], [str(h) for h in grid.columns],
                         f"head output patched at: {HEAD_GROUP_TITLES.get(position, position)}", "layer", "head")
    figure.colorbar(image, ax=list(axes[0]), label="recovery", shrink=0.85)
    figure.suptitle(f"Head patching{title}: {DIRECTION_TITLES.get(direction, direction)}{undefined_note(part)}")
    caption = (f"Recovery when one head's output (hook_z; layer rows, head columns) is patched at the answer slot or "
               f"at every position, {DIRECTION_TITLES.get(direction, direction)}.")
    return FigureOut(f"patching_heads{suffix}_{direction}", figure, caption)


def figures(tables: dict) -> list:
    """Position and head heatmaps per store and direction."""
    out = []
    for (model, compared), cells in tables["patching_cells"].groupby(["model", "comparison"], sort=False):
        for direction in dict.fromkeys(cells["direction"]):
            out += [position_heatmaps(cells, direction, model, compared),
                    head_heatmaps(cells, direction, model, compared)]
    return out


def strongest(cells, direction: str, site: str, top: int = 3):
    """Return the ``top`` cells of a site that restore most (clean into corrupt) or break most (corrupt into
    clean); where recovery is undefined (a gap under the minimum), the cells whose effect is largest in size."""
    part = cells[(cells["direction"] == direction) & (cells["site"] == site)]
    if part["recovery"].isna().all():
        return part.loc[part["effect"].abs().sort_values(ascending=False).index].head(top)
    return part.sort_values("recovery", ascending=direction != "clean_into_corrupt").head(top)


def describe(cell) -> str:
    """Return "L0.H1 answer 1.00 [0.99, 1.00] (+2.31 logits)" for a cell: recovery, its interval and the
    effect in logits ("L0.H1 answer +0.02 logits" where recovery is undefined)."""
    where = f"L{cell['layer']}" + (f".H{cell['head']}" if cell["head"] >= 0 else "")
    effect = f"{cell['effect']:+.2f} logits"
    if not np.isfinite(cell["recovery"]):
        return f"{where} {cell['position']} {effect}"
    interval = f"[{cell['recovery_low']:.2f}, {cell['recovery_high']:.2f}]"
    return f"{where} {cell['position']} {cell['recovery']:.2f} {interval} ({effect})"


def paragraph(tables: dict) -> str:
    """Per store: the two runs, the cells that restore the answer most per site, and the attribution agreement."""
    parts = []
    for run in tables["patching_runs"].to_dict("records"):
        cells = tables["patching_cells"]
        cells = cells[(cells["model"] == run["model"]) & (cells["comparison"] == run["comparison"])]
        text = (f"{run['model']}, {run['comparison']} ({run['n']} pairs): clean - corrupt gap {run['gap']:.2f} "
                f"[{run['gap_low']:.2f}, {run['gap_high']:.2f}] logits; accuracy {run['clean_accuracy']:.3f} clean "
                f"against {run['corrupt_accuracy']:.3f} corrupt. ")
        if abs(run["gap"]) < MIN_GAP:
            text += (f"The gap is under {MIN_GAP:g} logit, so recovery is undefined; the cells whose patch moves the "
                     f"logit difference most are ")
        else:
            text += "Patched into the corrupt run, the strongest cells are "
        text += "; ".join(f"{site}: " + ", ".join(describe(c) for c in strongest(cells, "clean_into_corrupt", site)
                                                  .to_dict("records")) for site in SITES)
        agreement = tables["patching_attribution"]
        agreement = agreement[(agreement["model"] == run["model"]) & (agreement["comparison"] == run["comparison"])]
        if len(agreement):
            text += (". Attribution against exact patching (Pearson r over each grid): "
                     + ", ".join(f"{r['direction']} {r['site']} {r['pearson']:.2f}"
                                 for r in agreement.to_dict("records")
                                 if r["pearson"] is not None and np.isfinite(r["pearson"])))
        parts.append(text + ".")
    return " ".join(parts)


def shown(tables: dict) -> dict:
    """The runs, and the five strongest cells per store, direction and site (all cells: tables/patching_cells.csv)."""
    cells = tables["patching_cells"]
    top = [strongest(group, direction, site, 5) for (_, _, direction, site), group in
           cells.groupby(["model", "comparison", "direction", "site"], sort=False)]
    columns = ["model", "comparison", "direction", "site", "layer", "position", "head", "effect", "recovery",
               "recovery_low", "recovery_high", "p_answer", "attribution_recovery"]
    import pandas as pd

    return {"The two runs of each patching store": tables["patching_runs"],
            "The five cells per site that restore the answer most (clean into corrupt) or break it most (corrupt "
            "into clean)": pd.concat(top, ignore_index=True)[columns]}


ANALYSIS = Analysis(
    name="patching",
    title="Activation patching between mask configurations",
    needs=(),
    tables=patching,
    figures=figures,
    paragraph=paragraph,
    shown=shown,
    store_kind="patching",
)
