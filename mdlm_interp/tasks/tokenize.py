"""Token ids and exact spans of a prompt for a given tokenizer; single-token word filtering.

The prompt is tokenized piece by piece (each fixed piece of the format and each " word" on its
own), so every span is exact by construction and a word has the same token(s) wherever it appears.
Mask and filler tokens are inserted as ids, never through text. A tokenizer is anything with
``encode(text, add_special_tokens=False)`` returning ids (a list, or an object with ``.ids`` like
a raw ``tokenizers.Tokenizer``'s encoding) and ``decode(ids)``: transformers fast tokenizers work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mdlm_interp.errors import UsageError
from mdlm_interp.tasks.format import (
    LINE_END,
    AnswerSlot,
    check_layout,
    example_pieces,
    query_pieces,
    split_chat_template,
    word_piece,
)
from mdlm_interp.tasks.prompt import Prompt
from mdlm_interp.tasks.suite import word_lists
from mdlm_interp.tasks.words import WordLists

Span = tuple[int, int]


@dataclass(frozen=True)
class TokenizedPrompt:
    """A prompt as model input. Spans are half-open token index ranges [start, end) into ``input_ids``.

    - ``answer_position``: index of the answer slot; for a causal model ``len(input_ids)``, the next token.
    - ``answer_id``: token id of the correct answer (the answer word with its leading space).
    - ``spans``: "query" (the query's text up to "Output:"), "answer" (the slot, one token),
      "masks" (the masks/fillers appended after the answer slot; empty when masks <= 1),
      "relevant" (from the first relevant example's start to the last one's end: exactly the
      relevant block under relevant-at:K; (0, 0) without relevant examples).
    - ``example_spans``: one span per in-context example, in prompt order (the query excluded).
    - ``relevant_examples``: indices into ``example_spans`` of the relevant examples.
    - ``slot``: the ``AnswerSlot`` used; ``filler_id``: the filler's token id, or None.
    """

    prompt: Prompt
    input_ids: list[int]
    answer_position: int
    answer_id: int
    spans: dict[str, Span]
    example_spans: list[Span]
    relevant_examples: list[int]
    slot: AnswerSlot
    mask_token_id: int | None
    filler_id: int | None


def tokenize_prompt(prompt: Prompt, tokenizer, mask_token_id: int | None = None, causal: bool = False,
                    masks: int = 1, filler: str | None = None, chat_template: str | None = None,
                    bos_token_id: int | None = None) -> TokenizedPrompt:
    """Return the ``TokenizedPrompt`` of ``prompt`` for ``tokenizer``.

    Diffusion models (``causal=False``) need ``mask_token_id``: ``masks`` mask ids are inserted at
    the answer slot (with ``filler`` text such as " .", all but the first become that filler's single
    token). Causal models take ``masks`` 0 or 1 and nothing is inserted. ``chat_template`` (a string
    containing "{content}") wraps the user text; the answer slot comes after the templated text.
    ``bos_token_id``, if given, is put first. Raises ``UsageError`` for a bad combination, an answer
    word that is not one token (sample with ``words=single_token_words(tokenizer)``) or a filler
    that is not one ordinary token (the mask, the unknown token or another special token).
    """
    slot = AnswerSlot(masks, causal, filler)
    query_last = prompt.query_slot == len(prompt.examples)
    check_layout(query_last, slot, chat_template)
    if not causal and mask_token_id is None:
        raise UsageError("a diffusion model needs mask_token_id (the id of its mask token)")
    encode = _encoder(tokenizer)
    answer_ids = encode(word_piece(prompt.answer))
    if len(answer_ids) != 1:
        raise UsageError(f"the answer {word_piece(prompt.answer)!r} is {len(answer_ids)} tokens for this "
                         f"tokenizer; sample prompts with words=single_token_words(tokenizer)")
    filler_id = None
    if filler is not None and not causal:
        filler_ids = encode(filler)
        if len(filler_ids) != 1:
            raise UsageError(f"the filler {filler!r} is {len(filler_ids)} tokens for this tokenizer; "
                             f"it must be exactly one")
        filler_id = filler_ids[0]
        if filler_id == mask_token_id:
            raise UsageError(f"the filler {filler!r} is the mask token; the filler control replaces masks by "
                             f"a token that is not a mask")
        unknown = _unknown_token(tokenizer)
        if unknown is not None and filler_id == unknown[1]:
            raise UsageError(f"the filler {filler!r} is not in the tokenizer's vocabulary (it becomes {unknown[0]})")
        if filler_id in set(getattr(tokenizer, "all_special_ids", ())):
            raise UsageError(f"the filler {filler!r} is a special token of the tokenizer; use ordinary text "
                             f"such as ' .'")

    ids: list[int] = [] if bos_token_id is None else [bos_token_id]
    prefix, suffix = split_chat_template(chat_template) if chat_template is not None else ("", "")

    def add(pieces: list[str]) -> Span:
        start = len(ids)
        for piece in pieces:
            ids.extend(encode(piece))
        return start, len(ids)

    add([prefix])
    example_spans = [add(example_pieces(example)) for example in prompt.examples[:prompt.query_slot]]
    query_span = add(query_pieces(prompt.query))
    add([suffix])
    answer_position = len(ids)
    fill = {"mask": mask_token_id, "filler": filler_id}
    ids.extend(fill[kind] for kind in slot.kinds)
    masks_span = (answer_position + 1, answer_position + max(len(slot.kinds), 1))
    if not query_last:
        add([LINE_END])
        example_spans += [add(example_pieces(example)) for example in prompt.examples[prompt.query_slot:]]

    relevant = prompt.relevant_slots
    relevant_span = (example_spans[relevant[0]][0], example_spans[relevant[-1]][1]) if relevant else (0, 0)
    spans = {"query": query_span, "answer": (answer_position, answer_position + 1), "masks": masks_span,
             "relevant": relevant_span}
    return TokenizedPrompt(prompt, ids, answer_position, answer_ids[0], spans, example_spans, relevant,
                           slot, None if causal else mask_token_id, filler_id)


def single_token_words(tokenizer, words: WordLists | None = None, min_per_category: int = 11) -> WordLists:
    """Return the word lists (default: the bundled ones) restricted to words whose prompt form
    (" word") is a single token for ``tokenizer``; ``.counts()`` gives how many survive per category.

    Raises ``UsageError`` listing every category with fewer than ``min_per_category`` survivors
    (default 11: enough for the default 10 relevant examples plus the query).
    """
    lists = words if words is not None else word_lists()
    encode = _encoder(tokenizer)
    kept = lists.filtered(lambda word: len(encode(word_piece(word))) == 1)
    survivors = kept.counts()
    short = [f"{c} {survivors[c]} of {n}" for c, n in lists.counts().items() if survivors[c] < min_per_category]
    if short:
        raise UsageError(f"too few words are single tokens for this tokenizer (need {min_per_category} per "
                         f"category): {', '.join(short)}")
    return kept


def _unknown_token(tokenizer) -> tuple[str, int] | None:
    """Return (text, id) of the token that stands for out-of-vocabulary text, or None if there is none.

    Read from the tokenizer (transformers' ``unk_token``) or its ``tokenizers`` model (WordLevel,
    WordPiece and BPE models name one even when the transformers wrapper does not).
    """
    token = getattr(tokenizer, "unk_token", None)
    if token is None:
        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        token = getattr(getattr(backend, "model", None), "unk_token", None)
    if not token:
        return None
    to_id = getattr(tokenizer, "convert_tokens_to_ids", None) or getattr(tokenizer, "token_to_id", None)
    token_id = to_id(token) if to_id is not None else None
    return None if token_id is None else (token, token_id)


def _encoder(tokenizer) -> Callable[[str], tuple[int, ...]]:
    """Return a memoised text -> token ids function for ``tokenizer`` ("" -> no ids)."""
    cache: dict[str, tuple[int, ...]] = {"": ()}

    def encode(text: str) -> tuple[int, ...]:
        if text not in cache:
            out = tokenizer.encode(text, add_special_tokens=False)
            cache[text] = tuple(getattr(out, "ids", out))
        return cache[text]

    return encode
