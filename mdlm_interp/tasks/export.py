"""Prompts as JSON records (``mdlm-interp tasks export``), one per line of a JSONL file.

Two formats: ``prompt_record`` describes a prompt for analysis; ``sft_record`` is a fine-tuning pair
(``prompt`` up to the answer slot, ``response`` the answer token) for ``mdlm-interp train-ma``. Pairs
are sampled with negative seeds (``sft_seed``), while every evaluation samples with seeds >= 0
(``record_seed``, the organisms' held-out evaluations), so no fine-tuning prompt is an evaluation
prompt; and by default they cover only half of the relevant categories (``SFT_CATEGORIES``), so an
evaluation can report held-in and held-out categories apart.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from typing import TextIO

from mdlm_interp.errors import UsageError
from mdlm_interp.tasks.format import word_piece
from mdlm_interp.tasks.prompt import Prompt, PromptConfig, sample_prompt
from mdlm_interp.tasks.suite import CATEGORIES
from mdlm_interp.tasks.words import WordLists

# The relevant categories fine-tuning pairs cover by default: every other one, half of the eight.
SFT_CATEGORIES = CATEGORIES[::2]


def record_seed(seed: int, index: int) -> int:
    """Return the ``sample_prompt`` seed of record ``index`` of an export made with ``seed``.

    The value is below 2**53, so that JSON readers that hold numbers as doubles read it exactly.
    """
    digest = hashlib.sha256(f"{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 11


def prompt_record(prompt: Prompt) -> dict:
    """Return a JSON-ready dict describing ``prompt``.

    Keys: task, category, distractor, seed (``sample_prompt(config, seed)`` rebuilds it), placement,
    n_relevant, n_distractor, prompt (text before the answer slot), suffix (text after it; "" unless
    the query was moved), query (its three words), answer (the word; its token has a leading space),
    relevant_slots and query_slot (example slot indices), examples (list of {input, output, relevant}).
    """
    config = prompt.config
    return {
        "task": config.task,
        "category": prompt.task.category,
        "distractor": prompt.task.distractor,
        "seed": prompt.seed,
        "placement": config.placement,
        "n_relevant": config.n_relevant,
        "n_distractor": config.n_distractor,
        "prompt": prompt.text_before,
        "suffix": prompt.text_after,
        "query": list(prompt.query.inputs),
        "answer": prompt.answer,
        "relevant_slots": prompt.relevant_slots,
        "query_slot": prompt.query_slot,
        "examples": [{"input": list(e.inputs), "output": e.output, "relevant": e.relevant} for e in prompt.examples],
    }


def export_records(tasks: Iterable[str], n: int, seed: int, n_relevant: int = 10, n_distractor: int = 40,
                   placement: str = "random", words: WordLists | None = None) -> Iterator[dict]:
    """Yield ``n`` records (``prompt_record``) per task, task by task; record i of every task is
    sampled with ``record_seed(seed, i)``. Deterministic for the same arguments."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UsageError(f"n must be a positive integer, got {n!r}")
    configs = [PromptConfig(task, n_relevant, n_distractor, placement) for task in tasks]
    for config in configs:
        for index in range(n):
            yield prompt_record(sample_prompt(config, record_seed(seed, index), words))


def write_jsonl(records: Iterable[dict], out: TextIO) -> int:
    """Write each record as one JSON line to ``out``; return the number of lines written."""
    count = 0
    for record in records:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += 1
    return count


def sft_seed(seed: int, index: int) -> int:
    """Return the ``sample_prompt`` seed of fine-tuning pair ``index`` of an export made with ``seed``:
    ``-1 - record_seed(seed, index)``, negative, so never an evaluation seed (those are >= 0)."""
    return -1 - record_seed(seed, index)


def held_out_categories(held_in) -> tuple[str, ...]:
    """Return the relevant categories not in ``held_in``, in suite order."""
    return tuple(c for c in CATEGORIES if c not in held_in)


def sft_tasks(tasks: Iterable[str], categories: Iterable[str]) -> list[str]:
    """Return the tasks of ``tasks`` whose relevant category is one of ``categories``.

    Raises ``UsageError`` for an unknown category, or when no task is left.
    """
    categories = tuple(categories)
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise UsageError(f"unknown categories {unknown}; choose from {', '.join(CATEGORIES)}")
    kept = [t for t in tasks if t.split("+")[0] in categories]
    if not kept:
        raise UsageError(f"no task of categories {', '.join(categories)} among {', '.join(tasks)}")
    return kept


def sft_record(prompt: Prompt) -> dict:
    """Return a fine-tuning pair for ``prompt``: ``prompt`` (text up to the answer slot), ``response``
    (the answer with its leading space, one token), and task, category, distractor, seed, placement,
    n_relevant, n_distractor. A prompt whose query is not last cannot be a pair (``UsageError``)."""
    if prompt.text_after:
        raise UsageError("fine-tuning pairs need the query after every example (no query-at placement)")
    config = prompt.config
    return {"prompt": prompt.text_before, "response": word_piece(prompt.answer), "task": config.task,
            "category": prompt.task.category, "distractor": prompt.task.distractor, "seed": prompt.seed,
            "placement": config.placement, "n_relevant": config.n_relevant, "n_distractor": config.n_distractor}


def sft_records(tasks: Iterable[str], n: int, seed: int, n_relevant: int = 10, n_distractor: int = 40,
                placement: str = "random", words: WordLists | None = None) -> Iterator[dict]:
    """Yield ``n`` fine-tuning pairs (``sft_record``) per task, task by task; pair i of every task is
    sampled with ``sft_seed(seed, i)``. Deterministic for the same arguments."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UsageError(f"n must be a positive integer, got {n!r}")
    configs = [PromptConfig(task, n_relevant, n_distractor, placement) for task in tasks]
    for config in configs:
        for index in range(n):
            yield sft_record(sample_prompt(config, sft_seed(seed, index), words))
