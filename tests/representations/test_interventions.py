"""--sae and --steer on the tiny LLaDA model: where steering lands, the control's norm, the loss report in
the output, and one-line errors for an SAE or a direction that does not fit its site."""

import json

import h5py
import pytest
import torch
from planted import lossless
from cli_run import run_cli
from safetensors.torch import save_file

from mdlm_interp.batching import collate
from mdlm_interp.errors import UsageError
from mdlm_interp.models.hook_names import hook_name
from mdlm_interp.representations.interventions import build_interventions
from mdlm_interp.representations.sae_format import save_sae
from mdlm_interp.tasks import PromptConfig, sample_prompt, single_token_words, tokenize_prompt

SITE = hook_name("resid_post", 1)
RECORD = ["record", "--task", "adjective+largest", "--n", "2", "--masks", "3", "--n-relevant", "2",
          "--n-distractor", "3", "--record", "lens", "--no-progress"]



@pytest.fixture(scope="module")
def files(tiny_model, tmp_path_factory):
    lm = tiny_model("llada")
    folder = tmp_path_factory.mktemp("interventions")
    d = lm.model.cfg.d_model
    save_sae(lossless(d), folder / "lossless", SITE)
    save_sae(lossless(d - 1), folder / "narrow", SITE)
    save_file({SITE: torch.ones(d)}, str(folder / "directions.safetensors"))
    save_file({SITE: torch.ones(d + 1)}, str(folder / "wide.safetensors"))
    (folder / "bigk").mkdir()
    for name in ("cfg.json", "sae_weights.safetensors"):
        (folder / "bigk" / name).write_bytes((folder / "lossless" / name).read_bytes())
    cfg = json.loads((folder / "bigk" / "cfg.json").read_text())
    (folder / "bigk" / "cfg.json").write_text(json.dumps({**cfg, "architecture": "topk", "k": 4 * d}))
    return lm, folder


def test_steering_lands_on_the_answer_slot_only_and_the_control_keeps_the_norm(files):
    lm, folder = files
    words = single_token_words(lm.tokenizer)
    prompts = [tokenize_prompt(sample_prompt(PromptConfig("adjective+largest", 2, 3, "random"), seed, words),
                               lm.tokenizer, mask_token_id=lm.mask_token_id, masks=3) for seed in range(2)]
    batch = collate(prompts, lm.spec.prediction_offset)
    steer = [(folder / "directions.safetensors", SITE, 2.0)]
    with torch.no_grad():
        _, plain = lm.model.run_with_cache(batch.input_ids, names_filter=SITE)
        built = build_interventions(lm.model, steers=steer, steer_positions="answer", mask_token_id=lm.mask_token_id)
        keep = {}
        lm.model.run_with_hooks(batch.input_ids, fwd_hooks=built.fwd_hooks() + [(SITE, lambda a, hook: keep.update(a=a))])
        built.watch.handle.remove()
    difference = keep["a"] - plain[SITE]
    changed = difference.abs().amax(-1) > 0
    assert changed.equal(batch.layout.answer) and torch.allclose(difference[changed], torch.full_like(difference[changed], 2.0))
    control = build_interventions(lm.model, steers=steer, steer_control=0)
    assert control.described[0]["norm"] == pytest.approx(float(torch.ones(lm.model.cfg.d_model).norm()), rel=1e-5)


def test_record_with_a_lossless_sae_reports_an_unchanged_loss(files, tmp_path):
    lm, folder = files
    result = run_cli(*RECORD, "--model", lm.source, "--sae", folder / "lossless", "--out", tmp_path / "r.h5")
    assert result.returncode == 0, result.stderr
    with h5py.File(tmp_path / "r.h5", "r") as store:
        report = json.loads(store.attrs["interventions"])
    assert report["interventions"][0]["site"] == SITE and report["prompts"] == 2
    assert report["loss_with"] == pytest.approx(report["loss"], abs=1e-4) and "Answer loss" in result.stdout


def test_generate_takes_a_steering_control(files):
    lm, folder = files
    result = run_cli("generate", "--model", lm.source, "--prompt", "Input: a, b", "--gen-length", "2",
                     "--steer", f"{folder / 'directions.safetensors'}:{SITE}:3", "--steer-control", "random:1")
    assert result.returncode == 0, result.stderr
    assert "(random control)" in result.stdout


@pytest.mark.parametrize("flags,message", [
    (("--sae", "{f}/narrow"), "input width is"),
    (("--sae", "{f}/bigk"), "larger than the dictionary"),
    (("--sae", "{f}/missing"), "not an SAE folder"),
    (("--steer", "{f}/wide.safetensors:" + SITE + ":1"), "has width"),
    (("--steer", "{f}/directions.safetensors:" + SITE), "FILE:SITE:SCALE"),
    (("--steer", "{f}/directions.safetensors:blocks.9.hook_resid_post:1"), "unknown site"),
])
def test_bad_interventions_are_one_line_errors(files, tmp_path, flags, message):
    lm, folder = files
    flags = [flag.format(f=folder) for flag in flags]
    result = run_cli(*RECORD, "--model", lm.source, *flags, "--out", tmp_path / "x.h5")
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.h5").exists()


def test_an_unknown_steering_group_is_refused(files):
    lm, folder = files
    with pytest.raises(UsageError, match="unknown steering positions"):
        build_interventions(lm.model, steers=[(folder / "directions.safetensors", SITE, 1.0)], steer_positions="x")


def test_activations_with_an_sae_keep_it_in_settings_and_provenance(files, tmp_path):
    from mdlm_interp.representations.activation_reader import open_activations

    lm, folder = files
    result = run_cli("activations", "--model", lm.source, "--task", "adjective+largest", "--n", "2", "--n-relevant", "2",
                     "--n-distractor", "3", "--sites", SITE, "--sae", folder / "lossless", "--no-progress",
                     "--out", tmp_path / "a.h5")
    assert result.returncode == 0, result.stderr
    with open_activations(tmp_path / "a.h5") as store:
        assert store.settings["interventions"][0]["site"] == SITE
        assert store.provenance["interventions"]["loss_with"] == pytest.approx(store.provenance["interventions"]["loss"], abs=1e-4)
