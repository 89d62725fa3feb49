"""The attribution agreement of a patching store, computed when it is read, against a hand computation."""

import math

import numpy as np
import pytest

from mdlm_interp.analyses.patching import attribution_agreement, patching
from mdlm_interp.circuits.schemas import PATCHING
from mdlm_interp.store import Provenance
from mdlm_interp.store.results import open_results, write_results

DIMS = {"directions": 2, "layers": 2, "heads": 2, "groups": 2, "head_groups": 2}
CLEAN, CORRUPT = [2.0, 4.0], [1.0, -1.0]  # means 3 and 0: recovery = patched / 3


def pearson(x, y) -> float:
    """Pearson's r written out from its definition."""
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def write(path, exact: dict, estimate: dict):
    """A two-pair patching store whose grids hold, in both pairs, ``exact[site]`` and ``estimate[site]``
    (flat lists over a direction's cells) in the first direction and their negatives in the second."""
    columns = {}
    for field in PATCHING.data:
        shape = (2,) + field.row_shape(DIMS)
        columns[field.path] = ["adjective+largest"] * 2 if field.dtype == "str" else np.zeros(shape, field.numpy_dtype)
    columns["pairs/clean_logit_diff"] = np.array(CLEAN, dtype=np.float32)
    columns["pairs/corrupt_logit_diff"] = np.array(CORRUPT, dtype=np.float32)
    for site in exact:
        for prefix, values in (("patching", exact[site]), ("attribution", estimate[site])):
            grid = columns[f"{prefix}/{site}_logit_diff"]
            one = np.asarray(values, dtype=np.float32).reshape(grid.shape[2:])
            grid[:, 0], grid[:, 1] = one, -one
    provenance = Provenance(command_line="synthetic", model_id="m", family="llada", dtype="float32",
                            weights_fingerprint="sha256:" + "ab" * 32, task_config={}, seed=0)
    settings = {"clean": {"masks": 1, "filler": False, "placement": "random"},
                "corrupt": {"masks": 6, "filler": False, "placement": "random"}}
    attrs = {"directions": ["clean_into_corrupt", "corrupt_into_clean"], "position_groups": ["all", "answer"],
             "head_groups": ["answer", "all"]}
    return write_results(path, PATCHING, columns, dims=DIMS, provenance=provenance, settings=settings, attrs=attrs)


def test_agreement_is_the_pearson_r_of_exact_and_attribution_recovery(tmp_path):
    sizes = {"resid_pre": 6, "attn_out": 4, "mlp_out": 4, "z": 8}
    rng = np.random.default_rng(3)
    exact = {site: [round(float(v), 2) for v in rng.uniform(-1, 4, n)] for site, n in sizes.items()}
    # attribution: the exact values, bent and shifted, so that r is well away from 0, 1 and -1
    estimate = {site: [0.5 * v + (0.8 if i % 2 else -0.3) for i, v in enumerate(values)]
                for site, values in exact.items()}
    path = write(tmp_path / "p.h5", exact, estimate)
    with open_results(path, "patching") as store:
        assert "attribution_correlation" not in store.file.attrs  # computed at read time, not stored
        found = attribution_agreement(store)
    for site in sizes:
        r = pearson([v / 3 for v in exact[site]], [v / 3 for v in estimate[site]])
        assert 0.2 < abs(r) < 0.99
        assert found["clean_into_corrupt"][site] == pytest.approx(r, abs=1e-5)
        # second direction: patched = -values, recovery = -values / 3 of both, the same r
        assert found["corrupt_into_clean"][site] == pytest.approx(r, abs=1e-5)
    table = patching([path])["patching_attribution"]
    assert table.set_index(["direction", "site"]).loc[("clean_into_corrupt", "z"), "pearson"] == pytest.approx(
        pearson([v / 3 for v in exact["z"]], [v / 3 for v in estimate["z"]]), abs=1e-5)


def test_no_agreement_without_attribution_and_none_for_a_constant_grid(tmp_path):
    sizes = {"resid_pre": 6, "attn_out": 4, "mlp_out": 4, "z": 8}
    exact = {site: list(range(n)) for site, n in sizes.items()}
    estimate = {site: [1.0] * n if site == "z" else list(range(n)) for site, n in sizes.items()}
    with open_results(write(tmp_path / "p.h5", exact, estimate), "patching") as store:
        found = attribution_agreement(store)
    assert found["clean_into_corrupt"]["z"] is None and found["clean_into_corrupt"]["attn_out"] == pytest.approx(1)
    nan = {site: [float("nan")] * n for site, n in sizes.items()}
    with open_results(write(tmp_path / "q.h5", exact, nan), "patching") as store:
        assert attribution_agreement(store) is None


def test_recovery_is_undefined_under_the_minimum_gap_and_effects_are_in_logits(tmp_path):
    from mdlm_interp.analyses.patching import patching_cells

    sizes = {"resid_pre": 6, "attn_out": 4, "mlp_out": 4, "z": 8}
    exact = {site: [0.5 * i for i in range(n)] for site, n in sizes.items()}
    with open_results(write(tmp_path / "p.h5", exact, exact), "patching") as store:
        shown = patching_cells(store, resamples=20)  # gap 3 logits: recovery defined
        hidden = patching_cells(store, resamples=20, min_gap=3.5)
    first = shown[(shown["direction"] == "clean_into_corrupt") & (shown["site"] == "attn_out")]
    assert first["recovery"].tolist() == pytest.approx([0.5 * i / 3 for i in range(4)])
    assert first["effect"].tolist() == pytest.approx([0.5 * i - 0 for i in range(4)])  # receiver: corrupt, mean 0
    second = shown[(shown["direction"] == "corrupt_into_clean") & (shown["site"] == "attn_out")]
    assert second["effect"].tolist() == pytest.approx([-0.5 * i - 3 for i in range(4)])  # receiver: clean, mean 3
    for column in ("recovery", "recovery_low", "recovery_high", "attribution_recovery"):
        assert hidden[column].isna().all()
    assert hidden["effect"].tolist() == pytest.approx(shown["effect"].tolist())
