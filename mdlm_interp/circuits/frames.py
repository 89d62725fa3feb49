"""Result stores -> pandas DataFrames with intervals (patching grids, ablation effects).

Recovery of a cell is a ratio of means over the pairs, (mean patched - mean corrupt) / (mean clean -
mean corrupt) of the logit difference, so a pair whose clean and corrupt runs barely differ cannot
blow it up; its 95% interval is a seeded bootstrap over pairs. Accuracies carry Wilson intervals,
differences to the unablated run a paired bootstrap over examples.
"""

import numpy as np

from mdlm_interp.circuits.pairs import recovery
from mdlm_interp.circuits.stats import N_BOOT, bootstrap_indices, wilson_interval
from mdlm_interp.store.results import SITES


def _ratio_of_means(values: np.ndarray, clean: np.ndarray, corrupt: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Return the recovery of every column of ``values`` [pairs, cells] over the pair indices ``rows``
    ([pairs] or [boot, pairs] -> [cells] or [boot, cells])."""
    patched = np.nanmean(values[rows], axis=-2)
    return recovery(patched, clean[rows].mean(-1)[..., None], corrupt[rows].mean(-1)[..., None])


def patching_frame(store, seed: int = 0, n_boot: int = N_BOOT):
    """Return one row per cell of a patching store's grids (both directions, every site).

    Columns: direction, site, layer (for resid_pre, ``n_layers`` is the final residual), position
    (the position group, or the head group for z), head (-1 for the residual sites), n (pairs),
    logit_diff and p_answer (means of the patched runs), recovery with recovery_low / recovery_high
    (95% bootstrap over pairs), attribution_recovery (the same ratio for attribution patching's
    estimate; NaN when it was not computed).
    """
    import pandas as pd

    groups, head_groups = store.attrs["position_groups"], store.attrs["head_groups"]
    clean = store.array("pairs/clean_logit_diff").astype(np.float64)
    corrupt = store.array("pairs/corrupt_logit_diff").astype(np.float64)
    n = len(clean)
    boot = bootstrap_indices(n, seed, n_boot)
    frames = []
    for d, direction in enumerate(store.attrs["directions"]):
        for site in SITES:
            exact = store.array(f"patching/{site}_logit_diff")[:, d].astype(np.float64)
            grid = exact.shape[1:]
            flat = exact.reshape(n, -1)
            estimate = store.array(f"attribution/{site}_logit_diff")[:, d].astype(np.float64).reshape(n, -1)
            p_answer = store.array(f"patching/{site}_p_answer")[:, d].astype(np.float64).reshape(n, -1)
            boot_recovery = _ratio_of_means(flat, clean, corrupt, boot)
            index = np.indices(grid).reshape(len(grid), -1)
            if site == "z":
                layer, head, position = index[0], index[1], [head_groups[k] for k in index[2]]
            else:
                layer, head, position = index[0], np.full(index.shape[1], -1), [groups[g] for g in index[1]]
            frames.append(pd.DataFrame({
                "direction": direction, "site": site, "layer": layer, "position": position, "head": head, "n": n,
                "logit_diff": np.nanmean(flat, 0), "p_answer": np.nanmean(p_answer, 0),
                "recovery": _ratio_of_means(flat, clean, corrupt, np.arange(n)),
                "recovery_low": np.nanpercentile(boot_recovery, 2.5, axis=0),
                "recovery_high": np.nanpercentile(boot_recovery, 97.5, axis=0),
                "attribution_recovery": (_ratio_of_means(estimate, clean, corrupt, np.arange(n))
                                         if np.isfinite(estimate).any() else np.nan),
            }))
    return pd.concat(frames, ignore_index=True)


def pair_summary(store) -> dict:
    """Return the clean and corrupt runs' accuracy (with Wilson intervals), mean p(answer) and mean
    logit difference, and the share of corrupt predictions that are the wrong token."""
    summary = {"n": store.n_rows}
    for run in ("clean", "corrupt"):
        correct = store.array(f"pairs/{run}_correct")
        low, high = wilson_interval(int(correct.sum()), len(correct))
        summary[run] = {"accuracy": float(correct.mean()), "ci_low": low, "ci_high": high,
                        "p_answer": float(store.array(f"pairs/{run}_p_answer").mean()),
                        "logit_diff": float(store.array(f"pairs/{run}_logit_diff").mean())}
    summary["corrupt_says_wrong_token"] = float(
        (store.array("pairs/corrupt_predicted_id") == store.array("pairs/wrong_id")).mean())
    return summary


def ablation_frame(store, seed: int = 0, n_boot: int = N_BOOT):
    """Return one row per (masks, setting, mode) of an ablation store.

    setting: "none" (no ablation; mode "-"), "chosen" (the chosen heads), "control" (the random heads,
    pooled over draws: per example the share of draws that answer correctly). Columns: masks,
    setting, mode, heads, n, accuracy with ci_low / ci_high (Wilson; for the control a bootstrap over
    examples of the pooled accuracy), p_answer, delta_accuracy (against "none" on the same examples)
    with delta_low / delta_high (95% paired bootstrap), and for the control draws, draw_min and
    draw_max (the lowest and highest accuracy of a single draw).
    """
    import pandas as pd

    examples = store.examples
    modes = store.attrs["modes"]
    ablated = {name: store.array(f"ablated/{name}") for name in ("correct", "p_answer")}
    control = {name: store.array(f"control/{name}") for name in ("correct", "p_answer")}
    n_draws = store.dims["draws"]
    rows = []
    for masks in sorted(set(examples["masks"])):
        selected = np.flatnonzero(examples["masks"].to_numpy() == masks)
        n = len(selected)
        boot = bootstrap_indices(n, seed, n_boot)
        base = examples["correct"].to_numpy()[selected].astype(np.float64)

        def row(setting, mode, heads, correct, p_answer, pooled=False, draws=None):
            accuracy = float(correct.mean())
            if pooled:
                samples = correct[boot].mean(1)
                low, high = (float(v) for v in np.percentile(samples, [2.5, 97.5]))
            else:
                low, high = wilson_interval(int(correct.sum()), n)
            delta = correct[boot].mean(1) - base[boot].mean(1)
            entry = {"masks": int(masks), "setting": setting, "mode": mode, "heads": heads, "n": n,
                     "accuracy": accuracy, "ci_low": low, "ci_high": high, "p_answer": float(p_answer.mean()),
                     "delta_accuracy": accuracy - float(base.mean()),
                     "delta_low": float(np.percentile(delta, 2.5)), "delta_high": float(np.percentile(delta, 97.5)),
                     "draw_min": np.nan, "draw_max": np.nan}
            if draws is not None:
                entry["draw_min"], entry["draw_max"] = float(draws.min()), float(draws.max())
            rows.append(entry)

        row("none", "-", "", base, examples["p_answer"].to_numpy()[selected])
        chosen = ",".join(store.attrs["heads"])
        for m, mode in enumerate(modes):
            row("chosen", mode, chosen, ablated["correct"][selected, m].astype(np.float64),
                ablated["p_answer"][selected, m])
            if n_draws:
                correct = control["correct"][selected, :, m].astype(np.float64)
                row("control", mode, f"{n_draws} random draws", correct.mean(1), control["p_answer"][selected, :, m],
                    pooled=True, draws=correct.mean(0))
    return pd.DataFrame(rows)
