"""`mdlm-interp train-sae` and `mdlm-interp probe` on an activation store with planted structure."""

import json

import numpy as np
import pytest
from cli_run import run_cli
from planted import sparse_dictionary_data

from mdlm_interp.representations.activations import open_activation_writer

CARRIER, NOISE = "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """40 prompts x 8 positions: CARRIER = a sparse code + ratio * a fixed direction; NOISE = noise."""
    path = tmp_path_factory.mktemp("acts") / "acts.h5"
    codes, _ = sparse_dictionary_data(n=320, d=16, m=32, k=3)
    g = np.random.default_rng(0)
    direction = g.standard_normal(16)
    writer = open_activation_writer(path, sites={CARRIER: 16, NOISE: 16}, dtype="float32", labels=("ratio",),
                                    provenance={"model_id": "organism-llada"}, chunk_rows=32)
    for prompt in range(40):
        ratio = g.uniform(0, 1)
        rows = slice(8 * prompt, 8 * prompt + 8)
        writer.append({CARRIER: codes[rows] + 2 * ratio * direction, NOISE: g.standard_normal((8, 16))},
                      prompt_key=[f"0:t:{prompt}"] * 8, condition=[f"masks={1 + 49 * (prompt % 2)}"] * 8,
                      position_group=["answer"] + ["masks"] * 7, position=np.arange(8), labels={"ratio": [ratio] * 8})
    writer.finish()
    return path


def test_probe_finds_the_site_that_carries_the_label(store, tmp_path):
    result = run_cli("probe", store, "--label", "ratio", "--out", tmp_path / "probes", "--bootstrap", 200)
    assert result.returncode == 0, result.stderr
    probes = {p["site"]: p for p in json.loads((tmp_path / "probes" / "probes.json").read_text())["probes"]}
    assert probes[CARRIER]["score"] > 0.9 and probes[NOISE]["score"] < 0.2
    assert probes[CARRIER]["n_groups"] == 40 and f"{CARRIER}: r2 " in result.stdout


def test_train_sae_writes_a_loadable_sae_and_refuses_a_finished_resume(store, tmp_path):
    args = ("train-sae", store, "--site", CARRIER, "--d-sae", 32, "--k", 3, "--steps", 30, "--batch-size", 64,
            "--condition", "masks=50")
    result = run_cli(*args, "--out", tmp_path / "sae")
    assert result.returncode == 0, result.stderr
    assert "explained variance" in result.stdout and "SAE blocks.0.hook_resid_post" in result.stderr  # the bar
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == CARRIER and cfg["metadata"]["model_name"] == "organism-llada"
    evaluation = json.loads((tmp_path / "sae" / "evaluation.json").read_text())
    assert evaluation["rows"] == 160 and evaluation["l0"] <= 3
    again = run_cli(*args, "--out", tmp_path / "sae", "--resume")
    assert again.returncode == 2 and "complete" in again.stderr


@pytest.mark.parametrize("args,message", [
    (("train-sae", "{store}", "--site", "blocks.7.hook_resid_post"), "no site 'blocks.7.hook_resid_post'"),
    (("train-sae", "{store}", "--site", CARRIER, "--condition", "masks=9"), "no rows with condition=['masks=9']"),
    (("train-sae", "{store}", "--site", CARRIER, "--d-sae", 8, "--k", 9), "larger than the dictionary"),
    (("train-sae", "{tmp}/missing.h5", "--site", CARRIER), "does not exist"),
    (("probe", "{store}", "--label", "bogus"), "no label 'bogus'"),
    (("probe", "{store}", "--label", "ratio", "--kind", "logistic"), "two values"),
])
def test_bad_input_is_one_line_and_writes_nothing(store, tmp_path, args, message):
    args = [str(a).format(store=store, tmp=tmp_path) for a in args]
    result = run_cli(*args, "--out", tmp_path / "out")
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["train-sae", "probe"])
def test_every_flag_has_help(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0
    from mdlm_interp.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices[command]
    assert all(action.help for action in sub._actions)
