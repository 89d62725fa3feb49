"""A prompt as readable text with its spans labelled (``mdlm-interp tasks show``)."""

from __future__ import annotations

from mdlm_interp.tasks.format import (
    LINE_END,
    MASK_TEXT,
    AnswerSlot,
    check_layout,
    example_pieces,
    query_pieces,
    split_chat_template,
    word_piece,
)
from mdlm_interp.tasks.prompt import Prompt


def render_prompt(prompt: Prompt, slot: AnswerSlot, chat_template: str | None = None) -> str:
    """Return ``prompt`` as text with a ``[label]`` line before each span: the examples (relevant ones
    marked), the query, the answer slot and the masks after it (shown as "<mask>") or fillers.

    Each span's text follows its label verbatim, plus a line break where it has none of its own;
    raises ``UsageError`` for a layout that ``tokenize_prompt`` would refuse.
    """
    query_last = prompt.query_slot == len(prompt.examples)
    check_layout(query_last, slot, chat_template)
    task = prompt.task
    prefix, suffix = split_chat_template(chat_template) if chat_template is not None else ("", "")

    def example_block(index: int) -> tuple[str, str]:
        example = prompt.examples[index]
        kind = f"RELEVANT ({task.category})" if example.relevant else f"distractor ({task.distractor})"
        return f"example {index}: {kind}", "".join(example_pieces(example))

    blocks = [("chat template, before the user text", prefix)] if prefix else []
    blocks += [example_block(i) for i in range(prompt.query_slot)]
    blocks.append((f"query, after {prompt.query_slot} examples", "".join(query_pieces(prompt.query))))
    if suffix:
        blocks.append(("chat template, after the user text", suffix))
    expected = f"expected {word_piece(prompt.answer)!r}"
    if slot.causal:
        blocks.append((f"answer: the next token, {expected}", ""))
    else:
        blocks.append((f"answer slot, {expected}", MASK_TEXT))
        extra = slot.kinds[1:]
        if extra:
            what = "masks" if extra[0] == "mask" else f"fillers {slot.filler!r}"
            blocks.append((f"{len(extra)} {what} after the answer slot",
                           "".join(MASK_TEXT if kind == "mask" else slot.filler for kind in extra)))
    if not query_last:
        blocks.append(("line break ending the query", LINE_END))
        blocks += [example_block(i) for i in range(prompt.query_slot, len(prompt.examples))]
    return "".join(f"[{label}]\n{text}" + ("" if text.endswith("\n") or not text else "\n") for label, text in blocks)
