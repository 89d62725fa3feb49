"""compare, ablation stores: accuracy with the heads ablated and the ablation's effect, paired against the reference."""

import numpy as np

from mdlm_interp.analyses.grouped import masks_text
from mdlm_interp.analyses.stats import paired_difference
from mdlm_interp.compare.pairing import mismatch, prompt_keys
from mdlm_interp.store.results import open_results

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


def ablation_change(paths, labels: dict, models: list, notes: list):
    """Return, per head set, mask count, setting and mode, each model's ablation accuracy against the first
    model with an ablation store of the same heads, on the same prompts: n_pairs, reference_accuracy,
    accuracy, change with low / high, and the change of the ablation's effect (accuracy ablated minus
    unablated, per prompt) with effect_change_low / effect_change_high. Paired 95% bootstrap intervals."""
    import pandas as pd

    stores = {}
    for path in paths:
        with open_results(path, "ablation") as store:
            heads = ",".join(store.attrs["heads"])
            model = labels[path]
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


