"""`mdlm-interp activations` on the tiny LLaDA model: rows and labels, resume, torchrun shards, bad input."""

import subprocess
import sys

import numpy as np
import pytest
from cli_run import run_cli

from mdlm_interp.representations.activation_reader import open_activations

SITES = "blocks.0.hook_resid_post,blocks.1.attn.hook_z"


def common(model):
    return ["activations", "--model", str(model), "--task", "adjective+largest,adjective+smallest", "--masks", "1,4",
            "--n-prompts", "3", "--n-relevant", "2", "--n-distractor", "3", "--batch-size", "2", "--chunk-rows", "4", "--no-progress",
            "--sites", SITES, "--positions", "answer,masks", "--store-dtype", "float32"]


def read_all(path) -> dict:
    with open_activations(path) as store:
        rows = store.rows()
        return {"rows": rows, **{site: store.read(site) for site in store.sites}, "status": store.status}


@pytest.fixture(scope="module")
def single(tiny_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("acts") / "single.h5"
    result = run_cli(*common(tiny_checkpoint("llada")), "--out", path)
    assert result.returncode == 0, result.stderr
    return path, read_all(path)


def test_rows_are_labelled_by_prompt_condition_and_group(single):
    path, store = single
    rows = store["rows"]
    # 2 tasks x 3 prompts x (1 mask, 4 masks): 12 answer rows, 3 mask rows per 4-mask prompt
    assert (rows.position_group == "answer").sum() == 12 and (rows.position_group == "masks").sum() == 6 * 3
    assert set(rows.condition) == {"masks=1", "masks=4"} and rows.prompt_key.nunique() == 6
    four = rows[rows.condition == "masks=4"]
    assert np.allclose(four.mask_ratio, 4 / four.prompt_length) and set(rows.correct) <= {0.0, 1.0}
    assert store["blocks.1.attn.hook_z"].shape[0] == len(rows) and store["status"] == "complete"
    assert (rows.answer_loss > 0).all()


def test_a_killed_run_resumes_to_the_same_store(single, tiny_checkpoint, tmp_path):
    from mdlm_interp.representations import export

    _, whole = single
    out = tmp_path / "resumed.h5"
    calls = {"n": 0}
    original = export.collect_activations

    def dies_on_the_fifth_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    export.collect_activations = dies_on_the_fifth_batch
    try:
        assert run_cli(*common(tiny_checkpoint("llada")), "--out", out).returncode == 130
    finally:
        export.collect_activations = original
    with open_activations(out) as partial:
        assert partial.status == "running" and 0 < partial.n_rows < len(whole["rows"])
    assert run_cli(*common(tiny_checkpoint("llada")), "--out", out, "--resume").returncode == 0
    resumed = read_all(out)
    assert resumed["rows"].equals(whole["rows"])  # same labels, in the same order
    assert all(np.array_equal(resumed[site], whole[site]) for site in SITES.split(","))


def test_torchrun_shards_merge_into_the_single_process_store(single, tiny_checkpoint, tmp_path, process_group_lock):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _, whole = single
    merged = tmp_path / "merged.h5"
    with process_group_lock():
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                                 "--master-port", str(port), "-m", "mdlm_interp", *common(tiny_checkpoint("llada")),
                                 "--out", str(merged)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "merged.shard1-of-2.h5").exists()
    again = read_all(merged)
    assert again["rows"].equals(whole["rows"]) and again["status"] == "complete"
    for site in SITES.split(","):
        assert np.allclose(again[site], whole[site], atol=1e-5)


@pytest.mark.parametrize("flags,message", [
    (("--sites", "blocks.9.hook_resid_post"), "unknown site"),
    (("--sites", "resid_postt"), "unknown site"),
    (("--positions", "answer,fillerz"), "unknown or repeated position group"),
])
def test_bad_sites_and_groups_are_one_line_errors(tiny_checkpoint, tmp_path, flags, message):
    result = run_cli(*common(tiny_checkpoint("llada")), *flags, "--out", tmp_path / "x.h5")
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.h5").exists()


def test_every_flag_has_help():
    from mdlm_interp.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["activations"]
    assert all(action.help for action in sub._actions)
