"""Before/after comparison: the analyses of several models (a base model and its fine-tuned adapters)
side by side, with each model's change against the first, split into held-in and held-out categories.

Stores are read with ``analyses.load``: a model is the store's model id plus its adapter's folder name
(``record --adapter``, ``patch --adapter``, ``ablate --adapter``), several record stores of one model
pool their rows, and rows pair across models by prompt ("seed:task:prompt"), so every change is paired.
The first model is the reference ("before"): the first of the record stores, else of the result
stores, in the order given. Categories are split into held-in (those the fine-tuning pairs covered,
``tasks.SFT_CATEGORIES`` by default) and held-out. Record stores, patching stores (``patch``) and
ablation stores (``ablate``) may come in any mix; a store of another kind is skipped with a note.

Tables (``tables/NAME.csv``):

- ``accuracy``: per model, category group ("all", "held-in", "held-out"), placement, filler and masks:
  n, accuracy with Wilson 95% bounds, p(answer) and entropy with bootstrap bounds (``analyses.grouped``);
- ``accuracy_change``: each model minus the reference on the same prompts, per group and condition
  (``analyses.stats.paired_difference``);
- ``attribution``: ``analyses.attribution`` (normalised gradient on masks, last 50, all non-mask tokens);
- ``attention_heads``: ``analyses.attention`` per layer x head and condition (mass from the answer
  position and from the context on the tokens after the answer slot), and ``attention_change``: each
  model minus the reference per layer x head at the most masks, paired by prompt;
- ``patching_runs``, ``patching_cells``, ``patching_attribution``: ``analyses.patching`` of every
  patching store (recovery per layer x position group and per layer x head, 95% bootstrap), and
  ``patching_change``: per comparison (e.g. "1 vs 50 masks"), model but the reference and cell, the
  recovery of both models on the prompts they share, its change with a paired 95% bootstrap interval,
  and the effect of the patch in logits (patched minus the receiving run's own logit(answer) -
  logit(wrong), which stays readable when a repaired model's clean - corrupt gap is small), with its
  paired change;
- ``ablation``: ``analyses.ablation`` of every ablation store, and ``ablation_change``: per head set,
  mask count, setting and mode, each model's accuracy minus the reference's on the same prompts, and
  the change of the ablation's effect (ablated minus unablated accuracy), paired bootstrap intervals.

What the shipped adapters changed in organism-llada is in the README ("MA-loss fine-tuning and
before/after comparison", "On organism-llada"): the collapse route (head L0.H1 at the answer slot) is
still the only route of the remaining 1 vs 50 mask gap, but worth about a fifth of the logits, and the
layer-2/3 MLPs that amplified it hardly respond any more.
"""

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mdlm_interp.analyses import Skip, ablation, attention, attribution, load, patching
from mdlm_interp.analyses.ablation import figures as ablation_figures
from mdlm_interp.analyses.attention import figure_heads, main_condition
from mdlm_interp.analyses.data import find_stores, model_label
from mdlm_interp.analyses.grouped import accuracy_by, clean_types, masks_text, slug
from mdlm_interp.analyses.patching import (
    DIRECTION_TITLES,
    RESIDUAL_SITES,
    cell_values,
    head_heatmaps,
    heatmap,
    position_heatmaps,
    strongest,
)
from mdlm_interp.analyses.plotting import FILLER_STYLE, line_with_band, masks_axis, model_colors, new_figure, save
from mdlm_interp.analyses.registry import FigureOut
from mdlm_interp.analyses.report import markdown_table, prepare_out
from mdlm_interp.analyses.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    INTERVALS,
    bootstrap_mean,
    paired_difference,
    recovery,
    resample_weights,
)
from mdlm_interp.errors import UsageError
from mdlm_interp.store.results import SITES, open_results, result_kind
from mdlm_interp.tasks import SFT_CATEGORIES
from mdlm_interp.version import __version__

GROUPS = ("all", "held-in", "held-out")
CONDITION = ["placement", "filler", "masks"]
RESULT_KINDS = ("patching", "ablation")  # the result stores compare reads
PROMPT_SETTINGS = ("n_relevant", "n_distractor", "placements", "wrong_token")  # must agree for a paired change


def load_models(paths, held_in=SFT_CATEGORIES):
    """Return the ``analyses.Recordings`` of the stores ``paths`` (record stores in ``rows`` with a ``group``
    column, "held-in" or "held-out" by the task's relevant category; patching and ablation stores in
    ``results``). A result store of a kind compare does not read is left out with a note in ``notes``.
    ``UsageError`` for a path that is not a store, or when the stores hold fewer than two models."""
    usable, skipped = [], []
    for path in find_stores(paths):
        kind = result_kind(path)
        if kind is not None and kind not in RESULT_KINDS:
            skipped.append(f"{path} is a {kind} store, which compare does not read; it is left out.")
        else:
            usable.append(path)
    recordings = load(usable)
    recordings.notes[:0] = skipped
    models = model_order(recordings)
    if len(models) < 2:
        raise UsageError(f"compare needs stores of at least two models, got {', '.join(models) or 'none'}")
    if len(recordings.rows):
        categories = recordings.rows["task"].str.split("+").str[0]
        recordings.rows["group"] = np.where(categories.isin(list(held_in)), "held-in", "held-out")
    return recordings


def result_model(path) -> str:
    """Return the model label of a result store (model id plus adapter folder, as ``analyses.load`` labels)."""
    with open_results(path) as store:
        return model_label(store.attrs["model_id"], store.attrs["settings"].get("adapter"))


def model_order(recordings) -> list[str]:
    """Return every model of ``recordings``: those of the record stores in the order given, then those only
    result stores hold. The first is the reference."""
    models = recordings.models()
    for paths in recordings.results.values():
        models += [m for m in map(result_model, paths) if m not in models]
    return list(dict.fromkeys(models))


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
    """Return the record stores' findings as sentences with numbers and intervals, whatever they are."""
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


# ---------------------------------------------------------------- patching and ablation stores


def prompt_keys(store, table: str) -> np.ndarray:
    """Return the pairing key "seed:task:prompt" of every row of an open result store (``table``: "pairs" or
    "examples"); the same key is the same prompt in another model's store of the same settings."""
    n = int(store.attrs["settings"]["n"])
    tasks, examples = store.array(f"{table}/task"), store.array(f"{table}/example")
    return np.array([f"{store.attrs['seed']}:{task}:{example % n}" for task, example in zip(tasks, examples)])


def mismatch(reference: dict, other: dict) -> str | None:
    """Return which prompt settings of two result stores differ (None when they agree), so that their
    rows cannot be paired."""
    differ = [name for name in PROMPT_SETTINGS if reference.get(name) != other.get(name)]
    return ", ".join(differ) if differ else None


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


def by_comparison(paths, models: list, notes: list) -> dict:
    """Return {comparison: [(model, path), ...]} of the patching stores at ``paths``, models in ``models``'
    order; a second store of one model and comparison is left out with a note."""
    from mdlm_interp.analyses.patching import comparison

    groups = {}
    for path in paths:
        with open_results(path, "patching") as store:
            compared, model = comparison(store.attrs["settings"]), result_model(path)
        if any(m == model for m, _ in groups.get(compared, [])):
            notes.append(f"{path}: a second patching store of {model} at {compared}; only the first is compared.")
            continue
        groups.setdefault(compared, []).append((model, path))
    return {c: sorted(members, key=lambda m: models.index(m[0])) for c, members in groups.items()}


def patching_change(paths, models: list, notes: list):
    """Return ``paired_cells`` of every model against the first model of each comparison that has a patching
    store (with model, reference and comparison columns). Stores that cannot be paired with the reference's
    (other prompt settings, another grid, no shared prompts) are left out with a note in ``notes``."""
    import pandas as pd

    frames = []
    for compared, members in by_comparison(paths, models, notes).items():
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


def ablation_outcomes(store):
    """Return one row per (example, mask count, setting, mode) of an open ablation store: key ("seed:task:prompt"),
    masks, setting ("none", "chosen", "control"), mode ("-" for none), correct (for the control: the share of
    draws that answer correctly)."""
    import pandas as pd

    base = pd.DataFrame({"key": prompt_keys(store, "examples"), "masks": store.array("examples/masks")})
    frames = [base.assign(setting="none", mode="-", correct=store.array("examples/correct").astype(float))]
    chosen, control = store.array("ablated/correct"), store.array("control/correct")
    for m, mode in enumerate(store.attrs["modes"]):
        frames.append(base.assign(setting="chosen", mode=mode, correct=chosen[:, m].astype(float)))
        if store.dims["draws"]:
            frames.append(base.assign(setting="control", mode=mode, correct=control[:, :, m].mean(1)))
    return pd.concat(frames, ignore_index=True)


def outcome(outcomes, masks: int, setting: str, mode: str):
    """Return the per-prompt ``correct`` of one mask count, setting and mode of ``ablation_outcomes``, indexed
    by key."""
    rows = outcomes[(outcomes["masks"] == masks) & (outcomes["setting"] == setting) & (outcomes["mode"] == mode)]
    return rows.set_index("key")["correct"]


def ablation_change(paths, models: list, notes: list):
    """Return, per head set, mask count, setting and mode, each model's ablation accuracy against the first
    model with an ablation store of the same heads, on the same prompts: n_pairs, reference_accuracy,
    accuracy, change with low / high, and the change of the ablation's effect (accuracy ablated minus
    unablated, per prompt) with effect_change_low / effect_change_high. Paired 95% bootstrap intervals."""
    import pandas as pd

    stores = {}
    for path in paths:
        with open_results(path, "ablation") as store:
            heads = ",".join(store.attrs["heads"])
            model = result_model(path)
            if model in stores.setdefault(heads, {}):
                notes.append(f"{path}: a second ablation store of {model} for heads {heads}; only the first is "
                             "compared.")
                continue
            stores[heads][model] = (ablation_outcomes(store), store.attrs["settings"])
    out = []
    for heads, by_model in stores.items():
        present = sorted(by_model, key=models.index)
        if len(present) < 2:
            notes.append(f"Only {present[0]} has an ablation store for heads {heads}: shown, no change.")
            continue
        reference = present[0]
        base, base_settings = by_model[reference]
        for model in present[1:]:
            mine, settings = by_model[model]
            if (reason := mismatch(base_settings, settings)) is not None:
                notes.append(f"{model}'s ablation store for heads {heads} differs from {reference}'s in {reason}; "
                             "no change computed.")
                continue
            for (masks, setting, mode), part in mine.groupby(["masks", "setting", "mode"], sort=False):
                d = paired_difference(outcome(base, masks, setting, mode), part.set_index("key")["correct"])
                if not d["n_pairs"]:
                    continue
                row = {"model": model, "reference": reference, "heads": heads, "masks": int(masks),
                       "setting": setting, "mode": mode, "n_pairs": d["n_pairs"], "reference_accuracy": d["base"],
                       "accuracy": d["other"], "change": d["difference"], "low": d["low"], "high": d["high"]}
                e = paired_difference(*(outcome(f, masks, setting, mode) - outcome(f, masks, "none", "-")
                                        for f in (base, mine))) if setting != "none" else {}
                row.update(effect_change=e.get("difference", np.nan), effect_change_low=e.get("low", np.nan),
                           effect_change_high=e.get("high", np.nan))
                out.append(row)
    return pd.DataFrame(out)


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


def ablation_findings(tables: dict, change) -> list[str]:
    """Return sentences on the ablation stores: per model and head set, accuracy at each mask count without
    ablation and with the heads ablated in each mode, and the change against the reference."""
    lines = []
    frame = tables["ablation"]
    for (model, _), part in frame.groupby(["model", "selection"], sort=False):
        heads = part.loc[part["setting"] == "chosen", "heads"].iloc[0]
        texts = []
        for masks in sorted(set(part["masks"])):
            at = part[part["masks"] == masks]
            none = at[at["setting"] == "none"].iloc[0]
            text = (f"{masks_text(masks)}: {none['accuracy']:.1%} [{none['ci_low']:.1%}, {none['ci_high']:.1%}] "
                    "unablated")
            for row in at[at["setting"] == "chosen"].to_dict("records"):
                text += f", {row['mode']} {row['accuracy']:.1%} [{row['ci_low']:.1%}, {row['ci_high']:.1%}]"
            texts.append(text)
        lines.append(f"- {model}, heads {heads} ablated: " + "; ".join(texts) + ".")
    if not change.empty:
        chosen = change[change["setting"] == "chosen"]
        for (model, heads), part in chosen.groupby(["model", "heads"], sort=False):
            texts = [f"{masks_text(r['masks'])} {r['mode']}: effect of the ablation {r['effect_change']:+.1%} "
                     f"[{r['effect_change_low']:+.1%}, {r['effect_change_high']:+.1%}] against {r['reference']}'s"
                     for r in part.to_dict("records")]
            lines.append(f"- {model}, heads {heads}: " + "; ".join(texts) + ".")
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


def result_sections(recordings, models: list, notes: list) -> tuple[dict, list, dict]:
    """Return (tables, figures, findings) of the patching and ablation stores in ``recordings``: figures
    {"patching": rows of FigureOut (``patching_maps``), "ablation": [FigureOut]}, findings {section: lines}."""
    tables, figures, lines = {}, {}, {}
    paths = recordings.results.get("patching", [])
    if paths:
        found = patching(paths)
        change = patching_change(paths, models, notes)
        tables.update(found, patching_change=change)
        figures["patching"] = patching_maps(found, change, models)
        lines["patching"] = patching_findings(found, change)
    paths = recordings.results.get("ablation", [])
    if paths:
        found = ablation(paths)
        change = ablation_change(paths, models, notes)
        tables.update(found, ablation_change=change)
        figures["ablation"] = ablation_figures(found)
        lines["ablation"] = ablation_findings(found, change)
    return tables, figures, lines


def write_comparison(paths, out, *, held_in=SFT_CATEGORIES, command_line: str = "") -> Path:
    """Compare the stores ``paths`` (record, patching and ablation stores, or folders searched for them) into
    folder ``out``; return the path of report.md.

    Writes tables/*.csv (module docstring); figures/accuracy.png, and figures/attention_heads.png (the
    analyses' heatmaps, a row per model) and figures/attention_change.png when attention was recorded;
    for patching stores each model's heatmaps (``analyses.patching``) and figures/patching_change_*.png;
    for ablation stores each model's ablation figure; provenance.json and report.md. Raises ``UsageError``
    before writing anything for a path that is not a store or fewer than two models.
    """
    import pandas as pd

    recordings = load_models(paths, held_in)
    models = model_order(recordings)
    out = prepare_out(out)
    notes = list(recordings.notes)
    tables, figures, lines = {}, [], {"record": []}
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    stamp = f"{command_line} | mdlm-interp {__version__} | {created}"
    if recordings.stores:
        record_models = recordings.models()
        accuracy, change = accuracy_table(recordings), change_table(recordings)
        tables.update(accuracy=accuracy, accuracy_change=change,
                      **analysis_tables(recordings, "gradients", attribution))
        attention_tables = analysis_tables(recordings, "attention", attention)
        heads = attention_tables.get("attention_heads")
        heads_change = attention_change(recordings)
        if heads is not None:
            tables.update(attention_heads=heads, attention_change=heads_change)
        save(accuracy_figure(accuracy), out / "figures" / "accuracy.png", stamp)
        if heads is not None and not heads_change.empty:
            save(change_figure(heads_change), out / "figures" / "attention_change.png", stamp)
        condition = main_condition(attention_tables["attention_summary"]) if heads is not None else None
        if condition is not None:
            save(figure_heads(heads, condition).figure, out / "figures" / "attention_heads.png", stamp)
        lines["record"] = findings(record_models, accuracy, change, pd.DataFrame() if heads is None else heads,
                                   heads_change, tables.get("attribution", pd.DataFrame()))
    results, result_figures, result_lines = result_sections(recordings, models, notes)
    tables.update(results)
    lines.update(result_lines)
    for figure in [f for row in result_figures.get("patching", []) for f in row] + result_figures.get("ablation", []):
        save(figure.figure, out / "figures" / f"{figure.name}.png", stamp)
    for name, frame in tables.items():
        frame.to_csv(out / "tables" / f"{name}.csv", index=False, float_format="%.6g")
    provenance = {
        "command_line": command_line, "toolkit_version": __version__, "created": created, "intervals": INTERVALS,
        "held_in": list(held_in), "reference": models[0], "models": models,
        "stores": [{"path": str(s.path), "model": s.model, "model_id": s.model_id, "weights": s.fingerprint,
                    "seed": s.seed, "rows": s.n_rows, "command_line": s.command_line} for s in recordings.stores],
        "result_stores": [result_provenance(path) for paths in recordings.results.values() for path in paths],
        "notes": notes,
    }
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    report = out / "report.md"
    report.write_text(render(provenance, tables, lines, result_figures))
    return report


def result_provenance(path) -> dict:
    """Return what the report and provenance.json say about one result store."""
    with open_results(path) as store:
        adapter = store.attrs["settings"].get("adapter")
        return {"path": str(path), "kind": store.kind.name, "model": result_model(path),
                "model_id": store.attrs["model_id"],
                "weights": store.attrs["weights_fingerprint"] + (f"+{adapter['fingerprint']}" if adapter else ""),
                "seed": store.attrs["seed"], "rows": store.n_rows, "command_line": store.attrs["command_line"]}


def render(provenance: dict, tables: dict, lines: dict, figures: dict) -> str:
    """Return report.md's text: stores, findings, then a section per analysis (record stores: accuracy, change,
    attribution, attention; result stores: patching maps and their change, ablation)."""
    def weights(s):
        return s["weights"][:19] + ("+adapter" if "+" in s["weights"] else "")

    stores = [{"model": s["model"], "store": s["path"], "seed": s["seed"], "rows": s["rows"], "weights": weights(s)}
              for s in provenance["stores"]]
    results = [{"model": s["model"], "kind": s["kind"], "store": s["path"], "seed": s["seed"], "rows": s["rows"],
                "weights": weights(s)} for s in provenance["result_stores"]]
    text = [
        "# mdlm-interp comparison", "",
        f"Made by `{provenance['command_line']}` with mdlm-interp {provenance['toolkit_version']} on "
        f"{provenance['created']}. Intervals: {provenance['intervals']}. The reference is {provenance['reference']}; "
        f"held-in categories: {', '.join(provenance['held_in'])} (the others are held out).", "",
        "## Stores", "", markdown_table(stores) if stores else "(no record store)", "",
    ]
    if results:
        text += ["Result stores:", "", markdown_table(results), ""]
    text += [f"- {note}" for note in provenance["notes"]] + ([""] if provenance["notes"] else [])
    text += ["## Findings", "", *lines["record"], *lines.get("patching", []), *lines.get("ablation", []), ""]
    if "accuracy" in tables:
        accuracy = tables["accuracy"][["model", "group", *CONDITION, "n", "accuracy", "ci_low", "ci_high"]]
        text += ["## Accuracy against masks", "", "![accuracy](figures/accuracy.png)", "",
                 markdown_table(accuracy.to_dict("records")), "",
                 "## Change against the reference on the same prompts", "",
                 markdown_table(tables["accuracy_change"].to_dict("records")), "",
                 "## Attribution (normalised gradient)", "",
                 markdown_table(tables["attribution"].to_dict("records")) if "attribution" in tables
                 else "(no store recorded /gradients)", "",
                 "## Attention to the masks per layer x head", ""]
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
    text += ["## Patching maps", ""]
    if "patching_cells" in tables:
        text += patching_section(tables, figures["patching"])
    else:
        text += ["(no patching store given: `mdlm-interp patch --adapter ...` writes one per model)", ""]
    text += ["## Ablation", ""]
    if "ablation" in tables:
        text += [" ".join(f"![{f.name}](figures/{f.name}.png)" for f in figures["ablation"]), "",
                 figures["ablation"][0].caption, ""]
        text += ["Tables: [tables/ablation.csv](tables/ablation.csv), "
                 "[tables/ablation_change.csv](tables/ablation_change.csv).", "",
                 markdown_table(tables["ablation_change"].to_dict("records")), ""]
    else:
        text += ["(no ablation store given)", ""]
    return "\n".join(text)


def patching_section(tables: dict, rows: list) -> list[str]:
    """Return the report's patching section: the runs side by side, the maps (``patching_maps``: a line of
    images per row, then its caption), and the cells whose recovery changed most (every cell:
    tables/patching_change.csv)."""
    runs = tables["patching_runs"].assign(gap=lambda f: f["clean_logit_diff"] - f["corrupt_logit_diff"])
    columns = ["model", "comparison", "n", "clean_accuracy", "corrupt_accuracy", "clean_logit_diff",
               "corrupt_logit_diff", "gap", "wrong_token_share"]
    text = [markdown_table(runs[columns].to_dict("records")), ""]
    for row in rows:
        text += [" ".join(f"![{f.name}](figures/{f.name}.png)" for f in row), "", row[0].caption, ""]
    change = tables["patching_change"]
    if not change.empty:
        order = change.assign(size=change["change"].abs()).sort_values("size", ascending=False, kind="stable")
        top = order.groupby(["model", "comparison", "direction", "site"], sort=False).head(3).drop(columns="size")
        columns = ["model", "reference", "comparison", "direction", "site", "layer", "position", "head", "n_pairs",
                   "reference_recovery", "recovery", "change", "change_low", "change_high", "reference_effect",
                   "effect", "effect_change", "effect_change_low", "effect_change_high"]
        text += ["**The three cells per model, direction and site whose recovery changed most** (all cells, with "
                 "each model's interval: [tables/patching_change.csv](tables/patching_change.csv))", "",
                 markdown_table(top[columns].to_dict("records")), ""]
    return text
