"""The samplers' settings: one frozen dataclass per sampler, the single source of its options.

``LLaDASamplerConfig``, ``DreamSamplerConfig`` and ``LLaDA2SamplerConfig`` hold every option of LLaDA's,
Dream's and LLaDA2's samplers (``decoding.samplers``, ``decoding.block_sampler``). Each option is a field whose metadata says what it means (``help``), its
choices, which ``mdlm-interp generate`` flag sets it (``--`` and the name with dashes; the two
samplers' generation lengths are both ``--gen-length``) and whether ``record --decode`` takes it
(``decode``: its key in ``SAMPLER:key=value``; ``setting``: its name in a store's settings). The
command line is built from these fields and ``__post_init__`` checks every value once: a wrong type,
NaN, an infinite, negative or out-of-range value raises ``UsageError`` naming the option. Imports no
torch, so the command line's ``--help`` stays fast.
"""

import math
from dataclasses import dataclass, field, fields

from mdlm_interp.errors import UsageError

LLADA_REMASKING = ("low_confidence", "random")
DREAM_ALGORITHMS = ("origin", "maskgit_plus", "topk_margin", "entropy")
LENGTH_FLAG = "--gen-length"  # every sampler's generation length on the command line
# the help of options two samplers share (one flag on the command line)
BLOCK_HELP = ("block length, dividing the generation length; blocks are decoded left to right (llada: the steps split "
              "evenly over them, default one block; llada2_block: block attention, positions counted from the prompt's "
              "first token, default 32)")
TEMPERATURE_HELP = ("sampling temperature (default 0: greedy); LLaDA draws with Gumbel noise in float64, Dream and "
                    "LLaDA2 from the softmax")


def option(default, help: str, *, check: str, choices=None, decode: str | None = None, setting: str | None = None):
    """Return a dataclass field with the option's metadata (see the module docstring). ``check`` names
    the rule of ``CHECKS`` its value must pass."""
    return field(default=default, metadata={"help": help, "check": check, "choices": choices, "decode": decode,
                                            "setting": setting})


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# rule -> (test of a value, what a wrong value is told, the type its text is read as)
CHECKS = {
    "count": (_count, "must be an integer of at least 1", int),
    "count or none": (lambda v: v is None or _count(v), "must be an integer of at least 1", int),
    "non-negative": (lambda v: _number(v) and v >= 0, "must be a finite number >= 0", float),
    "non-negative or none": (lambda v: v is None or (_number(v) and v >= 0), "must be a finite number >= 0", float),
    "probability or none": (lambda v: v is None or (_number(v) and 0 < v <= 1), "must be a number in (0, 1]", float),
    "open unit": (lambda v: _number(v) and 0 < v < 1, "must be a number in (0, 1)", float),
    "closed unit": (lambda v: _number(v) and 0 <= v <= 1, "must be a number in [0, 1]", float),
    "choice": (None, "must be one of", str),
}


def option_type(item) -> type:
    """Return the type (int, float or str) the text of option field ``item`` is read as."""
    return CHECKS[item.metadata["check"]][2]


def option_label(config_class, name: str) -> str:
    """Return how the command line names option ``name`` of ``config_class`` (e.g. "--cfg-scale")."""
    return LENGTH_FLAG if name == config_class.LENGTH else "--" + name.replace("_", "-")


def check_option(config_class, name: str, value, label: str | None = None) -> None:
    """Raise ``UsageError`` unless ``value`` is valid for option ``name`` of ``config_class``; the message
    names the option as ``label`` (default its command-line flag)."""
    meta = {f.name: f.metadata for f in fields(config_class)}[name]
    label = label or option_label(config_class, name)
    if meta["check"] == "choice":
        if value not in meta["choices"]:
            raise UsageError(f"{label} must be one of {', '.join(meta['choices'])}, got {value!r}")
        return
    test, told, _ = CHECKS[meta["check"]]
    if not test(value):
        raise UsageError(f"{label} {told}, got {value!r}")


@dataclass(frozen=True)
class LLaDASamplerConfig:
    """LLaDA's sampler (``generate.py`` of ML-GSAI/LLaDA): ``gen_length`` masks after the prompt, cut into
    blocks of ``block_length`` decoded left to right, ``steps`` steps split evenly over the blocks.

    ``steps`` None: one step per token; ``block_length`` None: one block. Both are filled in on
    construction, so a built config holds numbers."""

    LENGTH = "gen_length"

    steps: int | None = option(None, "denoising steps, one forward pass each (default: the number of tokens to "
                               "generate, one token per step)", check="count or none", decode="steps",
                               setting="steps")
    gen_length: int = option(32, "tokens to generate, i.e. masks after the prompt (default 32)", check="count")
    block_length: int | None = option(None, BLOCK_HELP, check="count or none", decode="block", setting="block")
    temperature: float = option(0.0, TEMPERATURE_HELP, check="non-negative")
    cfg_scale: float = option(0.0, "unsupervised classifier-free guidance scale (default 0: none)",
                              check="non-negative", decode="cfg", setting="cfg_scale")
    remasking: str = option("low_confidence", "which masked positions each step reveals: the most confident "
                            "(low_confidence, the default) or random ones", check="choice", choices=LLADA_REMASKING)

    def __post_init__(self):
        for item in fields(self):
            check_option(type(self), item.name, getattr(self, item.name))
        if self.block_length is None:
            object.__setattr__(self, "block_length", self.gen_length)
        if self.gen_length % self.block_length:
            raise UsageError(f"block length {self.block_length} must divide the generation length {self.gen_length}")
        blocks = self.gen_length // self.block_length
        if self.steps is None:
            object.__setattr__(self, "steps", self.gen_length)
        if self.steps % blocks:
            raise UsageError(f"steps ({self.steps}) must be a positive multiple of the number of blocks ({blocks})")


@dataclass(frozen=True)
class DreamSamplerConfig:
    """Dream's sampler (``generation_utils.py``): ``max_new_tokens`` masks after the prompt, denoised as a
    whole over timesteps ``linspace(1, eps, steps + 1)``.

    ``steps`` None: one step per token (filled in on construction)."""

    LENGTH = "max_new_tokens"

    steps: int | None = option(None, "denoising steps, one forward pass each (default: the number of tokens to "
                               "generate, one token per step)", check="count or none", decode="steps",
                               setting="steps")
    max_new_tokens: int = option(32, "tokens to generate, i.e. masks after the prompt (default 32)", check="count")
    alg: str = option("origin", "origin: each mask revealed with probability 1 - s/t; the others reveal the "
                      "positions with the best top-1 probability, top-1 minus top-2 margin, or negative entropy "
                      "(generate and record --decode default to maskgit_plus, dream_generate to origin)",
                      check="choice", choices=DREAM_ALGORITHMS, decode="alg", setting="alg")
    temperature: float = option(0.0, TEMPERATURE_HELP, check="non-negative")
    top_p: float | None = option(None, "nucleus sampling threshold in (0, 1] (with --temperature)",
                                 check="probability or none")
    top_k: int | None = option(None, "keep the k most likely tokens (with --temperature)", check="count or none")
    alg_temp: float | None = option(None, "draw the positions to reveal from softmax(confidence / ALG_TEMP) instead "
                                    "of the top ones (0: the top ones)", check="non-negative or none")
    eps: float = option(1e-3, "last timestep of the schedule, in (0, 1) (default 0.001)", check="open unit",
                        decode="eps", setting="eps")

    def __post_init__(self):
        for item in fields(self):
            check_option(type(self), item.name, getattr(self, item.name))
        if self.steps is None:
            object.__setattr__(self, "steps", self.max_new_tokens)


@dataclass(frozen=True)
class LLaDA2SamplerConfig:
    """LLaDA2's block sampler (``LLaDA2MoeModelLM.generate`` of inclusionAI's LLaDA2 and the LLaDA2 sampler of
    ZHZisZZ/dllm): the prompt and ``gen_length`` masks are cut into blocks of ``block_length`` positions
    counted from the first prompt token (the last block filled up with masks); block attention
    (bidirectional inside a block, causal across blocks); the blocks holding masks are decoded left to
    right, ``steps_per_block`` steps each, a step revealing every mask whose proposal is more probable
    than ``threshold`` when they are at least the schedule's count, else the count most probable.

    ``steps_per_block`` None: ``block_length`` (one token per step); it is capped at
    ``gen_length // minimal_topk`` as in the official code. Both are filled in on construction."""

    LENGTH = "gen_length"

    steps_per_block: int | None = option(None, "llada2_block: denoising steps per block, one forward pass each (default: "
                                         "the block length), at most gen_length // minimal_topk", check="count or none")
    gen_length: int = option(32, "tokens to generate, i.e. masks after the prompt (default 32)", check="count")
    block_length: int = option(32, BLOCK_HELP, check="count")
    temperature: float = option(0.0, TEMPERATURE_HELP, check="non-negative")
    top_p: float | None = option(None, "nucleus sampling threshold in (0, 1] (with --temperature)",
                                 check="probability or none")
    top_k: int | None = option(None, "keep the k most likely tokens (with --temperature)", check="count or none")
    threshold: float = option(0.95, "llada2_block: reveal every mask whose proposal has a probability above this when "
                              "they are at least the step's scheduled count (default 0.95)", check="closed unit")
    minimal_topk: int = option(1, "llada2_block: caps the steps per block at gen_length // minimal_topk (default 1)",
                               check="count")

    def __post_init__(self):
        for item in fields(self):
            check_option(type(self), item.name, getattr(self, item.name))
        if self.gen_length % self.block_length:
            raise UsageError(f"block length {self.block_length} must divide the generation length {self.gen_length}")
        if self.minimal_topk > self.gen_length:
            raise UsageError(f"--minimal-topk {self.minimal_topk} leaves no step for {self.gen_length} tokens")
        steps = self.block_length if self.steps_per_block is None else self.steps_per_block
        object.__setattr__(self, "steps_per_block", min(steps, self.gen_length // self.minimal_topk))


SAMPLER_CONFIGS = {"llada": LLaDASamplerConfig, "dream": DreamSamplerConfig, "llada2_block": LLaDA2SamplerConfig}


def config_class(sampler) -> type:
    """Return the config dataclass of ``sampler`` ("llada", "dream" or "llada2_block"); ``UsageError`` for another name."""
    if sampler not in SAMPLER_CONFIGS:
        raise UsageError(f"unknown sampler {sampler!r} (choose from {', '.join(SAMPLER_CONFIGS)})")
    return SAMPLER_CONFIGS[sampler]


def sampler_config(sampler: str, **options):
    """Return the config of ``sampler`` built from ``options`` (its field names); an option the sampler
    does not take, or a bad value, raises ``UsageError``."""
    cls = config_class(sampler)
    names = [f.name for f in fields(cls)]
    wrong = sorted(set(options) - set(names))
    if wrong:
        raise UsageError(f"{', '.join(wrong)}: not an option of the {sampler} sampler "
                         f"(its options: {', '.join(names)})")
    return cls(**options)
