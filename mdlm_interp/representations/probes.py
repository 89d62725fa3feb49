"""Linear probes: ridge (closed form) and logistic, cross-validated by group, never by row.

Rows that share a group (a prompt key: every position and condition of one prompt) are near copies of
each other, so a row-wise split puts copies of a test row in training and inflates the score. Here
every group's rows fall in one fold (``group_folds``), each fold's rows are predicted by a probe fit on
the other folds, and the score is computed on the pooled held-out predictions: R^2 = 1 - SSE / SST
(SST around the mean of all rows) for ridge, accuracy for logistic. The interval is a percentile
bootstrap over groups (groups resampled with replacement, the score recomputed on their held-out
predictions), 95% by default. The saved direction is the probe fit on all rows.

Both probes fit on centred activations divided by one scalar (their root mean square), which keeps
the geometry (a direction in activation space stays one) and makes ``alpha`` scale free: ridge
minimises ||y - X w||^2 + alpha n ||w||^2, logistic the mean log loss + alpha / 2 ||w||^2, in those
scaled units; by default alpha is chosen from ``ALPHA_GRID`` by nested group cross-validation.
Directions are returned in the original units: prediction = x @ direction + intercept.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mdlm_interp.errors import UsageError

KINDS = ("ridge", "logistic")
DIRECTIONS_FILE = "directions.safetensors"
PROBES_FILE = "probes.json"
ALPHA_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # alpha None: chosen from these by nested cross-validation


@dataclass
class ProbeResult:
    """One probe: held-out ``score`` (metric "r2" or "accuracy") with its bootstrap ``interval``, the
    per-fold scores, the direction [d] and intercept fit on all rows, and what it was fit on."""

    site: str
    label: str
    kind: str
    metric: str
    score: float
    interval: tuple
    fold_scores: list
    direction: np.ndarray = field(repr=False)
    intercept: float
    n_rows: int
    n_groups: int
    n_folds: int
    alpha: float
    seed: int
    chance: float | None = None  # logistic: the majority class's share
    fold_alphas: list = field(default_factory=list)  # the alpha each fold's probe used

    def record(self) -> dict:
        """Return the JSON dict of this probe (everything but the direction)."""
        record = {k: v for k, v in asdict(self).items() if k != "direction"}
        record["interval"] = list(self.interval)
        record["direction_norm"] = float(np.linalg.norm(self.direction))
        return record


def group_folds(groups, n_folds: int, seed: int = 0) -> np.ndarray:
    """Return the fold [n] (0 .. n_folds - 1) of each row: every group's rows share one fold; groups
    are shuffled (seeded), then, largest first, each goes to the fold with fewest rows so far."""
    names, index, sizes = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    if n_folds < 2:
        raise UsageError(f"cross-validation needs at least 2 folds (got {n_folds})")
    if len(names) < n_folds:
        raise UsageError(f"{len(names)} prompt group(s) cannot fill {n_folds} folds: use more prompts or fewer folds")
    order = np.random.default_rng(seed).permutation(len(names))
    order = order[np.argsort(-sizes[order], kind="stable")]
    fold_of_group, load = np.zeros(len(names), dtype=np.int64), np.zeros(n_folds, dtype=np.int64)
    for g in order:
        fold_of_group[g] = int(np.argmin(load))
        load[fold_of_group[g]] += sizes[g]
    return fold_of_group[index]


def _scaled(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    mean = x.mean(axis=0)
    centred = x - mean
    scale = float(np.sqrt((centred ** 2).mean())) or 1.0
    return centred / scale, mean, scale


def ridge_path(x: np.ndarray, y: np.ndarray, alphas) -> list:
    """Return [(direction [d], intercept)] of ridge regression of ``y`` [n] on ``x`` [n, d], one per
    alpha of ``alphas``, from one eigendecomposition (float64; of the d x d Gram matrix, or the n x n
    one when d > n)."""
    z, mean, scale = _scaled(np.asarray(x, dtype=np.float64))
    y = np.asarray(y, dtype=np.float64)
    n, d = z.shape
    target = y - y.mean()
    if d <= n:
        values, vectors = np.linalg.eigh(z.T @ z)
        projected = vectors.T @ (z.T @ target)
        weights = [vectors @ (projected / (values + alpha * n)) for alpha in alphas]
    else:
        values, vectors = np.linalg.eigh(z @ z.T)
        projected = vectors.T @ target
        weights = [z.T @ (vectors @ (projected / (values + alpha * n))) for alpha in alphas]
    return [(w / scale, float(y.mean() - mean @ (w / scale))) for w in weights]


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Return (direction [d], intercept) of ridge regression of ``y`` [n] on ``x`` [n, d] (``ridge_path``
    at one alpha)."""
    return ridge_path(x, y, [alpha])[0]


def fit_logistic(x: np.ndarray, y: np.ndarray, alpha: float, max_iter: int = 100) -> tuple[np.ndarray, float]:
    """Return (direction [d], intercept) of L2-regularised logistic regression of ``y`` [n] in {0, 1}
    on ``x`` [n, d] (L-BFGS in float64, deterministic); P(y = 1) = sigmoid(x @ direction + intercept)."""
    import torch

    z, mean, scale = _scaled(np.asarray(x, dtype=np.float64))
    features, target = torch.from_numpy(z), torch.from_numpy(np.asarray(y, dtype=np.float64))
    w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(features @ w + b, target) + alpha / 2 * (w @ w)
        loss.backward()
        return loss

    optimizer.step(closure)
    direction = w.detach().numpy() / scale
    return direction, float(b.detach()) - float(mean @ direction)


def _group_sums(fold_predictions: np.ndarray, y: np.ndarray, group_index: np.ndarray, kind: str) -> np.ndarray:
    """Per group [G, 4]: rows, and the sums the metric needs (ridge: squared error, y, y^2;
    logistic: correct predictions)."""
    count = np.bincount(group_index).astype(np.float64)
    if kind == "ridge":
        columns = [(y - fold_predictions) ** 2, y, y ** 2]
    else:
        columns = [((fold_predictions > 0) == (y > 0.5)).astype(np.float64), np.zeros_like(y), np.zeros_like(y)]
    return np.stack([count] + [np.bincount(group_index, weights=c, minlength=len(count)) for c in columns], axis=1)


def _metric(sums: np.ndarray, kind: str) -> np.ndarray:
    """Score per row of ``sums`` [..., 4] (totals over groups): R^2 or accuracy."""
    n, first, total, squares = sums[..., 0], sums[..., 1], sums[..., 2], sums[..., 3]
    if kind == "logistic":
        return first / n
    return 1 - first / np.maximum(squares - total ** 2 / n, 1e-300)


def held_out_predictions(x: np.ndarray, y: np.ndarray, folds: np.ndarray, kind: str, alphas) -> np.ndarray:
    """Return the predictions [len(alphas), n] of every row by the probes fit on the other folds
    (``folds`` [n], from ``group_folds``), one row per alpha."""
    predictions = np.empty((len(alphas), len(y)))
    for fold in np.unique(folds):
        test = folds == fold
        fits = (ridge_path(x[~test], y[~test], alphas) if kind == "ridge"
                else [fit_logistic(x[~test], y[~test], alpha) for alpha in alphas])
        for i, (direction, intercept) in enumerate(fits):
            predictions[i, test] = x[test] @ direction + intercept
    return predictions


def choose_alpha(x: np.ndarray, y: np.ndarray, groups: np.ndarray, kind: str, n_folds: int, seed: int,
                 alphas=ALPHA_GRID) -> float:
    """Return the alpha of ``alphas`` whose group-cross-validated pooled score on these rows is best
    (ties go to the larger alpha); ``n_folds`` is capped at the number of groups."""
    folds = group_folds(groups, min(n_folds, len(np.unique(groups))), seed)
    _, group_index = np.unique(groups, return_inverse=True)
    predictions = held_out_predictions(x, y, folds, kind, alphas)
    scores = [float(_metric(_group_sums(p, y, group_index, kind).sum(0), kind)) for p in predictions]
    best = max(range(len(alphas)), key=lambda i: (scores[i], alphas[i]))
    return alphas[best]


def fit_probe(x, y, groups, *, site: str = "", label: str = "", kind: str = "ridge", n_folds: int = 5,
              alpha: float | None = None, seed: int = 0, n_boot: int = 1000, confidence: float = 0.95) -> ProbeResult:
    """Return the cross-validated probe of label ``y`` [n] on activations ``x`` [n, d] with rows
    grouped by ``groups`` [n] (prompt keys): held-out score, its group-bootstrap interval, fold scores,
    and the direction fit on all rows (see the module docstring). ``kind``: "ridge" or "logistic"
    (labels then must take exactly two values; the larger one is class 1). ``alpha`` None chooses it
    from ``ALPHA_GRID`` by nested cross-validation: within each outer fold's training prompts for its
    held-out predictions (so the score stays held out), on all rows for the saved direction."""
    if kind not in KINDS:
        raise UsageError(f"unknown probe kind {kind!r}; choose from {', '.join(KINDS)}")
    if alpha is not None and not (np.isfinite(alpha) and alpha > 0):
        raise UsageError(f"the probe's alpha must be a finite positive number (got {alpha})")
    if seed < 0 or not 1 <= n_boot <= 1_000_000 or not 0 < confidence < 1:
        raise UsageError(f"probe: seed must be at least 0, bootstrap resamples 1 to 1000000 and confidence in (0, 1) "
                         f"(got {seed}, {n_boot}, {confidence})")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    groups = np.asarray(groups)
    if x.ndim != 2 or len(x) != len(y) or len(y) != len(groups):
        raise ValueError(f"x [n, d], y [n] and groups [n] disagree: {x.shape}, {y.shape}, {len(groups)}")
    if not np.isfinite(y).all():
        raise UsageError(f"label {label!r} has missing or non-finite values")
    chance = None
    if kind == "logistic":
        values = np.unique(y)
        if len(values) != 2:
            raise UsageError(f"a logistic probe needs a label with two values; {label!r} has {len(values)}")
        y = (y == values[1]).astype(np.float64)
        chance = float(max(y.mean(), 1 - y.mean()))
    fit = fit_ridge if kind == "ridge" else fit_logistic
    folds = group_folds(groups, n_folds, seed)
    held_out = np.empty(len(y))
    fold_scores, fold_alphas = [], []
    _, group_index = np.unique(groups, return_inverse=True)
    for fold in range(n_folds):
        test = folds == fold
        chosen = alpha if alpha is not None else choose_alpha(x[~test], y[~test], groups[~test], kind, n_folds, seed)
        direction, intercept = fit(x[~test], y[~test], chosen)
        held_out[test] = x[test] @ direction + intercept
        fold_alphas.append(chosen)
        fold_scores.append(float(_metric(_group_sums(held_out[test], y[test], group_index[test], kind).sum(0), kind)))
    sums = _group_sums(held_out, y, group_index, kind)
    sums = sums[sums[:, 0] > 0]
    counts = np.random.default_rng(seed).multinomial(len(sums), np.full(len(sums), 1 / len(sums)), size=n_boot)
    boot = _metric(counts.astype(np.float64) @ sums, kind)
    tail = (1 - confidence) / 2 * 100
    final_alpha = alpha if alpha is not None else choose_alpha(x, y, groups, kind, n_folds, seed)
    direction, intercept = fit(x, y, final_alpha)
    return ProbeResult(site=site, label=label, kind=kind, metric="r2" if kind == "ridge" else "accuracy",
                       score=float(_metric(sums.sum(0), kind)),
                       interval=(float(np.percentile(boot, tail)), float(np.percentile(boot, 100 - tail))),
                       fold_scores=fold_scores, direction=direction, intercept=intercept, n_rows=len(y),
                       n_groups=len(sums), n_folds=n_folds, alpha=final_alpha, seed=seed, chance=chance,
                       fold_alphas=fold_alphas)


def save_probes(results: list, out, provenance: dict | None = None) -> Path:
    """Write probes to a new folder ``out``: ``directions.safetensors`` (one float32 [d] tensor per site,
    named by the site's hook name) and ``probes.json`` ({"provenance", "probes": [record, ...]});
    return the folder. An existing ``out`` that is not an empty folder is a one-line UsageError."""
    import torch
    from safetensors.torch import save_file

    out = check_new_folder(out)
    sites = [r.site for r in results]
    if len(set(sites)) != len(sites):
        raise ValueError(f"one probe per site: {sites}")
    out.mkdir(parents=True, exist_ok=True)
    save_file({r.site: torch.tensor(r.direction, dtype=torch.float32) for r in results}, str(out / DIRECTIONS_FILE))
    document = {"provenance": provenance or {}, "probes": [r.record() for r in results]}
    (out / PROBES_FILE).write_text(json.dumps(document, indent=2) + "\n")
    return out


def check_new_folder(out) -> Path:
    """Return ``out`` as a Path if a new output folder can be made there (missing or empty, writable,
    no other writer); a one-line UsageError otherwise."""
    from mdlm_interp.outputs import check_output_dir

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} exists; choose a new output folder")
    return check_output_dir(out)


def load_direction(path, site: str):
    """Return (direction [d] float32 tensor, its probe record) of ``site`` from a folder written by
    ``save_probes``; a missing folder or site is a one-line UsageError."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        document = json.loads((path / PROBES_FILE).read_text())
        tensors = load_file(str(path / DIRECTIONS_FILE))
    except (OSError, ValueError) as error:
        raise UsageError(f"{path} is not a probe folder ({error.__class__.__name__}: {error})") from None
    if site not in tensors:
        raise UsageError(f"{path} has no direction for site {site!r}; it has {', '.join(sorted(tensors))}")
    return tensors[site], next(r for r in document["probes"] if r["site"] == site)
