"""Sparse autoencoders: planted-dictionary recovery, metrics, resumable training, SAELens' format."""

import json

import pytest
import torch
from planted import mean_max_cosine, sparse_dictionary_data
from safetensors.torch import load_file

from mdlm_interp.errors import UsageError
from mdlm_interp.representations import load_sae
from mdlm_interp.representations.sae import SAEShape, SparseAutoencoder, evaluate, losses, reconstruction_metrics
from mdlm_interp.representations.sae_train import ArrayBatches, SAETrainConfig, train_sae

SITE = "blocks.0.hook_resid_post"
RECOVERY = 0.9  # stated bound: mean over planted directions of the best |cosine| with a decoder row


@pytest.fixture(scope="module")
def planted():
    return sparse_dictionary_data()  # 64 unit directions in 32 dims, 4 active per row


@pytest.mark.parametrize("architecture,l1", [("topk", 0.0), ("standard", 0.3)])
def test_sae_recovers_a_planted_sparse_dictionary(planted, tmp_path, architecture, l1):
    x, dictionary = planted
    config = SAETrainConfig(architecture=architecture, d_sae=64, k=4, l1_coefficient=l1, steps=1000,
                            batch_size=256, lr=3e-3, warmup_steps=20, dead_after=20)
    summary = train_sae(ArrayBatches(x, 256, seed=1), config, tmp_path / "sae", hook_name=SITE, progress=False)
    sae, cfg = load_sae(tmp_path / "sae", d_in=32)
    assert summary["complete"] and not (tmp_path / "sae" / "train_state").exists()
    assert mean_max_cosine(dictionary, sae.W_dec.detach().numpy()) > RECOVERY
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-5)  # unit-norm decoder rows
    metrics = evaluate(sae, torch.tensor(x))
    assert metrics["explained_variance"] > 0.8
    if architecture == "topk":
        assert metrics["l0"] == 4.0
    assert cfg["metadata"]["training"]["final_terms"]["ev"] == summary["terms"]["ev"]


def test_metrics_match_a_hand_computation():
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    reconstruction = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    latents = torch.tensor([[0.0, 2.0, 0.0], [1.0, 1.0, 0.0]])
    # errors: 0 + 1 + 1 + 0 = 2 over 4 elements; mean (2, 1): deviations 1+1+1+1 = 4 -> ev = 1 - 2/4
    assert reconstruction_metrics(x, reconstruction, latents) == {
        "mse": 0.5, "explained_variance": 0.5, "l0": 1.5, "dead_fraction": pytest.approx(1 / 3)}


def test_resumed_training_equals_an_uninterrupted_run(planted, tmp_path):
    x = planted[0][:2048]
    config = SAETrainConfig(d_sae=48, k=4, steps=40, batch_size=128, save_every=15, dead_after=5, seed=3)
    train_sae(ArrayBatches(x, 128, seed=2), config, tmp_path / "whole", hook_name=SITE, progress=False)
    first = train_sae(ArrayBatches(x, 128, seed=2), config, tmp_path / "split", hook_name=SITE,
                      stop_after=23, progress=False)
    assert not first["complete"] and not (tmp_path / "split" / "cfg.json").exists()
    second = train_sae(ArrayBatches(x, 128, seed=2), config, tmp_path / "split", hook_name=SITE,
                       resume=True, progress=False)
    assert second["complete"] and second["steps_done"] == 40
    whole = load_file(str(tmp_path / "whole" / "sae_weights.safetensors"))
    split = load_file(str(tmp_path / "split" / "sae_weights.safetensors"))
    assert all(torch.equal(whole[name], split[name]) for name in whole)
    other = train_sae(ArrayBatches(x, 128, seed=2), SAETrainConfig(**{**config.__dict__, "seed": 4}),
                      tmp_path / "other", hook_name=SITE, progress=False)
    assert other["complete"]
    assert not torch.equal(whole["W_dec"], load_file(str(tmp_path / "other" / "sae_weights.safetensors"))["W_dec"])


def test_the_saved_sae_is_in_saelens_format_and_reconstructs_as_saelens_would(tmp_path, planted):
    x = torch.tensor(planted[0][:64])
    config = SAETrainConfig(d_sae=40, k=3, steps=5, batch_size=32, warmup_steps=1)
    train_sae(ArrayBatches(x, 32), config, tmp_path / "sae", hook_name="blocks.2.attn.hook_z",
              metadata={"model_name": "organism-llada"}, progress=False)
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert {k: cfg[k] for k in ("architecture", "d_in", "d_sae", "k", "dtype", "device", "apply_b_dec_to_input",
                                "normalize_activations", "reshape_activations")} == {
        "architecture": "topk", "d_in": 32, "d_sae": 40, "k": 3, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "hook_z"}
    assert cfg["metadata"]["hook_name"] == "blocks.2.attn.hook_z" and cfg["metadata"]["model_name"] == "organism-llada"
    weights = load_file(str(tmp_path / "sae" / "sae_weights.safetensors"))
    assert {k: list(v.shape) for k, v in weights.items()} == {
        "W_enc": [32, 40], "b_enc": [40], "W_dec": [40, 32], "b_dec": [32]}
    # SAELens' TopKSAE: topk of (x - b_dec) @ W_enc + b_enc, ReLU, scatter; then @ W_dec + b_dec
    pre = (x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
    values, indices = pre.topk(3, dim=-1)
    latents = torch.zeros_like(pre).scatter(-1, indices, values.relu())
    sae, _ = load_sae(tmp_path / "sae")
    assert torch.allclose(sae(x), latents @ weights["W_dec"] + weights["b_dec"], atol=1e-6)


def test_bad_sae_input_is_a_one_line_usage_error(tmp_path, planted):
    x = planted[0][:64]
    with pytest.raises(UsageError, match="larger than the dictionary"):
        SAEShape("topk", 32, 16, k=17)
    with pytest.raises(UsageError, match="larger than the dictionary"):
        train_sae(ArrayBatches(x, 32), SAETrainConfig(d_sae=8, k=9), tmp_path / "a", hook_name=SITE, progress=False)
    train_sae(ArrayBatches(x, 32), SAETrainConfig(d_sae=8, k=2, steps=2), tmp_path / "b", hook_name=SITE, progress=False)
    with pytest.raises(UsageError, match="width is 32 but the site's activations have width 4096"):
        load_sae(tmp_path / "b", d_in=4096)
    with pytest.raises(UsageError, match="exists"):
        train_sae(ArrayBatches(x, 32), SAETrainConfig(d_sae=8, k=2, steps=2), tmp_path / "b", hook_name=SITE,
                  progress=False)
    with pytest.raises(UsageError, match="complete"):
        train_sae(ArrayBatches(x, 32), SAETrainConfig(d_sae=8, k=2, steps=2), tmp_path / "b", hook_name=SITE,
                  resume=True, progress=False)
    with pytest.raises(UsageError, match="no cfg.json"):
        load_sae(tmp_path)
    with pytest.raises(UsageError, match="width"):
        SparseAutoencoder(SAEShape("standard", 32, 8)).check_width(31)


def test_the_auxiliary_loss_trains_only_dead_latents():
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEShape("topk", 16, 32, k=2)).initialize(0)
    x = torch.randn(64, 16)
    dead = torch.zeros(32, dtype=torch.bool)
    dead[:6] = True
    grads = []
    for coefficient in (0.0, 1.0):
        sae.zero_grad()
        loss, terms, _ = losses(sae, x, dead, l1_coefficient=0.0, aux_k=4, aux_coefficient=coefficient)
        loss.backward()
        grads.append((sae.W_enc.grad.clone(), sae.W_dec.grad.clone()))
    assert terms["aux"] > 0
    enc, dec = grads[1][0] - grads[0][0], grads[1][1] - grads[0][1]
    assert enc[:, 6:].abs().max() == 0 and dec[6:].abs().max() == 0
    assert enc[:, :6].abs().max() > 0 and dec[:6].abs().max() > 0
    _, none_dead, _ = losses(sae, x, torch.zeros(32, dtype=torch.bool), l1_coefficient=0.0, aux_k=4, aux_coefficient=1.0)
    assert none_dead["aux"] == 0
