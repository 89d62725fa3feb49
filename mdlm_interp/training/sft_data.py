"""Fine-tuning pairs from JSONL, checked line by line, and the MA loss's batches of input pairs.

A line is a JSON object with ``prompt`` and ``response``, or OpenOrca's ``system_prompt`` (may be
empty), ``question`` and ``response``. The prompt (the system prompt, a blank line, the question) is
wrapped in the family's chat template when asked; the response is followed by the family's
end-of-text token, as LLaDA's SFT ends responses. Every line is read, checked and tokenized before
any training: bad JSON, a missing or non-string field, an empty response and a pair that does not fit
the model's context (with the most terminal masks training adds) are each a one-line ``UsageError``
naming the file and line.

A batch (``ma_batch``) is deterministic for (seed, index): its pairs come from per-epoch shuffles of
the data; each pair draws a masking ratio p, masks its response tokens with probability p (the
prompt never), and gets two numbers l1 != l2 of terminal masks after the noised response.
"""

import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from mdlm_interp.batching import pad_sequences, position_sets
from mdlm_interp.errors import UsageError
from mdlm_interp.training.data import step_rng
from mdlm_interp.training.objectives import apply_masks, mask_ratios

PLAIN_FIELDS = ("prompt", "response")
OPENORCA_FIELDS = ("system_prompt", "question", "response")


@dataclass(frozen=True)
class Pair:
    """One fine-tuning pair: prompt and response token ids and the line of the file it came from."""

    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    line: int


def pair_text(record, where: str) -> tuple[str, str]:
    """Return (prompt text, response text) of one parsed JSONL line; ``UsageError`` naming ``where``."""
    if not isinstance(record, dict):
        raise UsageError(f"{where}: expected a JSON object, got {type(record).__name__}")
    fields = PLAIN_FIELDS if "prompt" in record else OPENORCA_FIELDS
    for name in fields:
        if name not in record:
            raise UsageError(f"{where}: missing field '{name}' (a line needs {' and '.join(PLAIN_FIELDS)}, or "
                             f"{', '.join(OPENORCA_FIELDS)})")
        if not isinstance(record[name], str):
            raise UsageError(f"{where}: field '{name}' must be a string, got {type(record[name]).__name__}")
    if not record["response"].strip():
        raise UsageError(f"{where}: empty response")
    if "prompt" in record:
        prompt = record["prompt"]
    else:
        system = record["system_prompt"].strip()
        prompt = f"{system}\n\n{record['question']}" if system else record["question"]
    if not prompt.strip():
        raise UsageError(f"{where}: empty prompt")
    return prompt, record["response"]


def read_pairs(path, tokenizer, eos_id: int, chat_template: str | None, max_length: int,
               max_extra_masks: int) -> list[Pair]:
    """Return every pair of the JSONL file ``path``, tokenized (blank lines are skipped).

    ``chat_template`` (with "{content}") wraps the prompt, or None for the prompt as it is;
    ``eos_id`` ends each response; a pair must leave room for ``max_extra_masks`` terminal masks
    within ``max_length`` tokens. Raises ``UsageError`` naming the first bad line, or an empty file.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}") from None
    pairs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UsageError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
        prompt, response = pair_text(record, where)
        if chat_template is not None:
            prompt = chat_template.replace("{content}", prompt)
        prompt_ids = tuple(tokenizer.encode(prompt, add_special_tokens=False))
        response_ids = tuple(tokenizer.encode(response, add_special_tokens=False)) + (eos_id,)
        length = len(prompt_ids) + len(response_ids) + max_extra_masks
        if length > max_length:
            raise UsageError(f"{where}: prompt and response are {len(prompt_ids) + len(response_ids)} tokens, with "
                             f"up to {max_extra_masks} terminal masks {length}: longer than the model's context "
                             f"of {max_length}")
        pairs.append(Pair(prompt_ids, response_ids, number))
    if not pairs:
        raise UsageError(f"{path}: no fine-tuning pairs (the file is empty)")
    return pairs


@dataclass
class PairBatch:
    """The MA loss's inputs for B pairs.

    ``inputs`` = (x1, x2) and ``valid`` = (valid1, valid2): [B, T_i] ids and bool attention masks of
    the two inputs (prompt, noised response, l_i terminal masks; right-padded). ``targets`` [B, T]
    the clean prompt + response ids; ``masked`` [B, T] bool the masked response positions (the same
    in both inputs); ``p`` [B] the masking ratios; ``extra`` [B, 2] the terminal mask counts l1, l2.
    """

    inputs: tuple[torch.Tensor, torch.Tensor]
    valid: tuple[torch.Tensor, torch.Tensor]
    targets: torch.Tensor
    masked: torch.Tensor
    p: torch.Tensor
    extra: torch.Tensor


@lru_cache(maxsize=2)
def epoch_order(n_pairs: int, seed: int, epoch: int) -> tuple[int, ...]:
    """Return the order in which epoch ``epoch`` visits the ``n_pairs`` pairs (a shuffle by seed and epoch)."""
    order = list(range(n_pairs))
    random.Random(f"{seed}/epoch/{epoch}").shuffle(order)
    return tuple(order)


def batch_indices(n_pairs: int, seed: int, first: int, count: int) -> list[int]:
    """Return pairs ``first`` .. ``first + count - 1`` of the endless stream that visits the data in a
    fresh shuffle each epoch."""
    return [epoch_order(n_pairs, seed, position // n_pairs)[position % n_pairs] for position in range(first, first + count)]


def ma_batch(pairs: list[Pair], index: int, batch_size: int, seed: int, mask_token_id: int, pad_id: int,
             mask_ratio: tuple[float, float], extra_masks: tuple[int, int]) -> PairBatch:
    """Return micro-batch ``index`` (0, 1, ...) of a run: ``batch_size`` pairs, noised as described in
    the module docstring; deterministic for (pairs, index, batch_size, seed, ranges).

    ``mask_ratio`` (low, high): p is stratified over [low, high]; ``extra_masks`` (low, high): l1 and
    l2 are distinct integers drawn uniformly from [low, high].
    """
    rng, generator = step_rng(seed, "ma", index)
    chosen = [pairs[i] for i in batch_indices(len(pairs), seed, index * batch_size, batch_size)]
    clean = [pair.prompt_ids + pair.response_ids for pair in chosen]
    ids, _, starts = pad_sequences(clean, pad_id)
    response = position_sets([[(len(pair.prompt_ids), len(seq))] for pair, seq in zip(chosen, clean)],
                             ids.shape[1], starts)
    p = mask_ratios(len(chosen), generator, eps=mask_ratio[0], high=mask_ratio[1])
    noisy, masked = apply_masks(ids, response, p, mask_token_id, generator)
    low, high = extra_masks
    extra = []
    for _ in chosen:
        first = rng.randint(low, high)
        second = rng.randint(low, high - 1)
        extra.append((first, second + (second >= first)))
    inputs, valid = [], []
    for copy in range(2):
        rows = [noisy[row, :len(seq)].tolist() + [mask_token_id] * extra[row][copy] for row, seq in enumerate(clean)]
        padded, padded_valid, _ = pad_sequences(rows, pad_id)
        inputs.append(padded)
        valid.append(padded_valid)
    return PairBatch(tuple(inputs), tuple(valid), ids, masked, p, torch.tensor(extra))
