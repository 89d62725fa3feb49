"""Generation from text (``mdlm-interp generate``): prompts in, the family's sampler, texts out."""

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from mdlm_interp.decoding.config import config_class, sampler_config
from mdlm_interp.decoding.block_sampler import llada2_generate
from mdlm_interp.decoding.samplers import OnStep, dream_generate, llada_generate
from mdlm_interp.errors import UsageError

# what generate_text decodes with where the caller does not say (Dream's "origin" reveals random positions)
TEXT_DEFAULTS = {"dream": {"alg": "maskgit_plus"}}


@dataclass
class Generation:
    """The result of ``generate_text``: ids [batch, prompt + gen_length] (prompts left-padded to
    ``prompt_length`` columns), the attention mask [batch, prompt + gen_length], the generated texts
    and the sampler's config."""

    ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_length: int
    texts: list[str]
    config: object = None


def text_sampler_config(sampler: str, gen_length: int, steps: int | None = None, **options):
    """Return the config of ``sampler`` ("llada", "dream" or "llada2_block") generating ``gen_length`` tokens in
    ``steps`` steps (None: one per token; LLaDA2 counts its steps per block: ``steps_per_block``) with ``options`` (the sampler config's other fields; Dream's ``alg``
    defaults to "maskgit_plus" here, greedy at temperature 0). ``UsageError`` for a bad option or value."""
    cls = config_class(sampler)
    given = {"steps": steps} if steps is not None or any(f.name == "steps" for f in fields(cls)) else {}
    return sampler_config(sampler, **given, **{cls.LENGTH: gen_length}, **{**TEXT_DEFAULTS.get(sampler, {}),
                                                                         **options})


def generate_text(lm, prompts: list[str], *, sampler: str | None = None, chat: bool = False, steps: int | None = None,
                  gen_length: int = 32, generator: torch.Generator | None = None, on_step: OnStep | None = None,
                  skip_special_tokens: bool = True, **options) -> Generation:
    """Decode ``gen_length`` tokens after each text of ``prompts`` with ``sampler`` ("llada", "dream" or "llada2_block";
    default the family's own) in ``steps`` steps (default ``gen_length``); return a ``Generation``.

    ``chat`` wraps each prompt in the family's chat template. ``options`` are fields of the sampler's
    config (``decoding.config``: LLaDA's block_length, temperature, cfg_scale, remasking; Dream's alg,
    default "maskgit_plus" here, temperature, top_p, top_k, alg_temp, eps). An option of the other
    sampler, a bad value or prompts that leave no room for ``gen_length`` tokens in the model's
    context raise ``UsageError`` before decoding.
    """
    config = text_sampler_config(sampler or lm.spec.sampler, gen_length, steps, **options)
    if lm.mask_token_id is None:
        raise UsageError(f"a {lm.spec.family} model has no mask token: only diffusion models decode by unmasking")
    if not prompts:
        raise UsageError("no prompt given")
    from mdlm_interp.batching import pad_sequences

    texts = [lm.spec.chat_template.replace("{content}", text) for text in prompts] if chat else prompts
    encoded = [lm.tokenizer.encode(text, add_special_tokens=False) for text in texts]
    if not all(encoded):
        raise UsageError("a prompt is empty")
    pad_id = lm.tokenizer.convert_tokens_to_ids(lm.spec.special_tokens["pad"])
    ids, valid, _ = pad_sequences(encoded, pad_id, side="left")
    device = next(lm.model.parameters()).device
    ids, valid = ids.to(device), valid.long().to(device)
    mask = None if bool(valid.all()) else valid
    generate = {"llada": llada_generate, "dream": dream_generate, "llada2_block": llada2_generate}[sampler or lm.spec.sampler]
    out = generate(lm, ids, config, attention_mask=mask, generator=generator, on_step=on_step)
    generated = [lm.tokenizer.decode(row[ids.shape[1]:].tolist(), skip_special_tokens=skip_special_tokens)
                 for row in out.cpu()]
    return Generation(out, F.pad(valid, (0, gen_length), value=1), ids.shape[1], generated, config)
