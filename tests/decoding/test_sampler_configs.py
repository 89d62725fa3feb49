"""The samplers' config dataclasses: the one source of the options of generate, record --decode and the
library, and the one validation of their values (NaN, infinite, negative, out of range, beyond the
model's context), through the command line: one line, exit 2, nothing written."""

from dataclasses import fields

import pytest

from cli_run import run_cli
from mdlm_interp.decoding import DecodeConfig, DreamSamplerConfig, LLaDASamplerConfig, sampler_config
from mdlm_interp.errors import UsageError

PROMPT = " happy dog, 7, 3\nOutput:"


def test_every_option_of_both_samplers_is_a_generate_flag_with_its_help():
    from mdlm_interp.cli import build_parser

    parser = next(a for a in build_parser()._actions if a.dest == "command").choices["generate"]
    flags = {option: action for action in parser._actions for option in action.option_strings}
    for cls in (LLaDASamplerConfig, DreamSamplerConfig):
        for item in fields(cls):
            flag = "--gen-length" if item.name == cls.LENGTH else "--" + item.name.replace("_", "-")
            assert flag in flags, flag
            assert flags[flag].help == item.metadata["help"]
            assert flags[flag].choices == item.metadata["choices"]
    assert flags["--gen-length"].default == LLaDASamplerConfig().gen_length == DreamSamplerConfig().max_new_tokens


def test_configs_fill_in_steps_and_blocks_and_options_stay_with_their_sampler():
    assert LLaDASamplerConfig(gen_length=8) == LLaDASamplerConfig(steps=8, gen_length=8, block_length=8)
    assert DreamSamplerConfig(max_new_tokens=5).steps == 5
    with pytest.raises(UsageError, match="alg: not an option of the llada sampler"):
        sampler_config("llada", alg="entropy")
    with pytest.raises(UsageError, match="unknown sampler"):
        sampler_config("gpt")
    with pytest.raises(UsageError, match="--temperature must be a finite number >= 0, got True"):
        LLaDASamplerConfig(temperature=True)


def test_decode_setting_takes_the_fields_marked_for_record():
    config = DecodeConfig.parse("llada:steps=masks,block=5,cfg=0.5")
    assert config == DecodeConfig("llada", block_length=5, cfg_scale=0.5) == DecodeConfig("llada", block=5, cfg=0.5)
    assert DecodeConfig.parse("llada:cfg=0") == DecodeConfig("llada")  # a default given is the default
    assert config.sampler_config(10) == LLaDASamplerConfig(steps=10, gen_length=10, block_length=5, cfg_scale=0.5)
    assert DecodeConfig.parse("dream:steps=3").sampler_config(6) == DreamSamplerConfig(
        steps=3, max_new_tokens=6, alg="maskgit_plus")
    with pytest.raises(UsageError, match="takes no option temperature"):
        DecodeConfig("llada", temperature=1.0)


def generate(tiny_checkpoint, family, *flags):
    return ["generate", "--model", tiny_checkpoint(family), "--prompt", PROMPT, "--gen-length", "4", *flags]


# (family, flags, what the one line says): every sampler option's bad values
GENERATE_CASES = [
    ("llada", ["--temperature", "nan"], "--temperature must be a finite number >= 0, got nan"),
    ("llada", ["--temperature", "inf"], "--temperature must be a finite number >= 0, got inf"),
    ("llada", ["--temperature", "-1"], "--temperature must be a finite number >= 0, got -1.0"),
    ("dream", ["--temperature=-inf"], "--temperature must be a finite number >= 0"),
    ("llada", ["--cfg-scale", "nan"], "--cfg-scale must be a finite number >= 0, got nan"),
    ("llada", ["--cfg-scale", "inf"], "--cfg-scale must be a finite number >= 0, got inf"),
    ("llada", ["--cfg-scale", "-0.5"], "--cfg-scale must be a finite number >= 0, got -0.5"),
    ("dream", ["--top-p", "0"], "--top-p must be a number in (0, 1], got 0.0"),
    ("dream", ["--top-p", "1.5"], "--top-p must be a number in (0, 1], got 1.5"),
    ("dream", ["--top-p", "nan"], "--top-p must be a number in (0, 1], got nan"),
    ("dream", ["--top-p", "-0.1"], "--top-p must be a number in (0, 1]"),
    ("dream", ["--top-k", "0"], "--top-k must be an integer of at least 1, got 0"),
    ("dream", ["--top-k", "-3"], "--top-k must be an integer of at least 1, got -3"),
    ("dream", ["--eps", "0"], "--eps must be a number in (0, 1), got 0.0"),
    ("dream", ["--eps", "1"], "--eps must be a number in (0, 1), got 1.0"),
    ("dream", ["--eps", "nan"], "--eps must be a number in (0, 1), got nan"),
    ("dream", ["--eps=-inf"], "--eps must be a number in (0, 1)"),
    ("dream", ["--alg-temp", "nan"], "--alg-temp must be a finite number >= 0, got nan"),
    ("dream", ["--alg-temp", "-1"], "--alg-temp must be a finite number >= 0, got -1.0"),
    ("dream", ["--alg-temp", "inf"], "--alg-temp must be a finite number >= 0, got inf"),
    ("llada", ["--steps", "0"], "--steps must be an integer of at least 1, got 0"),
    ("dream", ["--steps", "-2"], "--steps must be an integer of at least 1, got -2"),
    ("llada", ["--gen-length", "0"], "--gen-length must be an integer of at least 1, got 0"),
    ("llada", ["--block-length", "0"], "--block-length must be an integer of at least 1, got 0"),
    ("llada", ["--block-length", "3"], "block length 3 must divide the generation length 4"),
    ("llada", ["--steps", "3", "--block-length", "2"], "steps (3) must be a positive multiple of the number of "
                                                         "blocks (2)"),
    ("llada", ["--gen-length", "1000000000"], "--gen-length 1000000000 does not fit the model's context of 2048"),
    ("dream", ["--gen-length", "2048"], "--gen-length 2048 does not fit the model's context of 2048"),
    ("llada", ["--top-k", "5"], "top_k: not an option of the llada sampler"),
    ("dream", ["--remasking", "random"], "remasking: not an option of the dream sampler"),
]


@pytest.mark.parametrize("family,flags,message", GENERATE_CASES)
def test_generate_refuses_bad_sampler_values_before_loading(tiny_checkpoint, tmp_path, monkeypatch, family, flags,
                                                            message):
    import mdlm_interp.models

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(mdlm_interp.models, "load_model", no_loading)
    trace = tmp_path / "trace.h5"
    result = run_cli(*generate(tiny_checkpoint, family, *flags), "--trace", trace)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert not trace.exists() and list(tmp_path.iterdir()) == []


def test_generate_refuses_prompts_that_leave_no_room_in_the_context(tiny_checkpoint, tmp_path):
    trace = tmp_path / "trace.h5"
    result = run_cli("generate", "--model", tiny_checkpoint("llada"), "--prompt", PROMPT, "--gen-length", "2045",
                     "--trace", trace)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "prompt tokens and 2045 to generate make" in result.stderr and "context of 2048" in result.stderr
    assert not trace.exists()


# --decode values of record: the same rules, named as --decode keys
DECODE_CASES = [
    ("llada:cfg=nan", "--decode cfg must be a finite number >= 0, got nan"),
    ("llada:cfg=-1", "--decode cfg must be a finite number >= 0, got -1.0"),
    ("llada:cfg=inf", "--decode cfg must be a finite number >= 0, got inf"),
    ("llada:block=0", "--decode block must be an integer of at least 1, got 0"),
    ("dream:eps=nan", "--decode eps must be a number in (0, 1), got nan"),
    ("dream:eps=2", "--decode eps must be a number in (0, 1), got 2.0"),
    ("dream:steps=-1", "--decode steps must be an integer of at least 1, got -1"),
]


@pytest.mark.parametrize("decode,message", DECODE_CASES)
def test_record_refuses_bad_decode_values(tmp_path, decode, message):
    out = tmp_path / "refused.h5"
    result = run_cli("record", "--model", "/nonexistent", "--decode", decode, "--out", out, "--no-progress")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert not out.exists()

