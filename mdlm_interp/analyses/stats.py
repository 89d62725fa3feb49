"""95% intervals: Wilson score intervals for proportions, a seeded percentile bootstrap for the rest.

Every function is deterministic: the bootstrap draws its resamples from ``numpy.random.default_rng``
seeded with ``BOOTSTRAP_SEED`` (or the caller's seed), so the same data give the same interval.
"""

from functools import lru_cache

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
INTERVALS = ("accuracies and other proportions: Wilson score 95% intervals; means, differences and "
             f"correlations: 95% percentile bootstrap over examples ({BOOTSTRAP_RESAMPLES} resamples, seed "
             f"{BOOTSTRAP_SEED}; paired comparisons resample matched pairs, correlations resample tasks)")


def wilson_interval(successes, n) -> tuple[np.ndarray, np.ndarray]:
    """Return the Wilson score 95% interval (low, high) of ``successes`` out of ``n``, elementwise.

    Works on scalars or arrays of the same shape; NaN where n is 0. The bounds always hold the point
    estimate ``successes / n`` (rounding would otherwise put a bound 1e-16 beyond it at 0% or 100%).
    """
    successes = np.asarray(successes, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = successes / n
        z2n = Z95 ** 2 / n
        centre = (p + z2n / 2) / (1 + z2n)
        half = Z95 * np.sqrt(p * (1 - p) / n + z2n / (4 * n)) / (1 + z2n)
        low, high = np.clip(np.fmin(centre - half, p), 0, 1), np.clip(np.fmax(centre + half, p), 0, 1)
    return np.where(n > 0, low, np.nan), np.where(n > 0, high, np.nan)


def holm(p_values) -> np.ndarray:
    """Return Holm's step-down adjusted p-values of ``p_values`` [m] (family-wise error over the m tests), in
    the input order: the k-th smallest is max over j <= k of (m - j + 1) * p_(j), capped at 1. NaN stays
    NaN and does not count as a test."""
    p = np.asarray(p_values, dtype=float).reshape(-1)
    out = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    out[order] = np.minimum(np.maximum.accumulate((m - np.arange(m)) * p[order]), 1.0)
    return out.reshape(np.shape(p_values))


def resample_weights(n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Return bootstrap weights [resamples, n]: how often each of n items is drawn, divided by n.

    ``weights @ values`` gives the resampled means of ``values`` [n, ...] without materialising the
    resamples (cheap for per-layer x head arrays).
    """
    return _weights(int(n), int(resamples), int(seed))


@lru_cache(maxsize=64)
def _weights(n: int, resamples: int, seed: int) -> np.ndarray:
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    counts = np.zeros((resamples, n))
    np.add.at(counts, (np.repeat(np.arange(resamples), n), draws.ravel()), 1.0)
    counts /= n
    counts.flags.writeable = False
    return counts


def bootstrap_mean(values, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED):
    """Return (mean, low, high) of ``values`` [n, ...] along axis 0, with a 95% percentile bootstrap interval.

    NaN rows (all entries NaN along the trailing axes) are dropped first; with no rows left every
    output is NaN. Outputs have the shape of one row (scalars for 1-D input).
    """
    values = np.asarray(values, dtype=float)
    shape = values.shape[1:]
    flat = values.reshape(len(values), int(np.prod(shape)))
    flat = flat[~np.isnan(flat).all(axis=1)]
    if len(flat) == 0:
        nan = np.full(shape, np.nan)
        return _scalar(nan), _scalar(nan.copy()), _scalar(nan.copy())
    means = resample_weights(len(flat), resamples, seed) @ flat  # [resamples, cells]
    low, high = np.percentile(means, [2.5, 97.5], axis=0)
    return _scalar(flat.mean(0).reshape(shape)), _scalar(low.reshape(shape)), _scalar(high.reshape(shape))


def paired_difference(base, other, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    """Compare two conditions on the same examples: ``base`` and ``other`` are pandas Series indexed by
    the pairing key (e.g. (seed, task, prompt)); only keys present in both count.

    Returns {"n_pairs", "base", "other", "difference" (other - base), "low", "high"}: the means over the
    matched pairs and a bootstrap interval that resamples pairs. Booleans are read as 0/1.
    """
    joined = base.astype(float).to_frame("base").join(other.astype(float).rename("other"), how="inner")
    joined = joined.dropna()
    if joined.empty:
        return {"n_pairs": 0, "base": np.nan, "other": np.nan, "difference": np.nan, "low": np.nan, "high": np.nan}
    mean, low, high = bootstrap_mean((joined["other"] - joined["base"]).to_numpy(), resamples, seed)
    return {"n_pairs": len(joined), "base": joined["base"].mean(), "other": joined["other"].mean(),
            "difference": mean, "low": low, "high": high}


def independent_difference(base, other, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    """Compare two independent samples (different prompts): mean(other) - mean(base) with a bootstrap
    interval that resamples each sample on its own. Returns the keys of ``paired_difference``, with
    n_base and n_other instead of n_pairs."""
    base = np.asarray(base, dtype=float)
    other = np.asarray(other, dtype=float)
    base, other = base[~np.isnan(base)], other[~np.isnan(other)]
    if len(base) == 0 or len(other) == 0:
        return {"n_base": len(base), "n_other": len(other), "base": np.nan, "other": np.nan,
                "difference": np.nan, "low": np.nan, "high": np.nan}
    differences = (resample_weights(len(other), resamples, seed) @ other
                   - resample_weights(len(base), resamples, seed + 1) @ base)
    low, high = np.percentile(differences, [2.5, 97.5])
    return {"n_base": len(base), "n_other": len(other), "base": base.mean(), "other": other.mean(),
            "difference": other.mean() - base.mean(), "low": float(low), "high": float(high)}


def bootstrap_correlation(x, y, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    """Return {"n", "pearson", "low", "high", "spearman"} for paired samples x, y (e.g. one value per task).

    The interval resamples the pairs; resamples where either side is constant are dropped. NaN when
    fewer than 3 pairs or either side is constant.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    out = {"n": len(x), "pearson": np.nan, "low": np.nan, "high": np.nan, "spearman": np.nan}
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    out["pearson"] = float(np.corrcoef(x, y)[0, 1])
    out["spearman"] = float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])
    index = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    xs, ys = x[index], y[index]
    xs, ys = xs - xs.mean(1, keepdims=True), ys - ys.mean(1, keepdims=True)
    norm = np.sqrt((xs ** 2).sum(1) * (ys ** 2).sum(1))
    valid = norm > 0
    r = (xs * ys).sum(1)[valid] / norm[valid]
    out["low"], out["high"] = (float(v) for v in np.percentile(r, [2.5, 97.5]))
    return out


def spearman(x, y) -> np.ndarray:
    """Return Spearman's rho between every column of ``x`` [n, ...] and ``y`` [n] (average ranks for ties),
    shaped like one row of ``x``; NaN where a side is constant or n < 2."""
    import pandas as pd

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    shape = x.shape[1:]
    if len(y) < 2:
        return np.full(shape, np.nan)
    rx = pd.DataFrame(x.reshape(len(x), -1)).rank().to_numpy()
    ry = _ranks(y)
    rx, ry = rx - rx.mean(0), ry - ry.mean()
    norm = np.sqrt((rx ** 2).sum(0) * (ry ** 2).sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(norm > 0, (rx * ry[:, None]).sum(0) / norm, np.nan)
    return rho.reshape(shape)


def recovery(patched, clean, corrupt) -> np.ndarray:
    """Return (patched - corrupt) / (clean - corrupt) as float64, elementwise with numpy broadcasting (NaN
    where clean == corrupt): 1 when a patched run is as good as the clean run, 0 as bad as the corrupt run."""
    patched, clean, corrupt = (np.asarray(v, dtype=float) for v in (patched, clean, corrupt))
    gap = clean - corrupt
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gap == 0, np.nan, (patched - corrupt) / gap)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as Spearman's rho needs."""
    import pandas as pd

    return pd.Series(values).rank().to_numpy()


def _scalar(array: np.ndarray):
    return float(array) if array.ndim == 0 else array
