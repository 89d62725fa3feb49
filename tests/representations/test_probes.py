"""Linear probes: a planted direction is found, a shuffled label is not, and held-out splits are by
group (a row split would be fooled by duplicated rows)."""

import json

import numpy as np
import pytest
import torch

from mdlm_interp.errors import UsageError
from mdlm_interp.representations.probes import ALPHA_GRID, fit_probe, group_folds, load_direction, save_probes


def planted_direction(n_groups=60, per_group=5, d=32, seed=0):
    g = np.random.default_rng(seed)
    x = g.standard_normal((n_groups * per_group, d)) * 3 + 1.5
    direction = g.standard_normal(d)
    direction /= np.linalg.norm(direction)
    y = x @ direction + 0.05 * g.standard_normal(len(x))
    groups = np.repeat([f"prompt{i}" for i in range(n_groups)], per_group)
    return x, y, groups, direction


def test_ridge_finds_a_planted_direction_and_not_a_shuffled_label():
    x, y, groups, direction = planted_direction()
    probe = fit_probe(x, y, groups, site="blocks.1.hook_resid_post", label="clock")
    assert probe.metric == "r2" and probe.score > 0.99
    assert probe.interval[0] <= probe.score <= probe.interval[1] and probe.interval[0] > 0.98
    assert abs(probe.direction @ direction) / np.linalg.norm(probe.direction) > 0.999
    assert np.allclose(x @ probe.direction + probe.intercept, y, atol=0.3)
    shuffled = np.random.default_rng(1).permutation(y)
    null = fit_probe(x, shuffled, groups)
    assert null.score < 0.1 and null.interval[0] < 0 < null.interval[1] + 0.1


def test_logistic_finds_a_planted_boundary():
    x, y, groups, _ = planted_direction()
    label = np.where(y > np.median(y) + 1.0, 7, 3)  # two values, not 0/1: the larger is class 1
    probe = fit_probe(x, label, groups, kind="logistic", alpha=1e-3)
    assert probe.metric == "accuracy" and probe.score > 0.93 and 0.5 <= probe.chance < 0.8
    assert ((x @ probe.direction + probe.intercept > 0) == (label == 7)).mean() > 0.95
    null = fit_probe(x, np.random.default_rng(2).permutation(label), groups, kind="logistic")
    assert null.score < 0.7


def test_duplicated_rows_of_a_group_do_not_inflate_the_held_out_score():
    g = np.random.default_rng(3)
    unique = g.standard_normal((40, 64))  # more dimensions than prompts: a probe can memorise
    label = g.standard_normal(40)  # unrelated to the activations
    x, y = np.repeat(unique, 5, axis=0), np.repeat(label, 5)
    groups = np.repeat(np.arange(40), 5)
    by_group = fit_probe(x, y, groups, alpha=1e-6)
    by_row = fit_probe(x, y, np.arange(len(y)), alpha=1e-6)  # what a row split would report
    assert by_row.score > 0.9
    assert by_group.score < 0.2


def test_group_folds_keep_groups_whole_and_balance_rows():
    groups = np.repeat(np.arange(23), np.arange(1, 24) % 4 + 1)
    folds = group_folds(groups, 5, seed=0)
    for group in np.unique(groups):
        assert len(set(folds[groups == group])) == 1
    sizes = np.bincount(folds)
    assert len(sizes) == 5 and sizes.max() - sizes.min() <= 4
    assert not np.array_equal(folds, group_folds(groups, 5, seed=1))
    with pytest.raises(UsageError, match="3 prompt group"):
        group_folds(["a", "b", "c"], 5)


def test_probes_save_and_load(tmp_path):
    x, y, groups, _ = planted_direction(n_groups=20, d=8)
    probes = [fit_probe(x, y, groups, site=site, label="clock", n_folds=4) for site in ("blocks.0.hook_resid_post",
                                                                                        "blocks.1.hook_resid_post")]
    save_probes(probes, tmp_path / "probes", provenance={"store": "acts.h5"})
    direction, record = load_direction(tmp_path / "probes", "blocks.1.hook_resid_post")
    assert torch.equal(direction, torch.tensor(probes[1].direction, dtype=torch.float32))
    assert record["score"] == probes[1].score and record["n_groups"] == 20 and record["n_folds"] == 4
    assert json.loads((tmp_path / "probes" / "probes.json").read_text())["provenance"] == {"store": "acts.h5"}
    with pytest.raises(UsageError, match="exists"):
        save_probes(probes, tmp_path / "probes")
    with pytest.raises(UsageError, match="no direction for site"):
        load_direction(tmp_path / "probes", "blocks.7.hook_resid_post")
    with pytest.raises(UsageError, match="two values"):
        fit_probe(x, np.arange(len(y)) % 3, groups, kind="logistic")
    with pytest.raises(UsageError, match="non-finite"):
        fit_probe(x, np.where(y > 0, np.nan, y), groups)


def test_nested_alpha_choice_beats_an_overfitting_alpha():
    g = np.random.default_rng(5)
    x = g.standard_normal((120, 80))  # 40 prompts x 3 rows, 80 dimensions: a weak ridge overfits
    y = x[:, 0] + 1.5 * g.standard_normal(120)
    groups = np.repeat(np.arange(40), 3)
    weak = fit_probe(x, y, groups, alpha=1e-6)
    chosen = fit_probe(x, y, groups)
    assert len(chosen.fold_alphas) == 5 and set(chosen.fold_alphas) <= set(ALPHA_GRID)
    assert chosen.alpha in ALPHA_GRID and chosen.alpha >= 0.1
    assert chosen.score > weak.score + 0.1 and chosen.score > 0
