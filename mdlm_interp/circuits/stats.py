"""Intervals and rank correlations for the circuit frames (numpy only, deterministic from a seed).

Accuracies get Wilson score intervals; means, differences and correlations get percentile intervals
from a seeded bootstrap over examples (``N_BOOT`` resamples); a paired comparison resamples the
examples once for both of its sides.
"""

import numpy as np

N_BOOT = 1000
Z95 = 1.959963984540054


def wilson_interval(successes, n) -> tuple[float, float]:
    """Return the 95% Wilson score interval (low, high) of a proportion; (nan, nan) for n = 0."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * np.sqrt(p * (1 - p) / n + Z95**2 / (4 * n**2)) / (1 + Z95**2 / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def bootstrap_indices(n: int, seed: int = 0, n_boot: int = N_BOOT) -> np.ndarray:
    """Return int [n_boot, n]: row indices of ``n_boot`` resamples (with replacement) of n examples."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_interval(statistic, n: int, seed: int = 0, n_boot: int = N_BOOT) -> tuple[float, float]:
    """Return the 95% percentile interval of ``statistic(indices)`` over seeded resamples of n examples.

    ``statistic`` takes an int array [n] of example indices and returns a float (NaN results are
    ignored); (nan, nan) when n = 0 or every resample gives NaN.
    """
    if n == 0:
        return float("nan"), float("nan")
    values = np.array([statistic(rows) for rows in bootstrap_indices(n, seed, n_boot)], dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Return the ranks (1-based, ties averaged) of ``values`` along axis 0, float64 of the same shape."""
    values = np.asarray(values, dtype=np.float64)
    flat = values.reshape(len(values), -1)
    ranks = np.empty_like(flat)
    for column in range(flat.shape[1]):
        x = flat[:, column]
        order = np.argsort(x, kind="mergesort")
        sorted_x = x[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sorted_x)) + 1]
        ends = np.r_[starts[1:], len(x)]
        average = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
        ranks[order, column] = np.repeat(average, ends - starts)
    return ranks.reshape(values.shape)


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Return the Spearman rank correlation between every column of ``x`` [n, ...] and ``y`` [n]:
    an array of shape x.shape[1:] (NaN where a side is constant or n < 2)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(y) < 2:
        return np.full(x.shape[1:], np.nan)
    rx = average_ranks(x).reshape(len(x), -1)
    ry = average_ranks(y)
    rx = rx - rx.mean(0)
    ry = ry - ry.mean()
    denominator = np.sqrt((rx**2).sum(0) * (ry**2).sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(denominator > 0, (rx * ry[:, None]).sum(0) / denominator, np.nan)
    return rho.reshape(x.shape[1:])
