"""--sae and --steer are part of the run settings of record, patch and ablate: a --resume with other
interventions is a one-line refusal that leaves the interrupted run as it was, and a resume with the same
interventions completes to the store of an uninterrupted run."""

import pytest
import torch
from cli_run import run_cli
from resume_checks import assert_identical, kill_after, kill_record_after, one_line_refusal
from safetensors.torch import save_file

from mdlm_interp.models.hook_names import hook_name
from mdlm_interp.representations.sae import SAEShape, SparseAutoencoder
from mdlm_interp.representations.sae_format import save_sae

SITE = hook_name("resid_post", 1)
SMALL = ("--task", "adjective+largest", "--n", "2", "--n-relevant", "2", "--n-distractor", "3", "--batch-size", "1",
         "--no-progress")
COMMANDS = {  # two batches each; killed after the first
    "record": ("record", *SMALL, "--masks", "3", "--record", "lens"),
    "patch": ("patch", *SMALL, "--corrupt-masks", "3", "--last-k", "1", "--no-attribution"),
    "ablate": ("ablate", *SMALL, "--heads", "0.1", "--masks", "3", "--control", "none"),
}
STEER = "{f}/directions.safetensors:" + SITE + ":2"
INTERVENTIONS = {  # the run's interventions, then those of refused resumes
    "record": (("--sae", "{f}/sae", "--steer", STEER, "--steer-positions", "answer"),
               [("--sae", "{f}/other", "--steer", STEER, "--steer-positions", "answer"),
                ("--sae", "{f}/sae", "--steer", STEER.replace(":2", ":3"), "--steer-positions", "answer"),
                ("--sae", "{f}/sae", "--steer", STEER, "--steer-positions", "masks"),
                ("--sae", "{f}/sae", "--steer", STEER, "--steer-positions", "answer", "--steer-control", "random"),
                ()]),
    "patch": (("--sae", "{f}/sae"), [("--sae", "{f}/other"), ()]),
    "ablate": (("--sae", "{f}/sae"), [("--sae", "{f}/other"), ("--sae", "{f}/sae", "--sae", "{f}/other")]),
}


@pytest.fixture(scope="module")
def folder(tiny_model, tmp_path_factory):
    """Return a folder with two SAEs at SITE (sae, other) and a steering direction for SITE."""
    d = tiny_model("llada").model.cfg.d_model
    folder = tmp_path_factory.mktemp("intervention-resume")
    for name, seed in (("sae", 0), ("other", 1)):
        save_sae(SparseAutoencoder(SAEShape("topk", d, 16, 4)).initialize(seed), folder / name, SITE)
    save_file({SITE: torch.linspace(-1, 1, d)}, str(folder / "directions.safetensors"))
    return folder


def files_under(folder) -> dict:
    """Return {relative path: bytes} of every file below ``folder``."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_resume_with_other_interventions_is_refused_and_with_the_same_completes(command, folder, tiny_checkpoint,
                                                                                tmp_path, monkeypatch):
    def args(flags, out):
        return (*COMMANDS[command], "--model", tiny_checkpoint("llada"), *(f.format(f=folder) for f in flags),
                "--out", out)

    ours, others = INTERVENTIONS[command]
    whole = run_cli(*args(ours, tmp_path / "whole.h5"))
    assert whole.returncode == 0, whole.stderr
    run = tmp_path / "run"
    run.mkdir()
    with monkeypatch.context() as patch:
        (kill_record_after if command == "record" else kill_after)(patch, 1)
        assert run_cli(*args(ours, run / "out.h5")).returncode == 130
    interrupted = files_under(run)
    for flags in others:
        one_line_refusal(run_cli(*args(flags, run / "out.h5"), "--resume"), "cannot resume", "interventions")
    assert files_under(run) == interrupted
    resumed = run_cli(*args(ours, run / "out.h5"), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_identical(run / "out.h5", tmp_path / "whole.h5")
