"""Analyses on small synthetic stores whose right answers are known exactly, plus record -> analyze."""

import json
from math import comb

import numpy as np
import pandas as pd
import pytest

from mdlm_interp.analyses import (attention, attribution, context_benefit, filler_control, inverse_scaling, load,
                                  locality, locality_contrast, logit_lens, mask_drop, write_report, wrong_predictions)
from mdlm_interp.analyses.stats import bootstrap_correlation, bootstrap_mean, paired_difference, wilson_interval
from cli_run import run_cli
from synthetic_stores import HEADS, LAYERS, QUERY, write_store

TASKS = ["adjective+largest", "verb+smallest"]


def rows_for(masks, correct_of, tasks=TASKS, n=10, **extra):
    """One row per (task, prompt) at ``masks``; correct_of(task_index, prompt) -> bool."""
    return [{"task": t, "prompt": i, "masks": masks, "correct": bool(correct_of(ti, i)), **extra}
            for ti, t in enumerate(tasks) for i in range(n)]


# -- intervals --------------------------------------------------------------------------------------


def test_wilson_interval_matches_published_values():
    low, high = wilson_interval(np.array([0, 5, 10]), np.array([10, 10, 10]))
    np.testing.assert_allclose(low, [0.0, 0.2366, 0.7225], atol=1e-4)
    np.testing.assert_allclose(high, [0.2775, 0.7634, 1.0], atol=1e-4)
    assert np.isnan(wilson_interval(0, 0)[0])


@pytest.mark.parametrize("n", [20, 50, 200])
def test_wilson_interval_covers_a_known_proportion_95_percent_of_the_time(n):
    """Exact coverage: sum of binomial probabilities of the counts whose interval contains p."""
    coverages = []
    for p in np.linspace(0.05, 0.95, 19):
        k = np.arange(n + 1)
        low, high = wilson_interval(k, np.full(n + 1, n))
        pmf = np.array([comb(n, int(j)) * p ** j * (1 - p) ** (n - j) for j in k])
        coverages.append(pmf[(low <= p) & (p <= high)].sum())
    assert min(coverages) > 0.90
    assert 0.94 < np.mean(coverages) < 0.965


def test_paired_bootstrap_covers_a_known_difference():
    rng = np.random.default_rng(1)
    hits = 0
    for replicate in range(200):
        base = rng.random(100) < 0.8
        other = base & (rng.random(100) < 0.5)  # true mean difference: -0.4
        index = [f"p{i}" for i in range(100)]
        d = paired_difference(pd.Series(base, index=index), pd.Series(other, index=index), resamples=500,
                              seed=replicate)
        hits += d["low"] <= -0.4 <= d["high"]
    assert 0.9 <= hits / 200 <= 0.99


def test_bootstrap_is_deterministic_and_skips_nan_rows():
    values = np.array([1.0, 2.0, np.nan, 4.0])
    assert bootstrap_mean(values) == bootstrap_mean(values)
    mean, low, high = bootstrap_mean(values)
    assert mean == pytest.approx(7 / 3) and 1.0 <= low < mean < high <= 4.0


def test_correlation_of_a_linear_relation_is_one():
    x = np.arange(8.0)
    r = bootstrap_correlation(x, 3 - 0.5 * x)
    assert r["pearson"] == pytest.approx(-1) and r["spearman"] == pytest.approx(-1)
    assert np.isnan(bootstrap_correlation(x, np.ones(8))["pearson"])


# -- inverse scaling --------------------------------------------------------------------------------


def test_inverse_scaling_accuracy_and_interval_coverage_on_a_store(tmp_path):
    """200 conditions of 40 prompts drawn at p = 0.3: each row's accuracy is the drawn share, and about
    95% of the intervals contain 0.3."""
    rng = np.random.default_rng(0)
    rows, truth = [], {}
    for masks in range(1, 201):
        correct = rng.random(40) < 0.3
        truth[masks] = correct.mean()
        rows += [{"task": TASKS[i % 2], "prompt": i // 2, "masks": masks, "correct": bool(c)}
                 for i, c in enumerate(correct)]
    frame = inverse_scaling(load([write_store(tmp_path / "s.h5", rows)]))
    pooled = frame[frame["task"] == "all"].set_index("masks")
    assert list(pooled.index) == list(range(1, 201))
    np.testing.assert_allclose(pooled["accuracy"], [truth[m] for m in pooled.index])
    assert (pooled["n"] == 40).all()
    coverage = ((pooled["ci_low"] <= 0.3) & (0.3 <= pooled["ci_high"])).mean()
    assert 0.9 <= coverage <= 0.99
    per_task = frame[frame["task"] == TASKS[0]]
    assert (per_task["n"] == 20).all()


def test_required_columns_and_filler_as_boolean(tmp_path):
    rows = rows_for(1, lambda t, i: True) + rows_for(5, lambda t, i: i < 3) + rows_for(5, lambda t, i: i < 9,
                                                                                         filler=True)
    write_report([write_store(tmp_path / "s.h5", rows)], tmp_path / "out", only=["inverse_scaling"])
    table = pd.read_csv(tmp_path / "out" / "tables" / "inverse_scaling.csv")
    assert {"model", "task", "placement", "filler", "masks", "n", "accuracy", "ci_low", "ci_high"} <= set(table)
    assert table["filler"].dtype == bool
    row = table[(table["task"] == "all") & (table["masks"] == 5) & table["filler"]].iloc[0]
    assert row["accuracy"] == pytest.approx(0.9) and row["n"] == 20


def test_paired_drop_matches_prompts_by_id_not_by_row_order(tmp_path):
    """Masks = 5 is correct exactly where masks = 1 is, but its rows are written in another order and in
    another store with a different task list: pairing by (seed, task, prompt) gives a drop of exactly 0."""
    correct = lambda t, i: (i + t) % 2 == 0  # noqa: E731
    first = write_store(tmp_path / "a.h5", rows_for(1, correct), tasks=TASKS)
    shuffled = rows_for(5, correct)[::-1]
    second = write_store(tmp_path / "b.h5", shuffled, tasks=TASKS[::-1])
    drop = mask_drop(load([first, second]))
    pooled = drop[drop["task"] == "all"].iloc[0]
    assert pooled["n_pairs"] == 20
    assert pooled["drop"] == 0 and pooled["drop_low"] == 0 and pooled["drop_high"] == 0
    other_seed = write_store(tmp_path / "c.h5", shuffled, seed=1)
    assert mask_drop(load([first, other_seed])).empty  # different prompts: nothing to pair


def test_paired_drop_and_filler_control_values(tmp_path):
    rows = (rows_for(1, lambda t, i: True) + rows_for(10, lambda t, i: i < 2)
            + rows_for(10, lambda t, i: i < 8, filler=True))
    recordings = load([write_store(tmp_path / "s.h5", rows)])
    drop = mask_drop(recordings)
    masks = drop[(drop["task"] == "all") & ~drop["filler"]].iloc[0]
    assert masks["drop"] == pytest.approx(0.8) and masks["accuracy_at_1"] == 1.0
    assert masks["drop_low"] < 0.8 < masks["drop_high"]
    control = filler_control(recordings).iloc[0]
    assert control["accuracy_masks"] == pytest.approx(0.2) and control["accuracy_filler"] == pytest.approx(0.8)
    assert control["difference"] == pytest.approx(0.6) and control["n_pairs"] == 20


# -- locality ---------------------------------------------------------------------------------------


def test_locality_sorts_slots_numerically_and_pairs_near_against_far(tmp_path):
    accuracy = {0: 0.2, 2: 0.5, 4: 0.9, 10: 0.3}  # relevant-at:K, 2 relevant + 10 distractor examples
    rows = []
    for k, share in accuracy.items():
        rows += rows_for(1, lambda t, i, s=share: i < 10 * s, placement=f"relevant-at:{k}")
    rows += rows_for(1, lambda t, i: i < 4, placement="relevant-at:4,query-at:2")
    recordings = load([write_store(tmp_path / "s.h5", rows, n_relevant=2, n_distractor=10)])
    frame = locality(recordings)
    block = frame[frame["query_slot"] == 12]
    assert list(block["relevant_at"]) == [0, 2, 4, 10]
    np.testing.assert_allclose(block["accuracy"], [0.2, 0.5, 0.9, 0.3])
    assert list(block["gap"]) == [10, 8, 6, 0]
    moved = frame[frame["placement"] == "relevant-at:4,query-at:2"].iloc[0]
    assert moved["query_slot"] == 2 and moved["gap"] == -2
    contrast = locality_contrast(recordings, frame).iloc[0]
    assert (contrast["near"], contrast["far"]) == ("relevant-at:10", "relevant-at:0")
    assert contrast["difference"] == pytest.approx(0.1) and contrast["n_pairs"] == 20


# -- attribution ------------------------------------------------------------------------------------


def test_attribution_mean_and_sd_per_model_and_masks(tmp_path):
    values = np.linspace(0.1, 0.3, 20)
    rows = [{**r, "grad_mask": v, "grad_last50": v / 10, "grad_nonmask": 0.01}
            for r, v in zip(rows_for(50, lambda t, i: False), values)]
    rows += [{**r, "grad_mask": np.nan, "grad_nonmask": 0.02} for r in rows_for(1, lambda t, i: True)]
    frame = attribution(load([write_store(tmp_path / "s.h5", rows)])).set_index("masks")
    assert frame.loc[50, "mask"] == pytest.approx(values.mean())
    assert frame.loc[50, "mask_sd"] == pytest.approx(values.std(ddof=1))
    assert frame.loc[50, "last50"] == pytest.approx(values.mean() / 10)
    assert frame.loc[50, "nonmask_sd"] == pytest.approx(0, abs=1e-9)
    assert np.isnan(frame.loc[1, "mask"]) and frame.loc[1, "nonmask"] == pytest.approx(0.02)


# -- attention --------------------------------------------------------------------------------------


def test_attention_per_head_and_change_against_one_mask_paired(tmp_path):
    pattern = np.arange(LAYERS * HEADS, dtype=float).reshape(LAYERS, HEADS) / 100
    prompts = rows_for(1, lambda t, i: True)
    base = [{**r, "relevant": pattern + 0.01 * r["prompt"]} for r in prompts]
    later = [{**r, "masks": 20, "from_answer": pattern * 2, "from_context": pattern,
              "relevant": pattern + 0.01 * r["prompt"] - 0.05} for r in prompts][::-1]
    tables = attention(load([write_store(tmp_path / "s.h5", base + later)]))
    heads = tables["attention_heads"]
    at20 = heads[heads["masks"] == 20].set_index(["layer", "head"]).sort_index()
    np.testing.assert_allclose(at20["from_answer"], (pattern * 2).ravel(), atol=1e-6)
    np.testing.assert_allclose(at20["relevant_delta"], -0.05, atol=1e-6)
    np.testing.assert_allclose(at20[["relevant_delta_low", "relevant_delta_high"]], -0.05, atol=1e-6)
    summary = tables["attention_summary"].set_index("masks")
    assert summary.loc[20, "from_answer"] == pytest.approx(pattern.mean() * 2)
    layers = tables["attention_layers"]
    np.testing.assert_allclose(layers[layers["masks"] == 20]["from_context"], pattern.mean(1), atol=1e-6)


# -- logit lens -------------------------------------------------------------------------------------


def test_logit_lens_per_layer(tmp_path):
    rows = [{**r, "lens_p": [0.0, 0.2, 0.9], "lens_rank": [500, 3 if r["prompt"] < 5 else 0, 0],
             "lens_entropy": [0.0, 2.0, 0.3]} for r in rows_for(1, lambda t, i: True)]
    frame = logit_lens(load([write_store(tmp_path / "s.h5", rows)])).set_index("layer")
    np.testing.assert_allclose(frame["p_answer"], [0.0, 0.2, 0.9], atol=1e-6)
    np.testing.assert_allclose(frame["top1"], [0.0, 0.5, 1.0])
    assert frame.loc[0, "rank_median"] == 500 and frame.loc[1, "top1_low"] < 0.5 < frame.loc[1, "top1_high"]


# -- what the model says instead --------------------------------------------------------------------


def test_wrong_predictions_ranked_with_shares_and_kinds(tmp_path):
    rows = rows_for(50, lambda t, i: i == 0)
    for r in rows:
        if r["prompt"] in (1, 2):
            r["predicted_id"] = 100 + QUERY[0]  # a token of the query
        elif r["prompt"] > 2:
            r["predicted_id"] = 778  # not in the input
    recordings = load([write_store(tmp_path / "s.h5", rows, model_id=str(tmp_path / "no-such-model"))])
    tables = wrong_predictions(recordings)
    top = tables["wrong_predictions"]
    assert list(top["token_id"]) == [778, 100 + QUERY[0]]
    assert list(top["token"]) == ["id 778", f"id {100 + QUERY[0]}"]
    assert top.iloc[0]["share_of_rows"] == pytest.approx(0.7) and top.iloc[0]["share_of_wrong"] == pytest.approx(7 / 9)
    kinds = tables["wrong_prediction_kinds"].iloc[0]
    assert kinds["query_word"] == pytest.approx(2 / 9) and kinds["not_in_input"] == pytest.approx(7 / 9)


def test_wrong_predictions_decoded_with_the_organism_tokenizer(tmp_path):
    rows = rows_for(50, lambda t, i: False, predicted_id=778)
    top = wrong_predictions(load([write_store(tmp_path / "s.h5", rows, model_id="organism-llada")]))
    assert top["wrong_predictions"].iloc[0]["token"] == '"<|endoftext|>"'


# -- context benefit --------------------------------------------------------------------------------


def test_context_benefit_per_task_and_correlation(tmp_path):
    tasks = ["adjective+largest", "verb+smallest", "animal+largest", "food+smallest"]
    without = {t: k for k, t in enumerate(tasks)}  # of 10 prompts right without relevant examples: benefit 1 - k/10
    dropped = {t: 3 - k for k, t in enumerate(tasks)}  # of 10 prompts lost to masks: drop (3 - k)/10, linear in it
    base = [{"task": t, "prompt": i, "masks": 1, "correct": i < without[t]} for t in tasks for i in range(10)]
    with_rows = [{"task": t, "prompt": i, "masks": 1, "correct": True} for t in tasks for i in range(10)]
    with_rows += [{"task": t, "prompt": i, "masks": 30, "correct": i >= dropped[t]} for t in tasks
                  for i in range(10)]
    stores = [write_store(tmp_path / "none.h5", base, n_relevant=0, n_distractor=4, tasks=tasks),
              write_store(tmp_path / "two.h5", with_rows, n_relevant=2, n_distractor=4, tasks=tasks)]
    tables = context_benefit(load(stores))
    frame = tables["context_benefit"].set_index("task")
    for k, task in enumerate(tasks):
        assert frame.loc[task, "benefit"] == pytest.approx(1 - 0.1 * k)
        assert frame.loc[task, "drop"] == pytest.approx(0.1 * (3 - k))
    correlation = tables["context_benefit_correlation"].iloc[0]
    assert correlation["pearson"] == pytest.approx(1) and correlation["n_tasks"] == 4


# -- report and CLI ---------------------------------------------------------------------------------


def test_report_skips_what_a_store_lacks_with_a_note(tmp_path):
    rows = rows_for(1, lambda t, i: True) + rows_for(50, lambda t, i: False)
    bare = write_store(tmp_path / "bare.h5", rows, groups=("examples", "tokens"), model_id="m/bare")
    full = write_store(tmp_path / "full.h5", rows, model_id="m/full")
    report = write_report([bare, full], tmp_path / "out").read_text()
    assert "Stores without /gradients are left out here: bare.h5 (bare)" in report
    assert "the tokenizer of m/bare could not be loaded" in report
    assert "Skipped: no store has relevant-at:K or query-at:K placements" in report
    alone = write_report([bare], tmp_path / "alone").read_text()
    assert "Skipped: no store recorded /gradients" in alone
    assert (tmp_path / "alone" / "tables" / "inverse_scaling.csv").exists()
    assert not (tmp_path / "alone" / "tables" / "attribution.csv").exists()
    for line in report.splitlines():
        if line.startswith("!["):
            assert (tmp_path / "out" / line.split("(")[1].rstrip(")")).exists()


def test_analyze_refuses_a_file_that_is_not_a_store(tmp_path):
    store = write_store(tmp_path / "s.h5", rows_for(1, lambda t, i: True))
    (tmp_path / "notes.txt").write_text("hello")
    result = run_cli("analyze", store, tmp_path / "notes.txt", "--out", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "notes.txt" in result.stderr
    assert not (tmp_path / "out").exists()


def test_analyze_on_a_recorded_store_agrees_with_summary(tmp_path, tiny_model):
    from mdlm_interp.record import record

    store = record(tiny_model("llada"), out=tmp_path / "run.h5", tasks=TASKS, masks=[1, 3], filler=" .",
                   placements=["random", "relevant-at:2"], n=3, n_relevant=2, n_distractor=4, record=["lens"],
                   progress=False)
    summary = json.loads(run_cli("summary", store, "--json").stdout)["conditions"]
    result = run_cli("analyze", store, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "report: " in result.stdout and "accuracy [95% CI]" in result.stdout
    table = pd.read_csv(tmp_path / "out" / "tables" / "inverse_scaling.csv")
    pooled = table[table["task"] == "all"]
    assert len(pooled) == len(summary) == 6
    for condition in summary:
        row = pooled[(pooled["masks"] == condition["masks"]) & (pooled["filler"] == condition["filler"])
                     & (pooled["placement"] == condition["placement"])]
        assert len(row) == 1
        assert row.iloc[0]["n"] == condition["n"]
        assert row.iloc[0]["accuracy"] == pytest.approx(condition["accuracy"], abs=1e-6)
        assert row.iloc[0]["p_answer"] == pytest.approx(condition["p_answer"], rel=1e-4)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Skipped: no store recorded /gradients" in report


def test_analyze_help_names_every_output_file():
    from mdlm_interp.analyses.registry import analyses
    from mdlm_interp.cli.analyze import OUTPUTS

    names = ["inverse_scaling", "mask_drop", "filler_control", "locality", "locality_contrast", "attribution",
             "attention_heads", "attention_layers", "attention_summary", "logit_lens", "wrong_predictions",
             "wrong_prediction_kinds", "context_benefit", "context_benefit_correlation"]
    for name in names:
        assert f"tables/{name}.csv" in OUTPUTS
    for analysis in analyses():
        assert analysis.name.split("_")[0] in OUTPUTS


def test_stores_side_by_side_labels_duplicates_and_folders(tmp_path):
    rows = rows_for(1, lambda t, i: True)
    (tmp_path / "sweep" / "a").mkdir(parents=True)
    first = write_store(tmp_path / "sweep" / "a" / "one.h5", rows, model_id="/ckpt/model")
    again = write_store(tmp_path / "sweep" / "two.h5", rows, model_id="/ckpt/model")  # the same rows again
    tuned = write_store(tmp_path / "tuned.h5", rows, model_id="/other/model", fingerprint="sha256:" + "cd" * 32)
    recordings = load([tmp_path / "sweep", tuned])
    assert [s.path for s in recordings.stores] == [first, again, tuned]
    assert recordings.models() == ["model@abababab", "model@cdcdcdcd"]
    assert len(recordings.rows) == 40 and "20 rows recorded twice" in recordings.notes[0]
    frame = inverse_scaling(recordings)
    assert set(frame["model"]) == {"model@abababab", "model@cdcdcdcd"}
