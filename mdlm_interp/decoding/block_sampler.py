"""LLaDA2's block sampler: block attention, blocks decoded left to right, a confidence threshold per step.

Rebuilt from the facts of the official code (``LLaDA2MoeModelLM.generate`` of inclusionAI's LLaDA2 and the
``LLaDA2Sampler`` of ZHZisZZ/dllm); its options are the fields of ``decoding.config.LLaDA2SamplerConfig``:

- the canvas is the prompt followed by ``gen_length`` masks, filled up with masks to the end of its last
  block; blocks are ``block_length`` positions counted from the first prompt token (position id 0), so
  the prompt's last block may already hold masks;
- every forward pass uses block attention (bidirectional inside a block, causal across blocks) and reads
  the canvas up to the end of the current block only;
- each block holding masks gets at most ``steps_per_block`` steps (fewer when its masks run out); step i
  reveals ``count_i`` masks of the block (``block_length`` spread evenly over the steps, the remainder to
  the first ones), unless at least ``count_i`` masks have a proposal more probable than ``threshold``:
  then it reveals all of those;
- proposals are the argmax of the (top-k, top-p filtered) softmax, or at temperature > 0 a draw from it
  (one draw per position of the block, row by row), and their probability is the confidence.

As in the dllm sampler, generation runs through every block (no stop at the end-of-text token) and the
result is cut to the prompt and ``gen_length`` tokens. Unlike the official code, prompts of different
lengths may share a batch (padding on either side): blocks count each row's own positions.
``on_step(step, state)`` sees each step's ``DecodeStep`` (``decoding.samplers``).
"""

import torch
import torch.nn.functional as F

from mdlm_interp.decoding.config import LLaDA2SamplerConfig
from mdlm_interp.decoding.samplers import (
    DecodeStep, ForwardKwargs, OnStep, _config, _forward, append_masks, nucleus_filter, tokens_per_step, top_k_filter,
)
from mdlm_interp.models.readout import logits_where


def llada2_generate(lm, prompt_ids: torch.Tensor, config: LLaDA2SamplerConfig | None = None, *,
                    attention_mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
                    on_step: OnStep | None = None, forward_kwargs: ForwardKwargs | None = None,
                    **options) -> torch.Tensor:
    """Decode ``config.gen_length`` tokens after ``prompt_ids`` [batch, prompt] with LLaDA2's block sampler.

    ``config``: a ``LLaDA2SamplerConfig``, or its fields as keywords (``gen_length, block_length,
    steps_per_block, temperature, top_p, top_k, threshold, minimal_topk``). ``attention_mask`` [batch,
    prompt] (1 valid, 0 padding, either side) marks padded prompts. Returns the ids [batch, prompt +
    gen_length]; ``on_step`` sees the canvas cut to those columns too (the masks that fill up the last
    block are decoded but not returned, as in the official code).
    """
    config = _config(LLaDA2SamplerConfig, config, options)
    batch, width = prompt_ids.shape
    valid = torch.ones_like(prompt_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    fill = (-(valid.sum(1) + config.gen_length)) % config.block_length  # [batch] masks up to the end of a block
    canvas, _ = append_masks(lm, prompt_ids, config.gen_length + int(fill.max()), None)
    extra = torch.arange(config.gen_length + int(fill.max()), device=prompt_ids.device)
    mask = torch.cat([valid, extra[None] < (config.gen_length + fill)[:, None]], 1)
    keep = width + config.gen_length

    def cut(step: int, state: DecodeStep) -> None:
        on_step(step, DecodeStep(step, state.block, *(t[:, :keep] for t in (state.input_ids, state.ids, state.logits,
                                 state.proposed, state.confidence, state.unmasked)), state.prediction_offset))

    out = llada2_unmask(lm.model, canvas, config, mask_token_id=lm.mask_token_id,
                        attention_mask=None if bool(mask.all()) else mask.long(), generator=generator,
                        prediction_offset=lm.spec.prediction_offset, on_step=None if on_step is None else cut,
                        forward_kwargs=forward_kwargs)
    return out[:, :keep]


@torch.no_grad()
def llada2_unmask(module, canvas: torch.Tensor, config: LLaDA2SamplerConfig | None = None, *, mask_token_id: int,
                  attention_mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
                  prediction_offset: int = 0, on_step: OnStep | None = None,
                  forward_kwargs: ForwardKwargs | None = None, **options) -> torch.Tensor:
    """Run LLaDA2's block sampler on ``canvas`` [batch, pos]; return the decoded ids [batch, pos].

    Every mask of the canvas is decoded, block by block from each row's first block holding a mask to
    its last (``config.gen_length`` is not read); a row's blocks are ``config.block_length`` of its valid
    positions (``attention_mask`` [batch, pos], 1 valid, 0 padding), counted from its first valid one.
    ``module`` must have ``block_attention`` (the toolkit's ``HookedDecoder``). Tokens that are not masks
    never change. ``DecodeStep.logits`` hold the step's logits up to the end of the current block (NaN
    after it); ``DecodeStep.block`` counts the blocks decoded so far.
    """
    config = _config(LLaDA2SamplerConfig, config, options)
    length = config.block_length
    x = canvas.clone()
    batch, width = x.shape
    valid = torch.ones_like(x, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    block_of = torch.where(valid, (valid.long().cumsum(1) - 1) // length, -1)  # [batch, pos]; -1 on padding
    masked = (x == mask_token_id) & valid
    none = torch.iinfo(torch.long).max
    first = torch.where(masked, block_of, none).min(1).values  # [batch] first block to decode
    last = torch.where(masked, block_of, -1).max(1).values
    blocks = int((last - first).clamp(min=-1).max()) + 1
    schedule = tokens_per_step(torch.tensor([length]), config.steps_per_block)[0].tolist()
    columns = torch.arange(width, device=x.device)
    step = 0
    with module.block_attention(length):
        for block in range(blocks):
            current = first + block  # [batch]; past a row's last block nothing of it is masked
            in_block = block_of == current[:, None]
            seen = valid & (block_of <= current[:, None])
            window = int(torch.where(seen, columns, -1).max()) + 1  # nothing after it is seen by the block
            for i in range(config.steps_per_block):
                active = in_block & (x == mask_token_id)
                if not active.any():
                    break
                logits = _forward(module, x[:, :window], None if attention_mask is None
                                  else attention_mask[:, :window], forward_kwargs)
                rows, cols = in_block.nonzero(as_tuple=True)  # row by row: the order of the official draws
                chosen, probability = propose(logits_where(logits, rows, cols, prediction_offset, clamp=True),
                                              config, generator)
                confidence = torch.full((batch, width), float("-inf"), dtype=probability.dtype, device=x.device)
                confidence[rows, cols] = probability
                confidence = confidence.masked_fill(~active, float("-inf"))
                proposed = x.clone()
                proposed[rows, cols] = chosen
                transfer = reveal(confidence, active, schedule[i], config.threshold)
                new_x = torch.where(transfer, proposed, x)
                if on_step is not None:
                    full = F.pad(logits, (0, 0, 0, width - window), value=float("nan"))
                    on_step(step, DecodeStep(step, block, x, new_x, full, proposed, confidence, transfer,
                                             prediction_offset))
                x = new_x
                step += 1
    return x


def propose(scores: torch.Tensor, config: LLaDA2SamplerConfig,
            generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaDA2's proposal for each row of ``scores`` [n, vocab]: return (token [n], its probability [n]).

    Logits are divided by the temperature (> 0), cut to the ``top_k`` best and then to the nucleus
    ``top_p``; the token is the argmax of the softmax at temperature 0, else drawn from it."""
    if config.temperature > 0:
        scores = scores / config.temperature
    if config.top_k is not None:
        scores = top_k_filter(scores, config.top_k)
    if config.top_p is not None and config.top_p < 1:
        scores = nucleus_filter(scores, config.top_p)
    probs = scores.softmax(-1)
    if config.temperature > 0 and len(probs):
        tokens = torch.multinomial(probs, 1, generator=generator)[:, 0]
    else:
        tokens = probs.argmax(-1)
    return tokens, probs.gather(-1, tokens[:, None])[:, 0]


def reveal(confidence: torch.Tensor, active: torch.Tensor, count: int, threshold: float) -> torch.Tensor:
    """Return the positions a step reveals, bool [batch, pos]: per row, every active position whose
    ``confidence`` [batch, pos] exceeds ``threshold`` when they are at least ``count``, else the ``count``
    most confident active positions (all of them when fewer)."""
    transfer = torch.zeros_like(active)
    for row in range(len(active)):
        sure = (confidence[row] > threshold) & active[row]
        if int(sure.sum()) >= count:
            transfer[row] = sure
        elif count > 0 and bool(active[row].any()):
            transfer[row, confidence[row].topk(min(count, int(active[row].sum()))).indices] = True
    return transfer
