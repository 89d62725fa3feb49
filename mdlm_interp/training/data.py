"""Training batches of freshly sampled task-suite sequences, deterministic for (seed, stage, step).

Every batch draws one number of examples (so its sequences have nearly the same length) and, per
sequence, a task, how many of the examples are relevant, a placement (random mix, relevant block at
a random slot, or, for diffusion models, the query at a random slot) and whether a BOS token leads. Prompt seeds are drawn at or above
``TRAIN_SEED_BASE``; evaluation seeds stay below it.
"""

import hashlib
import math
import random
from dataclasses import dataclass

import torch

from mdlm_interp.batching import pad_sequences, position_sets
from mdlm_interp.models.families import FamilySpec

TRAIN_SEED_BASE = 10**9
EXAMPLE_TOKENS = 12  # "Input: a, b, c\nOutput: d\n" with the organism tokenizer
QUERY_TOKENS = 10


@dataclass(frozen=True)
class DataConfig:
    """What a stage trains on.

    ``objective`` "pretrain": the whole sequence (answer filled in) is trained; "sft": only the
    response, i.e. the query's answer (for diffusion models followed by 0..``max_extra`` further EOS
    tokens, as LLaDA pads responses) and with ``example_answers`` every example's answer too; the
    prompt never. Over the first ``curriculum`` fraction of the stage, the largest number of examples
    grows linearly from ``min_examples`` to ``max_examples`` and that of EOS tokens from 0 to
    ``max_extra``. ``answer_always_masked`` (diffusion SFT): the query's answer is always masked with
    weight 1 instead of masked with ratio t and weight 1/t; the expected loss of that token is the
    same (E[1{masked}/t] = 1 given the rest), without the variance of the 1/t weight.
    ``log_uniform_examples``: a batch's number of examples n is drawn log-uniformly (n + 1 uniform on
    a log scale) between the bounds instead of uniformly, so most batches hold many short prompts
    (many answers per step) and a few hold long ones.
    """

    objective: str
    batch_tokens: int = 4096
    min_examples: int = 2
    max_examples: int = 56
    curriculum: float = 0.5
    max_relevant: int = 12
    max_extra: int = 7
    bos_fraction: float = 0.5
    example_answers: bool = True
    answer_always_masked: bool = False
    query_at_fraction: float = 0.25
    relevant_at_fraction: float = 0.35
    log_uniform_examples: bool = False


@dataclass
class Batch:
    """A padded batch: ``ids`` [B, T] clean tokens, ``valid`` [B, T] 1 for real tokens, ``trained``
    [B, T] bool for the tokens the objective noises/scores (never padding, never position 0),
    ``answer`` [B, T] bool for the query's answer slot (SFT; all False in pretraining)."""

    ids: torch.Tensor
    valid: torch.Tensor
    trained: torch.Tensor
    answer: torch.Tensor


def step_rng(seed: int, stage: str, step: int) -> tuple[random.Random, torch.Generator]:
    """Return the Python and torch generators of one training step (independent of any other step)."""
    digest = hashlib.sha256(f"{seed}/{stage}/{step}".encode()).digest()
    return random.Random(digest), torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def curriculum_caps(config: DataConfig, progress: float) -> tuple[int, int]:
    """Return the largest number of examples and of EOS tokens after the answer that a batch may have
    at ``progress`` (0..1) of the stage: both grow linearly over the first ``curriculum`` fraction."""
    ramp = 1.0 if config.curriculum <= 0 else min(1.0, progress / config.curriculum)
    return round(config.min_examples + (config.max_examples - config.min_examples) * ramp), round(config.max_extra * ramp)


def draw_log_uniform(rng: random.Random, low: int, high: int) -> int:
    """Return an integer n in [low, high] with log(n + 1) uniform (rounded down)."""
    value = math.exp(rng.uniform(math.log(low + 1), math.log(high + 2))) - 1
    return min(high, int(value))


def sample_sequence(rng: random.Random, config: DataConfig, spec: FamilySpec, tokenizer, n_examples: int,
                    extra: int) -> tuple[list[int], list[int], int | None]:
    """Return (clean ids, trained positions, the query's answer position in SFT else None) of one
    fresh sequence.

    Pretraining trains every token after an optional BOS (Dream and causal models never position 0).
    SFT trains the query's answer, for diffusion models followed by ``extra`` EOS tokens that pad it,
    and with ``example_answers`` also the answer of every in-context example (the prompt read as a
    multi-turn conversation whose responses are the answers).
    """
    from mdlm_interp.tasks import TASK_NAMES, PromptConfig, sample_prompt, tokenize_prompt

    n_relevant = rng.randint(min(1, n_examples), min(config.max_relevant, n_examples))
    n_distractor = n_examples - n_relevant
    roll = rng.random()
    if roll < config.relevant_at_fraction:
        placement = f"relevant-at:{rng.randint(0, n_distractor)}"
    elif roll < config.relevant_at_fraction + config.query_at_fraction and not spec.causal:
        placement = f"query-at:{rng.randint(0, n_examples)}"
    else:
        placement = "random"
    prompt = sample_prompt(PromptConfig(rng.choice(TASK_NAMES), n_relevant, n_distractor, placement),
                           rng.randrange(TRAIN_SEED_BASE, 2 * TRAIN_SEED_BASE))
    with_bos = rng.random() < config.bos_fraction  # drawn for every family, so that each keeps its random stream
    bos = tokenizer.convert_tokens_to_ids(spec.special_tokens["bos"]) if with_bos and "bos" in spec.special_tokens else None
    eos = tokenizer.convert_tokens_to_ids(spec.special_tokens["eos"])
    if spec.causal:
        tp = tokenize_prompt(prompt, tokenizer, causal=True, bos_token_id=bos)
        ids = tp.input_ids + [tp.answer_id]
    else:
        tp = tokenize_prompt(prompt, tokenizer, mask_token_id=tokenizer.mask_token_id, masks=1 + extra,
                             bos_token_id=bos)
        ids = list(tp.input_ids)
        ids[tp.answer_position] = tp.answer_id
        ids[tp.answer_position + 1:tp.answer_position + 1 + extra] = [eos] * extra
    if config.objective == "sft":
        answers = [end - 2 for _, end in tp.example_spans] if config.example_answers else []
        if any(ids[position] != tokenizer.convert_tokens_to_ids(example.output)
               for position, example in zip(answers, tp.prompt.examples)):
            raise RuntimeError("the prompt format changed: an example does not end with ' <answer>\\n'")
        response = range(tp.answer_position, tp.answer_position + 1 + (0 if spec.causal else extra))
        return ids, sorted(answers + list(response)), tp.answer_position
    first = 1 if bos is not None or spec.prediction_offset < 0 else 0
    return ids + [eos], list(range(first, len(ids) + 1)), None


def sample_batch(config: DataConfig, spec: FamilySpec, tokenizer, seed: int, stage: str, step: int,
                 progress: float) -> tuple[Batch, torch.Generator]:
    """Return the batch of ``step`` and the torch generator left for the step's noise.

    The batch holds about ``config.batch_tokens`` tokens; ``progress`` (0..1) drives the curriculum.
    """
    rng, generator = step_rng(seed, stage, step)
    examples_cap, extra_cap = curriculum_caps(config, progress)
    n_examples = (draw_log_uniform(rng, config.min_examples, examples_cap) if config.log_uniform_examples
                  else rng.randint(config.min_examples, examples_cap))
    extra_max = extra_cap if config.objective == "sft" and not spec.causal else 0
    length = EXAMPLE_TOKENS * n_examples + QUERY_TOKENS + 2 + extra_max
    rows = [sample_sequence(rng, config, spec, tokenizer, n_examples, rng.randint(0, extra_max))
            for _ in range(max(1, config.batch_tokens // length))]
    pad = tokenizer.convert_tokens_to_ids(spec.special_tokens["eos"])
    ids, valid, starts = pad_sequences([tokens for tokens, _, _ in rows], pad)
    trained = position_sets([[(p, p + 1) for p in positions] for _, positions, _ in rows], ids.shape[1], starts)
    answer = position_sets([[] if a is None else [(a, a + 1)] for _, _, a in rows], ids.shape[1], starts)
    return Batch(ids, valid.long(), trained, answer), generator
