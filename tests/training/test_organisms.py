"""The shipped model organisms load with load_model, solve the task suite, and match their model cards."""

import json

import pytest

from mdlm_interp import load_model
from mdlm_interp.paths import data_dir
from mdlm_interp.training.evaluate import EvalSetting, loaded_accuracy

ORGANISMS = ["organism-llada", "organism-llama", "organism-dream", "organism-llada2"]
CARD_PROMPTS = {"organism-llada2": 200}  # the prompts each card was measured on (default 1000)
FRESH_SEEDS = 3_000_000  # neither the training seeds (>= 1e9), the monitor seeds (500000..) nor the card's (0..999)


@pytest.fixture(scope="module", params=ORGANISMS)
def organism(request):
    return request.param, load_model(request.param)


def test_organism_is_accurate_on_fresh_prompts(organism):
    name, lm = organism
    accuracy = loaded_accuracy(lm, EvalSetting(), n_prompts=100, seed_base=FRESH_SEEDS, batch_size=100)
    assert accuracy > 0.8, f"{name}: {accuracy:.2f}"


def test_organism_directory_is_small_and_documented(organism):
    name, lm = organism
    path = data_dir() / "models" / name
    assert sum(f.stat().st_size for f in path.iterdir()) <= 10 * 1024 * 1024
    card = (path / "README.md").read_text()
    results = json.loads((path / "eval_results.json").read_text())
    one_mask = next(r for r in results["accuracy"] if r["masks"] == 1 and r["placement"] == "next-to-query")
    assert results["n_prompts"] == CARD_PROMPTS.get(name, 1000) and one_mask["accuracy"] >= 0.9
    assert f"{one_mask['accuracy']:.1%}" in card and "mdlm-interp pretrain --family" in card
    assert json.loads((path / "training_config.json").read_text())["config"]["family"] == lm.spec.family
    assert all(p.dtype.is_floating_point and p.dtype.itemsize == 4 for p in lm.model.parameters())
