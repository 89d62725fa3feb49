"""Iterative unmasking: LLaDA's and Dream's samplers, one forward pass per step, with a per-step callback.

Both samplers are rebuilt from the facts of the official code (LLaDA's ``generate.py`` in ML-GSAI/LLaDA,
Dream's ``generation_utils.py``), for any diffusion model of the toolkit:

- ``llada_generate``: the canvas is the prompt followed by ``gen_length`` masks, cut into blocks of
  ``block_length`` decoded left to right (semi-autoregressive); each block gets ``steps / blocks``
  steps, and each step reveals the same share of the block's masks (the remainder goes to the first
  steps), choosing the most confident masked positions up to the end of the current block
  ("low_confidence": the probability of the proposed token) or random ones ("random"). Proposals are
  the argmax, or at temperature > 0 a Gumbel-max draw in float64; ``cfg_scale`` > 0 adds unsupervised
  classifier-free guidance (the same canvas with the prompt masked out).
- ``dream_generate``: the canvas is the prompt followed by ``max_new_tokens`` masks, denoised as a
  whole over timesteps ``linspace(1, eps, steps + 1)``; from t to s, "origin" reveals each mask with
  probability 1 - s/t, the confidence algorithms ("maskgit_plus": top-1 probability, "topk_margin":
  top-1 minus top-2, "entropy": negative entropy) reveal the ``int(masks * (1 - s/t))`` best positions
  (all the rest at the last step). Proposals come from temperature, top-p and top-k sampling (the
  argmax at temperature 0).

Predictions are read through the family's prediction offset (``logits[:, i + offset]`` predicts token
i), which is Dream's shifted logits. Every random choice draws from ``generator``. ``on_step(step,
state)`` sees each step's ``DecodeStep``; hooks attached with ``model.hooks(...)`` fire once per step
(one forward pass per step; with classifier-free guidance that pass holds 2 x batch rows).
``forward_kwargs(model_input)`` adds keyword arguments to each step's forward pass (e.g. attention
probes on the masks that are left).

The lower-level ``llada_unmask`` and ``dream_unmask`` decode a given canvas (any tokens, masks
anywhere), which is what ``record --decode`` uses; ``DecodeConfig`` is its ``--decode`` setting.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mdlm_interp.errors import UsageError

LLADA_REMASKING = ("low_confidence", "random")
DREAM_ALGORITHMS = ("origin", "maskgit_plus", "topk_margin", "entropy")
ENTROPY_EPS = 1e-10  # Dream's entropy confidence: sum p * log(p + 1e-10)


@dataclass
class DecodeStep:
    """What one denoising step saw and did; tensors have the batch first.

    step: the step's index over the whole decode (0 .. steps - 1); block: LLaDA's block (0 for Dream).
    input_ids [batch, pos]: the canvas the forward pass read; ids [batch, pos]: the canvas after the step.
    logits [batch, pos, vocab]: the step's raw logits, not shifted (under classifier-free guidance the
    guided mixture); ``logits[:, i + prediction_offset]`` predicts the token at i.
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


def llada_generate(lm, prompt_ids: torch.Tensor, *, steps: int, gen_length: int, block_length: int,
                   temperature: float = 0.0, cfg_scale: float = 0.0, remasking: str = "low_confidence",
                   attention_mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
                   on_step: OnStep | None = None, forward_kwargs: ForwardKwargs | None = None) -> torch.Tensor:
    """Decode ``gen_length`` tokens after ``prompt_ids`` [batch, prompt] with LLaDA's sampler.

    ``lm``: a loaded diffusion model (``load_model``). ``attention_mask`` [batch, prompt] (1 valid, 0
    padding, either side) marks padded prompts; the masks are appended after the prompt's last column.
    Returns the ids [batch, prompt + gen_length].
    """
    canvas, mask = _append_masks(lm, prompt_ids, gen_length, attention_mask)
    return llada_unmask(lm.model, canvas, mask_token_id=lm.mask_token_id, gen_start=prompt_ids.shape[1],
                        gen_length=gen_length, steps=steps, block_length=block_length, temperature=temperature,
                        cfg_scale=cfg_scale, remasking=remasking, attention_mask=mask, generator=generator,
                        prediction_offset=lm.spec.prediction_offset, on_step=on_step, forward_kwargs=forward_kwargs)


def dream_generate(lm, prompt_ids: torch.Tensor, *, steps: int, max_new_tokens: int, alg: str = "origin",
                   temperature: float = 0.0, top_p: float | None = None, top_k: int | None = None,
                   alg_temp: float | None = None, eps: float = 1e-3, attention_mask: torch.Tensor | None = None,
                   generator: torch.Generator | None = None, on_step: OnStep | None = None,
                   forward_kwargs: ForwardKwargs | None = None) -> torch.Tensor:
    """Decode ``max_new_tokens`` tokens after ``prompt_ids`` [batch, prompt] with Dream's sampler.

    ``lm``: a loaded diffusion model (``load_model``); ``attention_mask`` as in ``llada_generate``.
    Returns the ids [batch, prompt + max_new_tokens].
    """
    canvas, mask = _append_masks(lm, prompt_ids, max_new_tokens, attention_mask)
    return dream_unmask(lm.model, canvas, mask_token_id=lm.mask_token_id, steps=steps, alg=alg,
                        temperature=temperature, top_p=top_p, top_k=top_k, alg_temp=alg_temp, eps=eps,
                        attention_mask=mask, generator=generator, prediction_offset=lm.spec.prediction_offset,
                        on_step=on_step, forward_kwargs=forward_kwargs)


def _append_masks(lm, prompt_ids, n: int, attention_mask) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return (prompt followed by n masks, its attention mask or None when nothing is padded)."""
    if lm.mask_token_id is None:
        raise UsageError(f"a {lm.spec.family} model has no mask token: only diffusion models decode by unmasking")
    if n < 1:
        raise UsageError(f"the number of tokens to generate must be at least 1, got {n}")
    canvas = F.pad(prompt_ids, (0, n), value=lm.mask_token_id)
    if attention_mask is None or bool(attention_mask.all()):
        return canvas, None
    return canvas, F.pad(attention_mask, (0, n), value=1)


@torch.no_grad()
def llada_unmask(module, canvas: torch.Tensor, *, mask_token_id: int, gen_start, gen_length: int, steps: int,
                 block_length: int, temperature: float = 0.0, cfg_scale: float = 0.0,
                 remasking: str = "low_confidence", attention_mask: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, prediction_offset: int = 0,
                 on_step: OnStep | None = None, forward_kwargs: ForwardKwargs | None = None) -> torch.Tensor:
    """Run LLaDA's sampler on ``canvas`` [batch, pos]; return the decoded ids [batch, pos].

    The generated region of row b is [gen_start[b], gen_start[b] + gen_length) (``gen_start`` an int
    or a [batch] tensor), cut into blocks of ``block_length``; only its masks are counted by the
    schedule. As in the official code, masked positions anywhere before the end of the current block
    are candidates, and tokens that are not masks are never changed.
    """
    if remasking not in LLADA_REMASKING:
        raise UsageError(f"unknown remasking '{remasking}' (choose from {', '.join(LLADA_REMASKING)})")
    if block_length < 1 or gen_length % block_length:
        raise UsageError(f"block length {block_length} must divide the generation length {gen_length}")
    num_blocks = gen_length // block_length
    if steps < 1 or steps % num_blocks:
        raise UsageError(f"steps ({steps}) must be a positive multiple of the number of blocks ({num_blocks})")
    steps_per_block = steps // num_blocks
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
            if cfg_scale > 0:
                unconditional = x.masked_fill(prompt, mask_token_id)
                both = torch.cat([x, unconditional])
                both_mask = None if attention_mask is None else torch.cat([attention_mask, attention_mask])
                conditional, unconditional = _forward(module, both, both_mask, forward_kwargs).chunk(2)
                logits = unconditional + (cfg_scale + 1) * (conditional - unconditional)
            else:
                logits = _forward(module, x, attention_mask, forward_kwargs)
            candidates = masked & (columns < block_end)
            rows, cols = candidates.nonzero(as_tuple=True)
            scores = _aligned(logits, rows, cols, prediction_offset)  # [candidates, vocab]
            if temperature > 0:  # Gumbel-max in float64: argmax of exp(logits) / (-log u) ** temperature
                noise = -torch.log(torch.rand(scores.shape, generator=generator, dtype=torch.float64,
                                              device=scores.device))
                chosen = (scores.double().exp() / noise**temperature).argmax(-1)
            else:
                chosen = scores.argmax(-1)
            # low_confidence: the unperturbed probability of the proposal, in float64 as LLaDA's generate.py
            # computed it (later copies use the logits' dtype, which can only reorder near ties)
            if remasking == "low_confidence":
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
def dream_unmask(module, canvas: torch.Tensor, *, mask_token_id: int, steps: int, alg: str = "origin",
                 temperature: float = 0.0, top_p: float | None = None, top_k: int | None = None,
                 alg_temp: float | None = None, eps: float = 1e-3, attention_mask: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, prediction_offset: int = -1,
                 on_step: OnStep | None = None, forward_kwargs: ForwardKwargs | None = None) -> torch.Tensor:
    """Run Dream's sampler on ``canvas`` [batch, pos] (every mask in it is decoded); return the ids [batch, pos].

    As in the official code, the number of positions revealed per step comes from the batch's mean
    number of masks (rows with equal mask counts, as in generation, each reveal that many) and the
    schedule runs in float32; proposals for revealed positions never overwrite a token that is not a
    mask (the official code would write masks there when a row has fewer masks than the mean).
    """
    if alg not in DREAM_ALGORITHMS:
        raise UsageError(f"unknown alg '{alg}' (choose from {', '.join(DREAM_ALGORITHMS)})")
    if steps < 1:
        raise UsageError(f"steps must be at least 1, got {steps}")
    x = canvas
    batch, width = x.shape
    timesteps = torch.linspace(1, eps, steps + 1, device=x.device)
    for i in range(steps):
        masked = x == mask_token_id
        logits = _forward(module, x, attention_mask, forward_kwargs)
        rows, cols = masked.nonzero(as_tuple=True)  # row-major: the order of logits[mask_index]
        scores = _aligned(logits, rows, cols, prediction_offset)
        t, s = timesteps[i], timesteps[i + 1]
        confidence = torch.full((batch, width), float("-inf"), dtype=logits.dtype, device=x.device)
        proposed = x.clone()
        transfer = torch.zeros_like(masked)
        if alg == "origin":
            share = 1 - s / t if i < steps - 1 else 1
            revealed = torch.rand(len(rows), generator=generator, device=x.device) < share
            score, chosen = sample_tokens(scores[revealed], temperature, top_p, top_k, generator=generator)
            rows, cols = rows[revealed], cols[revealed]
            confidence[rows, cols] = score
            proposed[rows, cols] = chosen
            transfer[rows, cols] = True
        else:
            score, chosen = sample_tokens(scores, temperature, top_p, top_k, margin=alg == "topk_margin",
                                          neg_entropy=alg == "entropy", generator=generator)
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


def _forward(module, model_input: torch.Tensor, attention_mask, forward_kwargs) -> torch.Tensor:
    extra = forward_kwargs(model_input) if forward_kwargs is not None else {}
    return module(model_input, attention_mask=attention_mask, **extra)


def _aligned(logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, prediction_offset: int) -> torch.Tensor:
    """Return the logits predicting the tokens at (rows, cols): ``logits[rows, cols + offset]``, [n, vocab].

    Position 0 with offset -1 reads logits[:, 0], as Dream's shift ``cat([logits[:, :1], logits[:, :-1]])``.
    """
    return logits[rows, (cols + prediction_offset).clamp(0, logits.shape[1] - 1)]


# ---------------------------------------------------------------------------------------------------------------
# record --decode: which sampler decodes the answer slot and the masks after it


SAMPLER_KEYS = {"llada": ("steps", "block", "cfg"), "dream": ("steps", "alg", "eps")}
GREEDY_ALGORITHMS = ("maskgit_plus", "topk_margin", "entropy")


@dataclass(frozen=True)
class DecodeConfig:
    """How ``record --decode`` unmasks the answer slot and the masks after it (greedy, temperature 0).

    ``sampler``: "llada" or "dream". ``steps``: denoising steps, or None for one step per mask (n steps
    for n masks). ``block``: LLaDA's block length, or None for one block over all n masks.
    ``cfg_scale``: LLaDA's classifier-free guidance. ``alg``: Dream's confidence ("maskgit_plus",
    "topk_margin" or "entropy"; "origin" reveals random positions and is left to ``dream_generate``).
    ``eps``: Dream's last timestep. Parse the command line's ``SAMPLER:key=value,...`` with ``parse``.
    """

    sampler: str
    steps: int | None = None
    block: int | None = None
    cfg_scale: float = 0.0
    alg: str = "maskgit_plus"
    eps: float = 1e-3

    def __post_init__(self):
        if self.sampler not in SAMPLER_KEYS:
            raise UsageError(f"unknown sampler '{self.sampler}' in --decode (choose from {', '.join(SAMPLER_KEYS)})")
        if self.steps is not None and self.steps < 1:
            raise UsageError(f"--decode steps must be at least 1, got {self.steps}")
        if self.block is not None and self.block < 1:
            raise UsageError(f"--decode block must be at least 1, got {self.block}")
        if self.alg not in GREEDY_ALGORITHMS:
            raise UsageError(f"--decode alg must be one of {', '.join(GREEDY_ALGORITHMS)} (record decodes greedily), "
                             f"got '{self.alg}'")
        if self.cfg_scale < 0 or not 0 < self.eps < 1:
            raise UsageError("--decode needs cfg >= 0 and 0 < eps < 1")

    @classmethod
    def parse(cls, text: str) -> "DecodeConfig":
        """Return the config of "llada", "llada:steps=K,block=B,cfg=C" or "dream:steps=K,alg=A,eps=E"
        (steps=masks: one step per mask, the default; block=masks: one block, the default)."""
        sampler, _, options = text.partition(":")
        if sampler not in SAMPLER_KEYS:
            raise UsageError(f"--decode must start with a sampler, {' or '.join(SAMPLER_KEYS)}, got {text!r}")
        fields = {}
        names = {"steps": "steps", "block": "block", "cfg": "cfg_scale", "alg": "alg", "eps": "eps"}
        for item in filter(None, options.split(",")):
            key, equals, value = item.partition("=")
            if not equals or key not in SAMPLER_KEYS[sampler]:
                raise UsageError(f"--decode {sampler} takes {', '.join(k + '=...' for k in SAMPLER_KEYS[sampler])}; "
                                 f"got {item!r}")
            try:
                if key in ("steps", "block"):
                    fields[names[key]] = None if value == "masks" else int(value)
                elif key in ("cfg", "eps"):
                    fields[names[key]] = float(value)
                else:
                    fields[names[key]] = value
            except ValueError:
                raise UsageError(f"--decode {key} must be a number, got {value!r}") from None
        return cls(sampler, **fields)

    def settings(self) -> dict:
        """Return the settings that matter for this sampler (a store's ``settings["decode"]``)."""
        if self.sampler == "llada":
            return {"sampler": "llada", "steps": self.steps, "block": self.block, "cfg_scale": self.cfg_scale}
        return {"sampler": "dream", "steps": self.steps, "alg": self.alg, "eps": self.eps}

    def steps_for(self, masks: int) -> int:
        """Return the number of steps that decode ``masks`` masks."""
        return masks if self.steps is None else self.steps

    def check(self, mask_counts) -> None:
        """Raise ``UsageError`` unless every mask count can be decoded (LLaDA: the block divides it and
        the steps are a multiple of its number of blocks)."""
        if self.sampler != "llada":
            return
        for masks in mask_counts:
            block = self.block or masks
            if masks % block:
                raise UsageError(f"--decode block={block} does not divide {masks} masks (LLaDA's blocks tile the masks)")
            if self.steps_for(masks) % (masks // block):
                raise UsageError(f"--decode steps={self.steps_for(masks)} is not a multiple of the {masks // block} "
                                 f"blocks of {masks} masks")

    def run(self, module, canvas: torch.Tensor, *, mask_token_id: int, prediction_offset: int, gen_start,
            gen_length: int, attention_mask=None, on_step: OnStep | None = None,
            forward_kwargs: ForwardKwargs | None = None) -> torch.Tensor:
        """Decode ``canvas`` [batch, pos] whose rows have ``gen_length`` positions (the answer slot and the
        masks after it) from ``gen_start`` (int or [batch]); return the ids [batch, pos]."""
        steps = self.steps_for(gen_length)
        common = dict(mask_token_id=mask_token_id, attention_mask=attention_mask, prediction_offset=prediction_offset,
                      on_step=on_step, forward_kwargs=forward_kwargs)
        if self.sampler == "llada":
            return llada_unmask(module, canvas, gen_start=gen_start, gen_length=gen_length, steps=steps,
                                block_length=self.block or gen_length, cfg_scale=self.cfg_scale, **common)
        return dream_unmask(module, canvas, steps=steps, alg=self.alg, eps=self.eps, **common)


# ---------------------------------------------------------------------------------------------------------------
# generation from text, and a trace of every step (``mdlm-interp generate``)

LLADA_OPTIONS = ("block_length", "temperature", "cfg_scale", "remasking")
DREAM_OPTIONS = ("alg", "temperature", "top_p", "top_k", "alg_temp", "eps")


@dataclass
class Generation:
    """The result of ``generate_text``: ids [batch, prompt + gen_length] (prompts left-padded to
    ``prompt_length`` columns), the attention mask [batch, prompt + gen_length] and the generated texts."""

    ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_length: int
    texts: list[str]


def generate_text(lm, prompts: list[str], *, sampler: str | None = None, chat: bool = False, steps: int | None = None,
                  gen_length: int = 32, generator: torch.Generator | None = None, on_step: OnStep | None = None,
                  skip_special_tokens: bool = True, **options) -> Generation:
    """Decode ``gen_length`` tokens after each text of ``prompts`` with ``sampler`` ("llada" or "dream";
    default the family's own) in ``steps`` steps (default ``gen_length``); return a ``Generation``.

    ``chat`` wraps each prompt in the family's chat template. ``options`` are the sampler's: LLaDA's
    block_length (default gen_length), temperature, cfg_scale, remasking; Dream's alg (default
    "maskgit_plus" here: greedy at temperature 0), temperature, top_p, top_k, alg_temp, eps. An option
    of the other sampler raises ``UsageError``.
    """
    sampler = sampler or lm.spec.sampler
    check_sampler_options(sampler, options)
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
    steps = gen_length if steps is None else steps
    if sampler == "llada":
        options.setdefault("block_length", gen_length)
        out = llada_generate(lm, ids, steps=steps, gen_length=gen_length, attention_mask=mask, generator=generator,
                             on_step=on_step, **options)
    else:
        options.setdefault("alg", "maskgit_plus")
        out = dream_generate(lm, ids, steps=steps, max_new_tokens=gen_length, attention_mask=mask, generator=generator,
                             on_step=on_step, **options)
    generated = [lm.tokenizer.decode(row[ids.shape[1]:].tolist(), skip_special_tokens=skip_special_tokens)
                 for row in out.cpu()]
    return Generation(out, F.pad(valid, (0, gen_length), value=1), ids.shape[1], generated)


def check_sampler_options(sampler: str | None, options) -> None:
    """Raise ``UsageError`` unless ``sampler`` is "llada" or "dream" and takes every option named in ``options``."""
    if sampler not in SAMPLER_KEYS:
        raise UsageError(f"unknown sampler {sampler!r} (choose from {', '.join(SAMPLER_KEYS)})")
    allowed = LLADA_OPTIONS if sampler == "llada" else DREAM_OPTIONS
    wrong = sorted(set(options) - set(allowed))
    if wrong:
        raise UsageError(f"{', '.join(wrong)}: not an option of the {sampler} sampler (its options: {', '.join(allowed)})")


class StepTrace:
    """An ``on_step`` callback that keeps, on the CPU, every step's canvas, proposals, confidences and
    unmasked positions (not the logits); ``arrays()`` stacks them."""

    def __init__(self):
        self.initial_ids: torch.Tensor | None = None
        self.steps: dict[str, list] = {"ids": [], "proposed": [], "confidence": [], "unmasked": [], "block": []}

    def __call__(self, step: int, state: DecodeStep) -> None:
        if self.initial_ids is None:
            self.initial_ids = state.input_ids.cpu()
        for name in ("ids", "proposed", "unmasked"):
            self.steps[name].append(getattr(state, name).cpu())
        self.steps["confidence"].append(state.confidence.float().cpu())
        self.steps["block"].append(state.block)

    def arrays(self) -> dict:
        """Return numpy arrays: ids int32 [steps + 1, batch, pos] (the canvas before the first step, then
        after each), proposed int32, confidence float32 (-inf where not scored), unmasked bool
        [steps, batch, pos], block int32 [steps]."""
        import numpy as np

        if self.initial_ids is None:
            raise ValueError("the trace saw no step")
        stacked = {name: torch.stack(values).numpy() for name, values in self.steps.items() if name != "block"}
        return {
            "ids": np.concatenate([self.initial_ids[None].numpy(), stacked["ids"]]).astype(np.int32),
            "proposed": stacked["proposed"].astype(np.int32),
            "confidence": stacked["confidence"],
            "unmasked": stacked["unmasked"],
            "block": np.array(self.steps["block"], dtype=np.int32),
        }


def write_trace(path, trace: StepTrace, generation: Generation, attrs: dict) -> None:
    """Write ``trace`` (and the generation's attention mask and texts) to the HDF5 file ``path``, with
    ``attrs`` (provenance, sampler settings; dicts and lists stored as JSON strings) as root attributes.
    The file is built next to ``path`` and replaces it only once complete."""
    import json

    import h5py
    import numpy as np

    from mdlm_interp.outputs import staged_file

    with staged_file(path, mode="w+b", encoding=None) as handle, h5py.File(handle, "w") as file:
        for name, array in trace.arrays().items():
            file.create_dataset(name, data=array, compression="gzip", compression_opts=4)
        file.create_dataset("attention_mask", data=generation.attention_mask.cpu().numpy().astype(np.int8))
        file.create_dataset("text", data=generation.texts, dtype=h5py.string_dtype("utf-8"))
        file.attrs["prompt_length"] = generation.prompt_length
        for name, value in attrs.items():
            file.attrs[name] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
