"""``record --decode``: which sampler decodes the answer slot and the masks after it, greedily.

``DecodeConfig`` is the setting (``DecodeConfig.parse("llada:steps=10,block=5")``); the keys it takes
are the sampler config fields marked ``decode`` (``decoding.config``), checked by the same rules, and
``run`` builds the sampler's config for a given number of masks and decodes a canvas.
"""

from dataclasses import dataclass, fields

import torch

from mdlm_interp.decoding.config import SAMPLER_CONFIGS, check_option, config_class, option_type
from mdlm_interp.decoding.samplers import ForwardKwargs, OnStep, dream_unmask, llada_unmask
from mdlm_interp.errors import UsageError

GREEDY_ALGORITHMS = ("maskgit_plus", "topk_margin", "entropy")
# what record decodes with where --decode does not say (Dream's "origin" reveals random positions)
RECORD_DEFAULTS = {"dream": {"alg": "maskgit_plus"}}
BY_MASKS = "masks"  # steps=masks, block=masks: one step per mask, one block (the defaults)


def decode_fields(sampler: str) -> dict:
    """Return ``--decode`` key -> sampler config field of ``sampler`` (e.g. "block" -> block_length)."""
    return {f.metadata["decode"]: f for f in fields(config_class(sampler)) if f.metadata["decode"]}


@dataclass(frozen=True, init=False)
class DecodeConfig:
    """How ``record --decode`` unmasks the answer slot and the masks after it (greedy, temperature 0).

    ``sampler``: "llada" or "dream". ``steps``: denoising steps, or None for one step per mask (n steps
    for n masks). ``options``: the other ``--decode`` options as sorted (field, value) pairs of the
    sampler's config (LLaDA's ``block_length``, None for one block over all n masks, and ``cfg_scale``;
    Dream's ``alg``, one of ``GREEDY_ALGORITHMS``, and ``eps``). Keywords name fields or their
    ``--decode`` keys: ``DecodeConfig("llada", block_length=5) == DecodeConfig("llada", block=5)``. Parse
    the command line's ``SAMPLER:key=value,...`` with ``parse``.
    """

    sampler: str
    steps: int | None = None
    options: tuple = ()

    def __init__(self, sampler: str, steps: int | None = None, options=(), **fields_):
        object.__setattr__(self, "sampler", sampler)
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "options", ())
        keys = {key: f.name for key, f in decode_fields(sampler).items()}  # "block" -> block_length, "cfg" -> ...
        given = {keys.get(name, name): value for name, value in {**dict(options), **fields_}.items()}
        defaults = {f.name: self.option(f.name) for f in fields(config_class(sampler))}
        object.__setattr__(self, "options", tuple(sorted((k, v) for k, v in given.items()
                                                         if k not in defaults or v != defaults[k])))
        self.__post_init__()

    def __post_init__(self):
        cls = config_class(self.sampler)
        allowed = {f.name: key for key, f in decode_fields(self.sampler).items()}
        check_option(cls, "steps", self.steps, "--decode steps")
        for name, value in self.options:
            if name not in allowed or name == "steps":
                raise UsageError(f"--decode {self.sampler} takes no option {name}")
            check_option(cls, name, value, f"--decode {allowed[name]}")
        if self.sampler == "dream" and self.option("alg") not in GREEDY_ALGORITHMS:
            raise UsageError(f"--decode alg must be one of {', '.join(GREEDY_ALGORITHMS)} (record decodes greedily), "
                             f"got {self.option('alg')!r}")

    def option(self, name: str):
        """Return the value of sampler config field ``name``: given, record's default or the config's default."""
        given = dict(self.options)
        if name in given:
            return given[name]
        defaults = {f.name: f.default for f in fields(config_class(self.sampler))}
        return {**defaults, **RECORD_DEFAULTS.get(self.sampler, {})}[name]

    @classmethod
    def parse(cls, text: str) -> "DecodeConfig":
        """Return the config of "llada", "llada:steps=K,block=B,cfg=C" or "dream:steps=K,alg=A,eps=E"
        (steps=masks: one step per mask, the default; block=masks: one block, the default)."""
        sampler, _, options = text.partition(":")
        if sampler not in SAMPLER_CONFIGS:
            raise UsageError(f"--decode must start with a sampler, {' or '.join(SAMPLER_CONFIGS)}, got {text!r}")
        keys = decode_fields(sampler)
        values = {}
        for item in filter(None, options.split(",")):
            key, equals, value = item.partition("=")
            if not equals or key not in keys:
                raise UsageError(f"--decode {sampler} takes {', '.join(k + '=...' for k in keys)}; got {item!r}")
            kind = option_type(keys[key])
            try:
                values[keys[key].name] = None if value == BY_MASKS and kind is int else kind(value)
            except ValueError:
                raise UsageError(f"--decode {key} must be {'a whole number' if kind is int else 'a number'}, "
                                 f"got {value!r}") from None
        steps = values.pop("steps", None)
        return cls(sampler, steps, **values)

    def settings(self) -> dict:
        """Return the settings that matter for this sampler (a store's ``settings["decode"]``): the sampler,
        the steps and each ``--decode`` option under its setting name, e.g. {"sampler": "llada", "steps":
        None, "block": None, "cfg_scale": 0.0}."""
        out = {"sampler": self.sampler, "steps": self.steps}
        for f in decode_fields(self.sampler).values():
            if f.name != "steps":
                out[f.metadata["setting"]] = self.option(f.name)
        return out

    def steps_for(self, masks: int) -> int:
        """Return the number of steps that decode ``masks`` masks."""
        return masks if self.steps is None else self.steps

    def sampler_config(self, masks: int):
        """Return the sampler's config that decodes ``masks`` masks; ``UsageError`` if it cannot (LLaDA:
        the block must divide them and the steps be a multiple of their number of blocks)."""
        cls = config_class(self.sampler)
        options = {f.name: self.option(f.name) for f in decode_fields(self.sampler).values() if f.name != "steps"}
        try:
            return cls(steps=self.steps_for(masks), **{cls.LENGTH: masks}, **options)
        except UsageError as error:
            block = options.get("block_length") or masks
            if self.sampler == "llada" and masks % block:
                raise UsageError(f"--decode block={block} does not divide {masks} masks (LLaDA's blocks tile the "
                                 "masks)") from None
            if self.sampler == "llada":
                raise UsageError(f"--decode steps={self.steps_for(masks)} is not a multiple of the {masks // block} "
                                 f"blocks of {masks} masks") from None
            raise error

    def check(self, mask_counts) -> None:
        """Raise ``UsageError`` unless every mask count can be decoded (see ``sampler_config``)."""
        for masks in mask_counts:
            self.sampler_config(masks)

    def run(self, module, canvas: torch.Tensor, *, mask_token_id: int, prediction_offset: int, gen_start,
            gen_length: int, attention_mask=None, on_step: OnStep | None = None,
            forward_kwargs: ForwardKwargs | None = None, keep_logits: torch.Tensor | None = None) -> torch.Tensor:
        """Decode ``canvas`` [batch, pos] whose rows have ``gen_length`` positions (the answer slot and the
        masks after it) from ``gen_start`` (int or [batch]); return the ids [batch, pos]. ``keep_logits``
        [batch, j]: unembed only what the sampler reads and these logit indices (see ``samplers``)."""
        config = self.sampler_config(gen_length)
        common = dict(mask_token_id=mask_token_id, attention_mask=attention_mask, prediction_offset=prediction_offset,
                      on_step=on_step, forward_kwargs=forward_kwargs, keep_logits=keep_logits)
        if self.sampler == "llada":
            return llada_unmask(module, canvas, config, gen_start=gen_start, **common)
        return dream_unmask(module, canvas, config, **common)
