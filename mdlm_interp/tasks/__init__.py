"""The few-shot rule-induction task suite (docs/tasks.md).

    from mdlm_interp.tasks import TASK_NAMES, PromptConfig, sample_prompt, tokenize_prompt
    words = single_token_words(tokenizer)                      # words that are one token
    prompt = sample_prompt(PromptConfig("adjective+largest"), seed=0, words=words)
    tp = tokenize_prompt(prompt, tokenizer, mask_token_id=mask_id, masks=20, filler=" .")
"""

from mdlm_interp.tasks.export import (
    SFT_CATEGORIES,
    export_records,
    held_out_categories,
    prompt_record,
    record_seed,
    sft_record,
    sft_records,
    sft_seed,
    sft_tasks,
    write_jsonl,
)
from mdlm_interp.tasks.format import DEFAULT_FILLER, AnswerSlot, tokenizer_corpus
from mdlm_interp.tasks.prompt import Placement, Prompt, PromptConfig, parse_placement, sample_prompt
from mdlm_interp.tasks.render import render_prompt
from mdlm_interp.tasks.suite import CATEGORIES, DISTRACTOR_RULES, TASK_NAMES, Example, Task, get_task, word_lists
from mdlm_interp.tasks.tokenize import TokenizedPrompt, single_token_words, tokenize_prompt
from mdlm_interp.tasks.words import WordLists, all_words, load_word_lists

__all__ = [
    "CATEGORIES",
    "DEFAULT_FILLER",
    "DISTRACTOR_RULES",
    "SFT_CATEGORIES",
    "TASK_NAMES",
    "AnswerSlot",
    "Example",
    "Placement",
    "Prompt",
    "PromptConfig",
    "Task",
    "TokenizedPrompt",
    "WordLists",
    "all_words",
    "export_records",
    "get_task",
    "held_out_categories",
    "load_word_lists",
    "parse_placement",
    "prompt_record",
    "record_seed",
    "render_prompt",
    "sample_prompt",
    "sft_record",
    "sft_records",
    "sft_seed",
    "sft_tasks",
    "single_token_words",
    "tokenize_prompt",
    "tokenizer_corpus",
    "word_lists",
    "write_jsonl",
]
