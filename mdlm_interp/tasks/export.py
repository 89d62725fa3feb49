"""Prompts as JSON records (``mdlm-interp tasks export``), one per line of a JSONL file."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from typing import TextIO

from mdlm_interp.errors import UsageError
from mdlm_interp.tasks.prompt import Prompt, PromptConfig, sample_prompt
from mdlm_interp.tasks.words import WordLists


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
