"""Adapters: checked against what the toolkit supports before peft sees them (fault injection over broken
copies of the shipped organism-llada-ma), identified by everything that changes the computation, and
tied to their base weights by a file every adapter has."""

import json
import math
import pickle
import shutil

import pytest

from cli_run import run_cli
from mdlm_interp.errors import UsageError
from mdlm_interp.models.adapter import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    TRAINING_CONFIG,
    adapter_fingerprint,
    apply_adapter,
    base_reference,
    check_adapter_dir,
    trained_on,
)
from mdlm_interp.paths import data_dir

SHIPPED = data_dir() / "adapters" / "organism-llada-ma"
BASE = "sha256:6eda235090d526fa29fa7a85813a5f5f19e8753a1f9aab0acb624352de6f547d"  # organism-llada's weights


def copy_adapter(tmp_path, name="adapter"):
    target = tmp_path / name
    shutil.copytree(SHIPPED, target)
    return target


def edit_config(**changes):
    def edit(path):
        config = json.loads((path / ADAPTER_CONFIG).read_text())
        config.update(changes)
        (path / ADAPTER_CONFIG).write_text(json.dumps(config))
    return edit


def write(name, data: bytes):
    def edit(path):
        (path / name).write_bytes(data)
    return edit


def truncate(path):
    weights = (path / ADAPTER_WEIGHTS).read_bytes()
    (path / ADAPTER_WEIGHTS).write_bytes(weights[: len(weights) // 2])


BROKEN = [  # (case, edit of a copy of the shipped adapter, the file the one-line error names, its words)
    ("task_type CAUSAL_LM", edit_config(task_type="CAUSAL_LM"), ADAPTER_CONFIG, "task_type 'CAUSAL_LM'"),
    ("peft_type PROMPT_TUNING", edit_config(peft_type="PROMPT_TUNING"), ADAPTER_CONFIG, "peft_type 'PROMPT_TUNING'"),
    ("megatron_config", edit_config(megatron_config={"tensor_model_parallel_size": 1}), ADAPTER_CONFIG,
     "megatron_config is set"),
    ("megatron_core names a module", edit_config(megatron_core="os"), ADAPTER_CONFIG, "peft would import"),
    ("init loftq", edit_config(init_lora_weights="loftq"), ADAPTER_CONFIG, "init_lora_weights 'loftq'"),
    ("init pissa", edit_config(init_lora_weights="pissa"), ADAPTER_CONFIG, "init_lora_weights 'pissa'"),
    ("loftq_config", edit_config(loftq_config={"loftq_bits": 4}), ADAPTER_CONFIG, "loftq_config is set"),
    ("use_dora", edit_config(use_dora=True), ADAPTER_CONFIG, "use_dora is set"),
    ("layer_replication", edit_config(layer_replication=[[0, 1]]), ADAPTER_CONFIG, "layer_replication is set"),
    ("r 0", edit_config(r=0), ADAPTER_CONFIG, "r 0 is not a positive integer"),
    ("lora_alpha NaN", edit_config(lora_alpha=math.nan), ADAPTER_CONFIG, "lora_alpha nan"),
    ("config not JSON", write(ADAPTER_CONFIG, b"{\"r\": 4,"), ADAPTER_CONFIG, "not valid JSON"),
    ("config a list", write(ADAPTER_CONFIG, b"[1, 2]"), ADAPTER_CONFIG, "not an object"),
    ("training_config a list", write(TRAINING_CONFIG, b"[]"), TRAINING_CONFIG, "not an object"),
    ("training_config not JSON", write(TRAINING_CONFIG, b"\xff\xfe"), TRAINING_CONFIG, "not valid JSON"),
    ("training_config provenance a string", write(TRAINING_CONFIG, b'{"provenance": "x"}'), TRAINING_CONFIG,
     "provenance is not an object"),
    ("weights truncated", truncate, ADAPTER_WEIGHTS, "corrupted safetensors"),
    ("weights empty", write(ADAPTER_WEIGHTS, b""), ADAPTER_WEIGHTS, "corrupted safetensors"),
    ("weights garbage", write(ADAPTER_WEIGHTS, b"\x13\x00\x00\x00\x00\x00\x00\x00not json at all!!!"),
     ADAPTER_WEIGHTS, "corrupted safetensors"),
    ("weights a pickle", write(ADAPTER_WEIGHTS, pickle.dumps({"lora_A": [1.0, 2.0]})), ADAPTER_WEIGHTS,
     "corrupted safetensors"),
    ("weights 2^62 header", write(ADAPTER_WEIGHTS, (2 ** 62).to_bytes(8, "little") + b"{}"), ADAPTER_WEIGHTS,
     "corrupted safetensors"),
]


@pytest.fixture
def no_peft_load(monkeypatch):
    """peft must never read a refused adapter."""
    import peft

    def refuse(*args, **kwargs):
        raise AssertionError("peft read the adapter")

    monkeypatch.setattr(peft.PeftModel, "from_pretrained", refuse)


@pytest.mark.parametrize("case,edit,file,words", BROKEN, ids=[case[0] for case in BROKEN])
def test_an_adapter_peft_cannot_take_is_one_line_exit_2_before_peft(tmp_path, no_peft_load, case, edit, file, words):
    adapter = copy_adapter(tmp_path)
    edit(adapter)
    out = tmp_path / "x.h5"
    result = run_cli("record", "--model", "organism-llada", "--adapter", adapter, "--task", "adjective+largest",
                     "--n", "1", "--no-progress", "--out", out)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and words in result.stderr, result.stderr
    assert file in result.stderr  # the one line names the file
    assert not out.exists()


def test_the_fingerprint_covers_the_config_fields_that_change_the_computation(tmp_path):
    shipped = adapter_fingerprint(SHIPPED)
    assert shipped == adapter_fingerprint(copy_adapter(tmp_path, "same"))
    for name, changes in [("alpha", {"lora_alpha": 16.0}), ("pissa", {"init_lora_weights": "pissa"}),
                          ("rslora", {"use_rslora": True}), ("targets", {"target_modules": ["q_proj"]})]:
        adapter = copy_adapter(tmp_path, name)
        edit_config(**changes)(adapter)
        assert adapter_fingerprint(adapter) != shipped, name
    ignored = copy_adapter(tmp_path, "ignored")  # fields that change nothing computed
    edit_config(peft_version="9.9.9", inference_mode=False, revision="main", base_model_name_or_path="x")(ignored)
    assert adapter_fingerprint(ignored) == shipped
    weights = copy_adapter(tmp_path, "weights")
    data = bytearray((weights / ADAPTER_WEIGHTS).read_bytes())
    data[-1] ^= 1
    (weights / ADAPTER_WEIGHTS).write_bytes(bytes(data))
    assert adapter_fingerprint(weights) != shipped


def test_the_base_weights_check_needs_no_training_config(tmp_path):
    adapter = copy_adapter(tmp_path)
    (adapter / TRAINING_CONFIG).unlink()
    assert trained_on(check_adapter_dir(adapter)) == BASE  # from adapter_config.json alone
    with pytest.raises(UsageError, match="was trained on weights"):
        apply_adapter(None, adapter, base_fingerprint="sha256:" + "0" * 64)  # refused before the model is touched
    edit_config(base_model_name_or_path="organism-llada")(adapter)  # records nothing any more
    with pytest.raises(UsageError, match="records no base weights"):
        apply_adapter(None, adapter, base_fingerprint=BASE)
    old_style = copy_adapter(tmp_path, "old-style")  # base only in training_config.json: still read
    edit_config(base_model_name_or_path="organism-llada")(old_style)
    assert trained_on(old_style) == BASE


def test_the_shipped_adapters_record_their_base_and_load_without_training_config(tmp_path):
    from mdlm_interp import load_model

    for name in ("organism-llada-ma", "organism-llada-ce"):
        config = json.loads((data_dir() / "adapters" / name / ADAPTER_CONFIG).read_text())
        assert config["base_model_name_or_path"] == base_reference("organism-llada", BASE)
    adapter = copy_adapter(tmp_path)
    (adapter / TRAINING_CONFIG).unlink()
    lm = load_model("organism-llada", adapter=adapter)
    assert lm.adapter.fingerprint == adapter_fingerprint(SHIPPED)
    result = run_cli("model", "info", "organism-llama", "--adapter", adapter)
    assert result.returncode == 2 and "was trained on weights" in result.stderr


def test_resuming_after_the_adapter_config_changed_is_refused(tmp_path):
    adapter = copy_adapter(tmp_path)
    argv = ("record", "--model", "organism-llada", "--adapter", adapter, "--task", "adjective+largest", "--n", "1",
            "--masks", "1", "--record", "attention", "--no-progress", "--out", tmp_path / "s.h5")
    assert run_cli(*argv).returncode == 0
    before = (tmp_path / "s.h5").read_bytes()
    edit_config(lora_alpha=80.0)(adapter)  # the same weights, another model
    result = run_cli(*argv, "--resume")
    assert result.returncode == 2 and "settings.adapter.fingerprint" in result.stderr, result.stderr
    assert (tmp_path / "s.h5").read_bytes() == before
