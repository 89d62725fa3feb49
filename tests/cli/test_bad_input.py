"""Bad input from a hostile user: one line on stderr and exit 2 before any work, nothing overwritten.

Each case here ended in a traceback, was accepted without a word, or destroyed data before issue 15.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import mdlm_interp.record
from cli_run import run_cli

TASKS = "adjective+largest,verb+smallest"
READ_ONLY = Path("/proc")  # no file can be created there, not even by root


def assert_one_line_error(result, message: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout[-500:], result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def no_work(monkeypatch):
    """Make building the plan's prompts or training fail loudly: a refusal must come before them."""
    def refuse(*args, **kwargs):
        raise AssertionError("work started before the input was checked")

    monkeypatch.setattr(mdlm_interp.record, "plan_prompts", refuse)
    monkeypatch.setattr("mdlm_interp.training.pretrain.train", refuse)


@pytest.mark.parametrize("args,message", [
    (["--task", ""], "no task given"),
    (["--task", ","], "no task given"),
    (["--placement", ""], "no placement given"),
    (["--top-k", "100000"], "larger than the vocabulary"),
    (["--device", "foo"], "unknown device 'foo'"),
    (["--device", "cuda:0"], "CUDA is not available"),
    (["--masks", "3", "--filler", "<|mdm_mask|>"], "is the mask token"),
    (["--masks", "1", "--filler", "<|mdm_mask|>"], "is the mask token"),  # checked even with no filler row
    (["--masks", "100000"], "longer than the model's context"),
    (["--n-distractor", "5000"], "longer than the model's context"),
    (["--n-distractor", "100000"], "more than 10000 (no model reads a prompt that long)"),
    (["--n", "100000000"], "rows planned"),
    (["--batch-size", "0"], "batch size must be at least 1"),
])
def test_record_refuses_before_any_work(args, message, tmp_path, tiny_checkpoint, monkeypatch):
    if "cuda:0" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    no_work(monkeypatch)
    out = tmp_path / "x.h5"
    result = run_cli("record", "--model", tiny_checkpoint("llada"), "--task", TASKS, "--n", "2", "--no-progress",
                     "--out", out, *args)
    assert_one_line_error(result, message)
    assert not out.exists()


def test_a_filler_outside_the_vocabulary_is_refused(tmp_path, monkeypatch):
    no_work(monkeypatch)  # the organisms' word-level tokenizer turns unknown words into <unk>
    result = run_cli("record", "--model", "organism-llada", "--masks", "3", "--filler", " blorfle", "--n", "1",
                     "--out", tmp_path / "x.h5", "--no-progress")
    assert_one_line_error(result, "it becomes <unk>")


# ---- tasks export --------------------------------------------------------------------------------

def test_tasks_export_refuses_bad_outputs_and_replaces_only_with_overwrite(tmp_path):
    base = ["tasks", "export", "--task", "adjective+largest", "--n", "2"]
    assert_one_line_error(run_cli(*base, "--out", tmp_path / "missing" / "x.jsonl"), "does not exist")
    assert_one_line_error(run_cli(*base, "--out", READ_ONLY / "x.jsonl"), "cannot write")
    assert_one_line_error(run_cli(*base, "--out", tmp_path), "is a folder")
    out = tmp_path / "x.jsonl"
    out.write_text("precious\n")
    assert_one_line_error(run_cli(*base, "--out", out), "exists; pass --overwrite")
    assert out.read_text() == "precious\n"
    assert run_cli(*base, "--out", out, "--overwrite").returncode == 0
    assert len(out.read_text().splitlines()) == 2 and json.loads(out.read_text().splitlines()[0])["task"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.jsonl"]  # no temporary file left


# ---- model init and pretrain: checkpoint folders -----------------------------------------------

def test_model_init_refuses_a_non_empty_folder_and_overwrite_leaves_no_mix(tmp_path):
    from mdlm_interp import load_model

    out = tmp_path / "ckpt"
    assert run_cli("model", "init", "--family", "llada", "--out", out).returncode == 0
    (out / "README.md").write_text("a card that belongs to the llada weights\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert_one_line_error(run_cli("model", "init", "--family", "dream", "--out", out), "not empty; pass --overwrite")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert run_cli("model", "init", "--family", "dream", "--out", out, "--overwrite").returncode == 0
    assert "README.md" not in {p.name for p in out.iterdir()}  # nothing of the old checkpoint is left
    assert load_model(out).spec.family == "dream"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging folder, no lock left


def test_a_failed_model_init_leaves_the_old_checkpoint_whole(tmp_path, monkeypatch):
    out = tmp_path / "ckpt"
    assert run_cli("model", "init", "--family", "llada", "--out", out).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("mdlm_interp.models.random_checkpoint.save_weights", disk_full)
    assert_one_line_error(run_cli("model", "init", "--family", "dream", "--out", out, "--overwrite"),
                          "No space left on device")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.mark.parametrize("args,message", [
    (["--out", "{file}"], "is a file, not a folder"),
    (["--out", str(READ_ONLY / "ckpt")], "cannot write"),
    (["--shard-mb", "0"], "--shard-mb must be a positive"),
    (["--shard-mb", "-1"], "--shard-mb must be a positive"),
    (["--shard-mb", "inf"], "--shard-mb must be a positive"),
])
def test_model_init_bad_outputs(args, message, tmp_path):
    (tmp_path / "file").write_text("x")
    args = [a.replace("{file}", str(tmp_path / "file")) for a in args]
    out = ["--out", str(tmp_path / "new")] if "--out" not in args else []
    assert_one_line_error(run_cli("model", "init", "--family", "llada", *out, *args), message)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("args,message", [
    (["--eval-prompts", "0"], "--eval-prompts must be at least 1"),
    (["--lr", "-1"], "--lr must be a positive"),
    (["--sft-lr", "0"], "--sft-lr must be a positive"),
    (["--batch-tokens", "0"], "--batch-tokens must be at least 1"),
    (["--eval-every", "-2"], "--eval-every must be 0"),
    (["--threads", "99999999999999"], "--threads must be between 1 and 1024"),
    (["--masks", "5000"], "does not fit the tiny preset's context"),
    (["--out", "{file}"], "is a file, not a folder"),
    (["--out", str(READ_ONLY / "ckpt")], "cannot write"),
    (["--out", "{checkpoint}"], "not empty; pass --overwrite"),
])
def test_pretrain_refuses_before_training(args, message, tmp_path, tiny_checkpoint, monkeypatch):
    no_work(monkeypatch)
    (tmp_path / "file").write_text("x")
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint("llada"), checkpoint)
    before = sorted(p.name for p in checkpoint.iterdir())
    args = [a.replace("{file}", str(tmp_path / "file")).replace("{checkpoint}", str(checkpoint)) for a in args]
    out = ["--out", str(tmp_path / "new")] if "--out" not in args else []
    result = run_cli("pretrain", "--family", "llada", "--preset", "tiny", "--steps", "1", "--sft-steps", "0",
                     "--no-progress", *out, *args)
    assert_one_line_error(result, message)
    assert not (tmp_path / "new").exists() and sorted(p.name for p in checkpoint.iterdir()) == before


def test_pretrain_overwrite_replaces_the_whole_folder(tmp_path, tiny_checkpoint):
    out = tmp_path / "organism"
    shutil.copytree(tiny_checkpoint("llama"), out)
    (out / "README.md").write_text("the old card\n")
    result = run_cli("pretrain", "--family", "llada", "--preset", "tiny", "--steps", "2", "--sft-steps", "0",
                     "--eval-prompts", "2", "--masks", "1", "--no-progress", "--out", out, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "config.json").read_text())["model_type"].lower() == "llada"
    assert "the old card" not in (out / "README.md").read_text() and not (out / "train_state").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["organism"]


# ---- config.json ------------------------------------------------------------------------------

@pytest.mark.parametrize("edit,message", [
    (lambda config: [1, 2], "expected a JSON object, got list"),
    (lambda config: "llada", "expected a JSON object, got str"),
    (lambda config: {**config, "n_layers": 0}, "n_layers=0"),
    (lambda config: {**config, "n_heads": -4}, "n_heads=-4"),
    (lambda config: {**config, "n_kv_heads": 0}, "n_kv_heads=0"),
    (lambda config: {**config, "n_kv_heads": 3}, "not a multiple of n_kv_heads 3"),
    (lambda config: {**config, "rms_norm_eps": -1.0}, "norm_eps=-1.0"),
    (lambda config: {**config, "embedding_size": "many"}, "not a number"),
])
def test_bad_config_json_is_one_line(edit, message, tmp_path, tiny_checkpoint):
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint("llada"), path)
    (path / "config.json").write_text(json.dumps(edit(json.loads((path / "config.json").read_text()))))
    assert_one_line_error(run_cli("model", "info", path), message)


# ---- the command line itself -------------------------------------------------------------------

def test_argparse_errors_are_one_line():
    assert_one_line_error(run_cli("record", "--n", "many"), "invalid int value")
    assert_one_line_error(run_cli("model"), "required")
    assert_one_line_error(run_cli("nonsense"), "invalid choice")


def test_a_closed_pipe_is_not_a_traceback(tmp_path):
    import subprocess
    import sys

    command = ["tasks", "export", "--task", "adjective+largest", "--n", "300", "--out", "-"]  # > a pipe's buffer
    reader = subprocess.Popen([sys.executable, "-m", "mdlm_interp", *command], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    reader.stdout.readline()
    reader.stdout.close()  # like `| head -1`
    assert reader.wait(timeout=60) == 0
    assert reader.stderr.read().decode() == ""


def every_parser(parser, prog="mdlm-interp"):
    """Yield (prog, parser) for the parser and every subcommand under it, depth first."""
    import argparse

    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from every_parser(sub, f"{prog} {name}")


def test_every_flag_of_every_command_is_explained():
    """`--help` explains every flag and renders cleanly: no option without help text, no '%%' left over
    from a description written as if argparse formatted it (it only formats help strings)."""
    from mdlm_interp.cli import build_parser

    commands = list(every_parser(build_parser()))
    assert len(commands) > 15
    for prog, parser in commands:
        text = parser.format_help()
        assert "%%" not in text and "%(" not in text, prog
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and action.help.strip(), f"{prog} {action.option_strings[0]} has no help"
