"""train-ma's run folder: one run at a time (OUT.lock), a run killed before its first save resumes, a
diverging run stops in one line keeping its last saved state, and bad hyperparameters (NaN, infinite,
a LoRA rank beyond the model's widths) are refused in one line before anything is written."""

import json

import pytest

from cli_run import run_cli
from held_lock import held_elsewhere
from test_ma_loss import sft_file, train_args


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return sft_file(tmp_path_factory.mktemp("ma-data") / "sft.jsonl")


def one_line(result, message: str) -> bool:
    return result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_holds_it(tiny_checkpoint, tmp_path, data):
    out = tmp_path / "adapter"
    with held_elsewhere(out):  # what a first run holds while it trains
        for flags in ([], ["--resume"]):
            result = run_cli(*train_args(tiny_checkpoint("llada"), data, out, *flags))
            assert one_line(result, "is being written by another process"), result.stderr
    assert not out.exists()
    assert run_cli(*train_args(tiny_checkpoint("llada"), data, out)).returncode == 0
    assert not (tmp_path / "adapter.lock").exists()  # released when the run ends


def test_a_run_killed_before_its_first_save_resumes_to_the_same_adapter(tiny_checkpoint, tmp_path, data,
                                                                         monkeypatch):
    import mdlm_interp.training.ma as ma

    base = tiny_checkpoint("llada")
    assert run_cli(*train_args(base, data, tmp_path / "full")).returncode == 0
    real = ma.ma_batch

    def killed(pairs, index, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(ma, "ma_batch", killed)
    cut = tmp_path / "cut"
    assert run_cli(*train_args(base, data, cut)).returncode == 130
    assert sorted(p.name for p in cut.iterdir()) == ["train_log.csv", "training_config.json"]  # no state saved
    monkeypatch.setattr(ma, "ma_batch", real)
    assert one_line(run_cli(*train_args(base, data, cut)), "pass --resume")
    assert one_line(run_cli(*train_args(base, data, cut, "--lora-r", "4", "--resume")), "different configuration")
    resumed = run_cli(*train_args(base, data, cut, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    full, again = tmp_path / "full" / "adapter_model.safetensors", cut / "adapter_model.safetensors"
    assert full.read_bytes() == again.read_bytes()
    assert json.loads((cut / "training_config.json").read_text())["provenance"]["resumed"]
    assert one_line(run_cli(*train_args(base, data, cut, "--resume")), "the run there has finished")


def test_a_diverging_run_stops_in_one_line_and_keeps_its_last_saved_state(tiny_checkpoint, tmp_path, data):
    out = tmp_path / "diverged"
    args = train_args(tiny_checkpoint("llada"), data, out, "--save-every", "1")
    args[args.index("--lr") + 1] = "1e30"  # finite, but the weights overflow after one step
    result = run_cli(*args)
    assert one_line(result, "training diverged: the loss is nan at step 2"), result.stderr
    assert not (out / "adapter_model.safetensors").exists()  # no adapter from NaN weights
    state = json.loads((out / "train_state" / "state.json").read_text())
    assert state["step"] == 1 and (out / "checkpoints" / "step-000001" / "adapter_model.safetensors").exists()
    from safetensors.torch import load_file

    saved = load_file(str(out / "train_state" / "model.safetensors"))
    assert all(value.isfinite().all() for value in saved.values())
    assert not (tmp_path / "diverged.lock").exists()


BAD_FLAGS = [
    (["--lr", "inf"], "--lr must be a finite positive learning rate, got inf"),
    (["--lr", "nan"], "--lr must be a finite positive learning rate, got nan"),
    (["--lr", "-1"], "--lr must be a finite positive learning rate, got -1.0"),
    (["--lr", "0"], "--lr must be a finite positive learning rate, got 0.0"),
    (["--alpha", "nan"], "--alpha and --beta must be finite"),
    (["--beta", "inf"], "--alpha and --beta must be finite"),
    (["--alpha", "-1"], "--alpha and --beta must be finite"),
    (["--lora-alpha", "nan"], "--lora-alpha finite and positive"),
    (["--lora-alpha", "inf"], "--lora-alpha finite and positive"),
    (["--mask-ratio", "nan:1"], "--mask-ratio LOW:HIGH needs 0 < LOW <= HIGH <= 1"),
    (["--mask-ratio", "0.5:inf"], "--mask-ratio LOW:HIGH needs 0 < LOW <= HIGH <= 1"),
    (["--lora-r", "100000000"], "--lora-r 100000000 is more than the width 32 of k_proj"),
    (["--lora-r", "33"], "--lora-r 33 is more than the width 32 of k_proj"),
    (["--lora-r", "0"], "--lora-r must be at least 1"),
]


@pytest.mark.parametrize("flags,message", BAD_FLAGS)
def test_bad_hyperparameters_are_one_line_before_anything_is_written(tiny_checkpoint, tmp_path, data, flags,
                                                                      message):
    out = tmp_path / "out"
    result = run_cli(*train_args(tiny_checkpoint("llada"), data, out, *flags))
    assert one_line(result, message), result.stderr
    assert list(tmp_path.iterdir()) == []
