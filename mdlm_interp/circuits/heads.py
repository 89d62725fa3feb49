"""Head ranking: which heads look at the masks from the answer slot, and does that go with the loss?

Reads a record store (``mdlm-interp record`` with attention, at masks 1 and at a larger mask count).
Heads are ordered by their mean attention mass from the answer readout on the masks after the
answer slot (``attention/mask_mass_from_answer``) at that mask count. Per head, the Spearman rank
correlation across examples between that mass and the loss of p(answer) against the same example at
masks 1 (paired by example id and placement) says whether the examples on which a head looks more at
the masks are the ones that lose more. Intervals: seeded bootstrap over examples; the correlation's
p-value: a seeded permutation test (the losses shuffled across examples). Where the store holds the
filler control at the same count, the same head's mass on the fillers is the control.
"""

import numpy as np

from mdlm_interp.circuits.stats import N_BOOT, bootstrap_indices, spearman
from mdlm_interp.errors import UsageError

MASS = "attention/mask_mass_from_answer"


def paired_rows(examples, masks: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (corrupt rows, clean rows): row indices of the non-filler rows at ``masks`` and of the
    masks-1 row of the same (example, placement), for every example that has both."""
    plain = examples[~examples["filler"].astype(bool)]
    key = ["example", "placement"]
    corrupt = plain[plain["masks"] == masks].reset_index()[key + ["index"]]
    clean = plain[plain["masks"] == 1].reset_index()[key + ["index"]]
    joined = corrupt.merge(clean, on=key, suffixes=("_corrupt", "_clean"))
    return joined["index_corrupt"].to_numpy(), joined["index_clean"].to_numpy()


def head_ranking(store, masks: int | None = None, seed: int = 0, n_boot: int = N_BOOT):
    """Return a pandas DataFrame with one row per head, ordered by mean attention mass on the masks.

    Columns: rank (1 = most mass), head ("L.H"), layer, head_index, n (paired examples), mask_mass
    (mean mass from the answer readout on the masks after the answer slot at ``masks``, default the
    store's largest count) with mask_mass_low / mask_mass_high (95% bootstrap), filler_mass (the same
    head's mean mass on the fillers at that count; NaN without the filler control), rho (Spearman
    correlation of mass with p(answer at masks 1) - p(answer at ``masks``)) with rho_low / rho_high
    (95% bootstrap) and p_permutation (two-sided, ``n_boot`` shuffles). Raises ``UsageError`` when the
    store lacks attention or the rows to pair.
    """
    import pandas as pd

    if "attention" not in store.groups:
        raise UsageError(f"{store.path} has no attention recorded; record with --record attention")
    examples = store.examples
    plain_masks = sorted(set(examples.loc[~examples["filler"].astype(bool), "masks"].astype(int)))
    masks = max(plain_masks) if masks is None else int(masks)
    if masks < 2 or masks not in plain_masks or 1 not in plain_masks:
        raise UsageError(f"ranking heads needs rows at masks 1 and at a count above 1; the store has masks "
                         f"{plain_masks}" + (f", not {masks}" if masks not in plain_masks else ""))
    corrupt_rows, clean_rows = paired_rows(examples, masks)
    if not len(corrupt_rows):
        raise UsageError(f"no example of {store.path} is recorded at both masks 1 and masks {masks}")
    mass_all = store.array(MASS)
    mass = mass_all[corrupt_rows].astype(np.float64)  # [pairs, layer, head]
    p_answer = examples["p_answer"].to_numpy(np.float64)
    loss = p_answer[clean_rows] - p_answer[corrupt_rows]
    n, n_layers, n_heads = mass.shape

    rho = spearman(mass, loss)
    boot = bootstrap_indices(n, seed, n_boot)
    boot_mass = np.stack([mass[rows].mean(0) for rows in boot])
    boot_rho = np.stack([spearman(mass[rows], loss[rows]) for rows in boot])
    shuffles = np.random.default_rng(seed + 1)
    null = np.stack([spearman(mass, shuffles.permutation(loss)) for _ in range(n_boot)])
    p_perm = (1 + (np.abs(null) >= np.abs(rho)[None] - 1e-12).sum(0)) / (1 + n_boot)

    filler = examples["filler"].astype(bool).to_numpy() & (examples["masks"].to_numpy() == masks)
    filler_mass = mass_all[filler].astype(np.float64).mean(0) if filler.any() else np.full((n_layers, n_heads), np.nan)

    layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
    frame = pd.DataFrame({
        "head": [f"{l}.{h}" for l, h in zip(layer.ravel(), head.ravel())],
        "layer": layer.ravel(), "head_index": head.ravel(), "n": n, "masks": masks,
        "mask_mass": mass.mean(0).ravel(),
        "mask_mass_low": np.nanpercentile(boot_mass, 2.5, axis=0).ravel(),
        "mask_mass_high": np.nanpercentile(boot_mass, 97.5, axis=0).ravel(),
        "filler_mass": filler_mass.ravel(),
        "rho": rho.ravel(),
        "rho_low": nan_percentile(boot_rho, 2.5).ravel(),
        "rho_high": nan_percentile(boot_rho, 97.5).ravel(),
        "p_permutation": p_perm.ravel(),
    })
    frame = frame.sort_values(["mask_mass", "layer", "head_index"], ascending=[False, True, True], kind="mergesort")
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    return frame.reset_index(drop=True)


def nan_percentile(values: np.ndarray, q: float) -> np.ndarray:
    """Return the q-th percentile along axis 0 ignoring NaN (NaN where every value is NaN)."""
    finite = np.isfinite(values).any(0)
    out = np.full(values.shape[1:], np.nan)
    if finite.any():
        out[finite] = np.nanpercentile(values[:, finite], q, axis=0)
    return out
