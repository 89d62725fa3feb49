"""Feature analyses (`analyze ACTS --sae DIR`) on the tiny LLaDA model: the tables, the prompt split
behind the pre-registered ablation, and removing latents from the activation."""

import pandas as pd
import pytest
import torch
from cli_run import run_cli

from mdlm_interp.models.hook_names import hook_name
from mdlm_interp.plan import PromptPlan
from mdlm_interp.representations.export import export_activations
from mdlm_interp.representations.features import ablation_hook, split_prompts
from mdlm_interp.representations.sae import SAEShape, SparseAutoencoder
from mdlm_interp.representations.sae_format import save_sae

SITE = hook_name("resid_post", 1)


@pytest.fixture(scope="module")
def store_and_sae(tiny_model, tmp_path_factory):
    lm = tiny_model("llada")
    folder = tmp_path_factory.mktemp("features")
    plan = PromptPlan(tasks=["adjective+largest"], masks=[1, 4], n=8, n_relevant=2, n_distractor=3)
    export_activations(lm, out=folder / "acts.h5", plan=plan, sites=[SITE], groups=["answer", "masks", "context"],
                       dtype="float32", progress=False)
    sae = SparseAutoencoder(SAEShape("topk", lm.model.cfg.d_model, 64, 4)).initialize(0)
    save_sae(sae, folder / "sae", SITE)
    return lm, folder, sae


def test_the_split_is_a_disjoint_function_of_each_key():
    keys = [f"0:t:{i}" for i in range(40)]
    selection, evaluation = split_prompts(keys)
    assert set(selection).isdisjoint(evaluation) and set(selection) | set(evaluation) == set(keys)
    assert 10 < len(selection) < 30
    fewer, _ = split_prompts(keys[:20])
    assert set(fewer) == set(selection) & set(keys[:20])  # a key's half does not depend on the other keys


def test_removing_latents_subtracts_their_decoder_rows_only_where_asked(store_and_sae):
    lm, _, sae = store_and_sae
    x = torch.randn(2, 3, sae.shape.d_in)
    where = torch.tensor([[True, False, False], [False, False, True]])
    features = torch.tensor([1, 5])
    out = ablation_hook(sae, features, where)(x)
    expected = x[0, 0] - sae.encode(x[0, 0])[features] @ sae.W_dec[features]
    assert torch.allclose(out[0, 0], expected, atol=1e-5) and torch.equal(out[0, 1], x[0, 1])


def test_analyze_with_an_sae_writes_the_feature_tables(store_and_sae, tmp_path):
    _, folder, _ = store_and_sae
    result = run_cli("analyze", folder / "acts.h5", "--sae", folder / "sae", "--out", tmp_path / "report",
                     "--ablate", 2, "--control-draws", 2)
    assert result.returncode == 0, result.stderr
    tables = {name: pd.read_csv(tmp_path / "report" / "tables" / f"features_{name}.csv")
              for name in ("mask_specific", "answer_shift", "top_examples", "feature_selection", "feature_ablation")}
    assert (tables["mask_specific"].specificity.diff().dropna() <= 1e-9).all()  # sorted, most specific first
    assert set(tables["answer_shift"][["masks_low", "masks_high"]].iloc[0]) == {1, 4}
    assert tables["top_examples"].token.notna().all() and (tables["top_examples"]["rank"] >= 1).all()
    ablation = tables["feature_ablation"].set_index("setting")
    selection = tables["feature_selection"]
    assert list(ablation.index) == ["none", "chosen", "control"] and ablation.loc["control", "n"] == 2 * ablation.loc["none", "n"]
    assert ablation.loc["none", "n"] == selection.n_evaluation.iloc[0] and (selection["shift"] > 0).all()
    report = (tmp_path / "report" / "report.md").read_text()
    assert report.count("\n## ") == 2 and "## SAE features" in report  # the stores, then the features section only
    assert "Removing the 2 latents" in report and "[tables/features_feature_ablation.csv]" in report
    page = (tmp_path / "report" / "report.html").read_text()
    assert "SAE features" in page and "<th scope=\"col\">specificity</th>" in page
    assert not (tmp_path / "report" / "features.md").exists()


def test_a_report_without_an_sae_skips_the_features_and_says_why(store_and_sae, tmp_path):
    from mdlm_interp.analyses.report import write_report

    _, folder, _ = store_and_sae
    report = write_report([folder / "acts.h5"], tmp_path / "report", only=["features"]).read_text()
    assert "## SAE features" in report and "Skipped: no SAE was given" in report


def test_analyze_with_an_sae_of_another_width_is_one_line(store_and_sae, tmp_path):
    lm, folder, _ = store_and_sae
    save_sae(SparseAutoencoder(SAEShape("topk", lm.model.cfg.d_model + 1, 8, 2)).initialize(0), tmp_path / "wide", SITE)
    result = run_cli("analyze", folder / "acts.h5", "--sae", tmp_path / "wide", "--out", tmp_path / "r", "--ablate", 0)
    assert result.returncode == 2 and "input width" in result.stderr and len(result.stderr.strip().splitlines()) == 1
