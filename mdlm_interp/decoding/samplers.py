"""Iterative unmasking: LLaDA's and Dream's samplers, one forward pass per step, with a per-step callback.

Both samplers are rebuilt from the facts of the official code (LLaDA's ``generate.py`` in ML-GSAI/LLaDA,
Dream's ``generation_utils.py``), for any diffusion model of the toolkit; their options are the fields
of ``decoding.config.LLaDASamplerConfig`` and ``DreamSamplerConfig`` (given as a config or as keywords):

- LLaDA: the canvas is the prompt followed by ``gen_length`` masks, cut into blocks of
  ``block_length`` decoded left to right (semi-autoregressive); each block gets ``steps / blocks``
  steps, and each step reveals the same share of the block's masks (the remainder goes to the first
  steps), choosing the most confident masked positions up to the end of the current block
  ("low_confidence": the probability of the proposed token) or random ones ("random"). Proposals are
  the argmax, or at temperature > 0 a Gumbel-max draw in float64; ``cfg_scale`` > 0 adds unsupervised
  classifier-free guidance (the same canvas with the prompt masked out).
- Dream: the canvas is the prompt followed by ``max_new_tokens`` masks, denoised as a whole over
  timesteps ``linspace(1, eps, steps + 1)``; from t to s, "origin" reveals each mask with probability
  1 - s/t, the confidence algorithms ("maskgit_plus": top-1 probability, "topk_margin": top-1 minus
  top-2, "entropy": negative entropy) reveal the ``int(masks * (1 - s/t))`` best positions (all the
  rest at the last step). Proposals come from temperature, top-p and top-k sampling (the argmax at
  temperature 0).

Predictions are read through ``models.readout`` with the family's prediction offset (Dream's shifted
logits). Every random choice draws from ``generator``. ``on_step(step, state)`` sees each step's
``DecodeStep``; hooks attached with ``model.hooks(...)`` fire once per step (one forward pass per step;
with classifier-free guidance that pass holds 2 x batch rows). ``forward_kwargs(model_input)`` adds
keyword arguments to each step's forward pass (e.g. attention probes on the masks that are left).
``keep_logits`` [batch, j] (logit indices, or None for every position): each step unembeds only the
positions the sampler reads (its candidate masks, through the prediction offset) and these; the step's
``DecodeStep.logits`` are then ``models.readout.PartialLogits`` (read them through ``models.readout``).

``llada_generate`` / ``dream_generate`` append the masks to a prompt; the lower-level ``llada_unmask``
and ``dream_unmask`` decode a given canvas (any tokens, masks anywhere), which ``record --decode`` uses.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mdlm_interp.decoding.config import DreamSamplerConfig, LLaDASamplerConfig
from mdlm_interp.errors import UsageError
from mdlm_interp.models.readout import PartialLogits, kept_positions, logit_request, logits_where, received

ENTROPY_EPS = 1e-10  # Dream's entropy confidence: sum p * log(p + 1e-10)


@dataclass
class DecodeStep:
    """What one denoising step saw and did; tensors have the batch first.

    step: the step's index over the whole decode (0 .. steps - 1); block: LLaDA's block (0 for Dream).
    input_ids [batch, pos]: the canvas the forward pass read; ids [batch, pos]: the canvas after the step.
    logits [batch, pos, vocab]: the step's raw logits, not shifted (under classifier-free guidance the
    guided mixture); ``logits[:, i + prediction_offset]`` predicts the token at i (with ``keep_logits``:
    ``models.readout.PartialLogits``, read through ``models.readout``).
    proposed [batch, pos]: the token the sampler proposed at each position it scored (elsewhere the
    current token). confidence [batch, pos] float: the score it ranked those positions by (-inf
    elsewhere; for Dream's "origin", the proposal's probability at the positions it revealed).
    unmasked [batch, pos] bool: the positions revealed at this step.
    """

    step: int
    block: int
    input_ids: torch.Tensor
    ids: torch.Tensor
    logits: torch.Tensor
    proposed: torch.Tensor
    confidence: torch.Tensor
    unmasked: torch.Tensor
    prediction_offset: int


OnStep = Callable[[int, DecodeStep], None]
ForwardKwargs = Callable[[torch.Tensor], dict]


def _config(cls, config, options: dict):
    """Return ``config``, or a ``cls`` built from ``options`` (the sampler's options as keywords)."""
    if config is None:
        return cls(**options)
    if options:
        raise TypeError(f"give either a {cls.__name__} or its options as keywords, not both")
    return config


def llada_generate(lm, prompt_ids: torch.Tensor, config: LLaDASamplerConfig | None = None, *,
                   attention_mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
                   on_step: OnStep | None = None, forward_kwargs: ForwardKwargs | None = None,
                   **options) -> torch.Tensor:
    """Decode ``config.gen_length`` tokens after ``prompt_ids`` [batch, prompt] with LLaDA's sampler.

    ``config``: a ``LLaDASamplerConfig``, or its fields as keywords (``steps=4, gen_length=8,
    block_length=4, temperature, cfg_scale, remasking``). ``lm``: a loaded diffusion model
    (``load_model``). ``attention_mask`` [batch, prompt] (1 valid, 0 padding, either side) marks padded
    prompts; the masks are appended after the prompt's last column. Returns the ids [batch, prompt + gen_length].
    """
    config = _config(LLaDASamplerConfig, config, options)
    canvas, mask = append_masks(lm, prompt_ids, config.gen_length, attention_mask)
    return llada_unmask(lm.model, canvas, config, mask_token_id=lm.mask_token_id, gen_start=prompt_ids.shape[1],
                        attention_mask=mask, generator=generator, prediction_offset=lm.spec.prediction_offset,
                        on_step=on_step, forward_kwargs=forward_kwargs)


def dream_generate(lm, prompt_ids: torch.Tensor, config: DreamSamplerConfig | None = None, *,
                   attention_mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
                   on_step: OnStep | None = None, forward_kwargs: ForwardKwargs | None = None,
                   **options) -> torch.Tensor:
    """Decode ``config.max_new_tokens`` tokens after ``prompt_ids`` [batch, prompt] with Dream's sampler.

    ``config``: a ``DreamSamplerConfig``, or its fields as keywords (``steps, max_new_tokens, alg,
    temperature, top_p, top_k, alg_temp, eps``); ``attention_mask`` as in ``llada_generate``.
    Returns the ids [batch, prompt + max_new_tokens].
    """
    config = _config(DreamSamplerConfig, config, options)
    canvas, mask = append_masks(lm, prompt_ids, config.max_new_tokens, attention_mask)
    return dream_unmask(lm.model, canvas, config, mask_token_id=lm.mask_token_id, attention_mask=mask,
                        generator=generator, prediction_offset=lm.spec.prediction_offset, on_step=on_step,
                        forward_kwargs=forward_kwargs)


def append_masks(lm, prompt_ids: torch.Tensor, n: int, attention_mask) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return (``prompt_ids`` [batch, prompt] followed by ``n`` masks [batch, prompt + n], its attention mask
    or None when nothing is padded). ``UsageError`` for a model without a mask token or a canvas longer
    than the model's context (checked before the canvas is allocated)."""
    if lm.mask_token_id is None:
        raise UsageError(f"a {lm.spec.family} model has no mask token: only diffusion models decode by unmasking")
    width = prompt_ids.shape[1] + n
    if width > lm.config.max_seq_len:
        raise UsageError(f"{prompt_ids.shape[1]} prompt tokens and {n} to generate make {width}, beyond the "
                         f"model's context of {lm.config.max_seq_len} tokens")
    canvas = F.pad(prompt_ids, (0, n), value=lm.mask_token_id)
    if attention_mask is None or bool(attention_mask.all()):
        return canvas, None
    return canvas, F.pad(attention_mask, (0, n), value=1)


@torch.no_grad()
def llada_unmask(module, canvas: torch.Tensor, config: LLaDASamplerConfig | None = None, *, mask_token_id: int,
                 gen_start, attention_mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 prediction_offset: int = 0, on_step: OnStep | None = None,
                 forward_kwargs: ForwardKwargs | None = None, keep_logits: torch.Tensor | None = None,
                 **options) -> torch.Tensor:
    """Run LLaDA's sampler on ``canvas`` [batch, pos]; return the decoded ids [batch, pos] (``keep_logits``:
    see the module docstring).

    ``config``: a ``LLaDASamplerConfig`` or its fields as keywords. The generated region of row b is
    [gen_start[b], gen_start[b] + gen_length) (``gen_start`` an int or a [batch] tensor), cut into
    blocks of ``block_length``; only its masks are counted by the schedule. As in the official code,
    masked positions anywhere before the end of the current block are candidates, and tokens that are
    not masks are never changed.
    """
    config = _config(LLaDASamplerConfig, config, options)
    block_length, temperature, cfg_scale = config.block_length, config.temperature, config.cfg_scale
    num_blocks = config.gen_length // block_length
    steps_per_block = config.steps // num_blocks
    x = canvas
    batch, width = x.shape
    columns = torch.arange(width, device=x.device)
    gen_start = torch.as_tensor(gen_start, device=x.device).expand(batch)[:, None]
    prompt = x != mask_token_id  # what guidance masks out: every token that is not a mask at the start
    step = 0
    for block in range(num_blocks):
        block_end = gen_start + (block + 1) * block_length  # [batch, 1]
        in_block = (columns >= block_end - block_length) & (columns < block_end)
        transfer_counts = tokens_per_step(((x == mask_token_id) & in_block).sum(1), steps_per_block)
        for i in range(steps_per_block):
            masked = x == mask_token_id
            candidates = masked & (columns < block_end)
            read = read_positions(candidates, prediction_offset, keep_logits)
            if cfg_scale > 0:
                unconditional = x.masked_fill(prompt, mask_token_id)
                both = torch.cat([x, unconditional])
                both_mask = None if attention_mask is None else torch.cat([attention_mask, attention_mask])
                both_read = None if read is None else read.repeat(2, 1)
                logits = guided(_forward(module, both, both_mask, forward_kwargs, both_read), cfg_scale)
            else:
                logits = _forward(module, x, attention_mask, forward_kwargs, read)
            rows, cols = candidates.nonzero(as_tuple=True)
            scores = logits_where(logits, rows, cols, prediction_offset, clamp=True)  # [candidates, vocab]
            if temperature > 0:  # Gumbel-max in float64: argmax of exp(logits) / (-log u) ** temperature
                noise = -torch.log(torch.rand(scores.shape, generator=generator, dtype=torch.float64,
                                              device=scores.device))
                chosen = (scores.double().exp() / noise**temperature).argmax(-1)
            else:
                chosen = scores.argmax(-1)
            # low_confidence: the unperturbed probability of the proposal, in float64 as LLaDA's generate.py
            # computed it (later copies use the logits' dtype, which can only reorder near ties)
            if config.remasking == "low_confidence":
                score = scores.double().softmax(-1).gather(-1, chosen[:, None])[:, 0]
            else:
                score = torch.rand(len(rows), generator=generator, dtype=torch.float64, device=x.device)
            confidence = torch.full((batch, width), float("-inf"), dtype=torch.float64, device=x.device)
            confidence[rows, cols] = score
            proposed = x.clone()
            proposed[rows, cols] = chosen
            # each row reveals its own count, by top-k over the whole row (ties as torch.topk breaks them)
            transfer = torch.zeros_like(masked)
            for row in range(batch):
                transfer[row, confidence[row].topk(int(transfer_counts[row, i])).indices] = True
            transfer &= candidates
            new_x = torch.where(transfer, proposed, x)
            if on_step is not None:
                on_step(step, DecodeStep(step, block, x, new_x, logits, proposed, confidence.float(), transfer,
                                         prediction_offset))
            x = new_x
            step += 1
    return x


def tokens_per_step(mask_counts: torch.Tensor, steps: int) -> torch.Tensor:
    """Return LLaDA's schedule [batch, steps]: each row's ``mask_counts`` spread evenly over ``steps``,
    the remainder one by one to the first steps (e.g. 7 over 3 steps: 3, 2, 2)."""
    base = mask_counts[:, None] // steps
    extra = torch.arange(steps, device=mask_counts.device)[None] < (mask_counts % steps)[:, None]
    return base + extra.long()


@torch.no_grad()
def dream_unmask(module, canvas: torch.Tensor, config: DreamSamplerConfig | None = None, *, mask_token_id: int,
                 attention_mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 prediction_offset: int = -1, on_step: OnStep | None = None,
                 forward_kwargs: ForwardKwargs | None = None, keep_logits: torch.Tensor | None = None,
                 **options) -> torch.Tensor:
    """Run Dream's sampler on ``canvas`` [batch, pos] (every mask in it is decoded; ``config.max_new_tokens``
    is not read); return the ids [batch, pos] (``keep_logits``: see the module docstring).

    ``config``: a ``DreamSamplerConfig`` or its fields as keywords. As in the official code, the number
    of positions revealed per step comes from the batch's mean number of masks (rows with equal mask
    counts, as in generation, each reveal that many) and the schedule runs in float32; proposals for
    revealed positions never overwrite a token that is not a mask (the official code would write masks
    there when a row has fewer masks than the mean).
    """
    config = _config(DreamSamplerConfig, config, options)
    steps, alg, alg_temp = config.steps, config.alg, config.alg_temp
    sampling = dict(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k, generator=generator)
    x = canvas
    batch, width = x.shape
    timesteps = torch.linspace(1, config.eps, steps + 1, device=x.device)
    for i in range(steps):
        masked = x == mask_token_id
        read = read_positions(masked, prediction_offset, keep_logits)
        logits = _forward(module, x, attention_mask, forward_kwargs, read)
        rows, cols = masked.nonzero(as_tuple=True)  # row-major: the order of logits[mask_index]
        scores = logits_where(logits, rows, cols, prediction_offset, clamp=True)  # [masks, vocab]
        t, s = timesteps[i], timesteps[i + 1]
        confidence = torch.full((batch, width), float("-inf"), dtype=logits.dtype, device=x.device)
        proposed = x.clone()
        transfer = torch.zeros_like(masked)
        if alg == "origin":
            share = 1 - s / t if i < steps - 1 else 1
            revealed = torch.rand(len(rows), generator=generator, device=x.device) < share
            score, chosen = sample_tokens(scores[revealed], **sampling)
            rows, cols = rows[revealed], cols[revealed]
            confidence[rows, cols] = score
            proposed[rows, cols] = chosen
            transfer[rows, cols] = True
        else:
            score, chosen = sample_tokens(scores, margin=alg == "topk_margin", neg_entropy=alg == "entropy",
                                          **sampling)
            confidence[rows, cols] = score
            proposed[rows, cols] = chosen
            mean_masks = masked.sum() / batch
            count = int(mean_masks * (1 - s / t)) if i < steps - 1 else int(mean_masks)
            if count > 0:
                if not alg_temp:
                    index = confidence.topk(count, dim=-1).indices
                else:
                    index = torch.multinomial((confidence / alg_temp).softmax(-1), count, generator=generator)
                transfer[torch.arange(batch, device=x.device)[:, None], index] = True
                transfer &= masked
        new_x = torch.where(transfer, proposed, x)
        if on_step is not None:
            on_step(i, DecodeStep(i, 0, x, new_x, logits, proposed, confidence, transfer, prediction_offset))
        x = new_x
    return x


def sample_tokens(logits: torch.Tensor, temperature: float = 0.0, top_p: float | None = None,
                  top_k: int | None = None, *, margin: bool = False, neg_entropy: bool = False,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dream's proposal for each row of ``logits`` [n, vocab]: return (confidence [n], token [n]).

    Logits are divided by ``temperature`` (> 0), cut to the nucleus ``top_p`` and the ``top_k`` best;
    the token is drawn from the softmax (its argmax at temperature 0) and its probability is the
    confidence, or with ``margin`` top-1 minus top-2 probability, or with ``neg_entropy`` the
    negative entropy sum p log(p + 1e-10).
    """
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = nucleus_filter(logits, top_p)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    probs = logits.softmax(-1)
    if temperature > 0 and len(probs):
        tokens = torch.multinomial(probs, 1, generator=generator)[:, 0]
        confidence = probs.gather(-1, tokens[:, None])[:, 0]
    else:
        confidence, tokens = probs.max(-1)
    if margin:
        top2 = probs.topk(2, dim=-1).values
        confidence = top2[:, 0] - top2[:, 1]
    if neg_entropy:
        confidence = (probs * torch.log(probs + ENTROPY_EPS)).sum(-1)
    return confidence, tokens


def nucleus_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Return ``logits`` with every token outside the nucleus set to the dtype's minimum: tokens are
    kept in order of probability until their cumulative probability exceeds ``top_p`` (that token kept)."""
    ordered, order = logits.sort(-1, descending=True)
    cumulative = ordered.softmax(-1).cumsum(-1)
    drop_sorted = torch.zeros_like(cumulative, dtype=torch.bool)
    drop_sorted[..., 1:] = cumulative[..., :-1] > top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, torch.finfo(logits.dtype).min)


def top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Return ``logits`` with every token below the ``top_k``-th largest set to the dtype's minimum."""
    kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


def read_positions(candidates: torch.Tensor, prediction_offset: int, keep: torch.Tensor | None) -> torch.Tensor | None:
    """Return the logit indices [batch, k] a step reads: those predicting the ``candidates`` (bool [batch,
    pos]; clamped to the sequence, as ``logits_where`` reads them) and ``keep`` [batch, j]; None (every
    position) when ``keep`` is None."""
    if keep is None:
        return None
    rows, cols = candidates.nonzero(as_tuple=True)
    needed = torch.zeros_like(candidates, dtype=torch.bool)
    needed[rows, (cols + prediction_offset).clamp(0, candidates.shape[1] - 1)] = True
    return kept_positions(needed.scatter(1, keep.to(needed.device), True))


def guided(logits, cfg_scale: float):
    """Return classifier-free guidance's mixture of ``logits``' halves (conditional rows first, then
    unconditional), unconditional + (cfg_scale + 1) * (conditional - unconditional), in kind (a tensor or
    ``PartialLogits``)."""
    partial = isinstance(logits, PartialLogits)
    conditional, unconditional = (logits.values if partial else logits).chunk(2)
    mixed = unconditional + (cfg_scale + 1) * (conditional - unconditional)
    return PartialLogits(mixed, logits.positions.chunk(2)[0], logits.width) if partial else mixed


def _forward(module, model_input: torch.Tensor, attention_mask, forward_kwargs, read: torch.Tensor | None = None):
    extra = forward_kwargs(model_input) if forward_kwargs is not None else {}
    request = {} if read is None else logit_request(module, read)
    return received(module(model_input, attention_mask=attention_mask, **extra, **request), request,
                    model_input.shape[1])
