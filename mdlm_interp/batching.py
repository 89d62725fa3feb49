"""Batches: token sequences -> padded ``input_ids``, ``attention_mask`` and the positions that matter.

``collate`` turns tokenized task prompts (``tasks.TokenizedPrompt``) into a ``PromptBatch``: the
padded ids, the attention mask, and a ``BatchLayout`` of boolean position sets [batch, pos] (valid
tokens, the answer slot, the masks after it, relevant examples, the query, the context, the last k
context tokens before the slot) plus the readout index, where the logits predicting the answer
slot are read with the family's prediction offset. Recording, evaluation, training batches,
patching and decoding all use it; ``pad_sequences`` and ``position_sets`` are the building blocks
for sequences that are not task prompts. Padding goes left or right: position ids count valid
tokens only (``HookedDecoder``), so either side gives the same numbers at the valid positions.
"""

from dataclasses import dataclass

import torch

from mdlm_interp.models.readout import readout_position

PADDING_SIDES = ("right", "left")


def pad_sequences(sequences: list, pad_id: int = 0, side: str = "right") -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Pad token sequences to the longest one.

    Returns (ids [batch, pos] long, valid [batch, pos] bool, starts): ``starts[b]`` is the index in
    the padded row of sequence b's first token (0 with right padding).
    """
    if side not in PADDING_SIDES:
        raise ValueError(f"padding side must be one of {PADDING_SIDES}, got {side!r}")
    lengths = [len(seq) for seq in sequences]
    width = max(lengths)
    starts = [width - n if side == "left" else 0 for n in lengths]
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    valid = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, (seq, start, n) in enumerate(zip(sequences, starts, lengths)):
        ids[row, start:start + n] = torch.as_tensor(seq, dtype=torch.long)
        valid[row, start:start + n] = True
    return ids, valid, starts


def position_sets(spans_per_row: list, width: int, starts: list[int]) -> torch.Tensor:
    """Return a bool [batch, width] set marking, in row b, the half-open token ``spans_per_row[b]``
    (a list of (start, end) pairs in the unpadded sequence) shifted by ``starts[b]``."""
    marked = torch.zeros((len(spans_per_row), width), dtype=torch.bool)
    for row, (spans, shift) in enumerate(zip(spans_per_row, starts)):
        for begin, end in spans:
            marked[row, shift + begin:shift + end] = True
    return marked


@dataclass
class BatchLayout:
    """Where things are in a padded batch of task prompts; every set is bool [batch, pos].

    readout [batch]: index of the logits that predict the answer slot (answer position + offset).
    answer_ids [batch]: the correct answer's token id.
    valid: real tokens (not padding). answer: the answer slot (empty for a causal model, whose
    answer is the next token). appended: the answer slot and the tokens after it (masks or fillers).
    masks: those tokens after the answer slot only. relevant: tokens of the relevant examples.
    query: the query's tokens. context: valid tokens outside ``appended``. last_context: the
    ``last_k`` tokens before the answer slot.
    """

    readout: torch.Tensor
    answer_ids: torch.Tensor
    valid: torch.Tensor
    answer: torch.Tensor
    appended: torch.Tensor
    masks: torch.Tensor
    relevant: torch.Tensor
    query: torch.Tensor
    context: torch.Tensor
    last_context: torch.Tensor

    @property
    def rows(self) -> torch.Tensor:
        """Return arange(batch)."""
        return torch.arange(len(self.readout), device=self.readout.device)


@dataclass
class PromptBatch:
    """A padded batch of tokenized prompts.

    input_ids [batch, pos] long; attention_mask [batch, pos] long (1 valid, 0 padding); layout: the
    ``BatchLayout``; starts [batch]: index of each prompt's first token in its padded row.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    layout: BatchLayout
    starts: list[int]

    @property
    def attention_mask_if_padded(self) -> torch.Tensor | None:
        """Return the attention mask, or None when no row is padded (the model then needs none)."""
        return None if bool(self.attention_mask.all()) else self.attention_mask


def collate(prompts: list, prediction_offset: int, *, pad_id: int = 0, padding_side: str = "right",
            last_k: int = 50, device="cpu") -> PromptBatch:
    """Return the ``PromptBatch`` of ``prompts`` (``tasks.TokenizedPrompt``), on ``device``.

    ``prediction_offset`` is the family's (0 for LLaDA, -1 for Dream and causal models: the answer
    slot of a causal prompt is the token after it, read from the prompt's last position).
    ``last_k``: the size of ``layout.last_context``.
    """
    ids, valid, starts = pad_sequences([tp.input_ids for tp in prompts], pad_id, padding_side)
    width = ids.shape[1]

    def spans(pick) -> torch.Tensor:
        return position_sets([pick(tp) for tp in prompts], width, starts)

    def appended_span(tp) -> tuple[int, int]:
        if tp.answer_position >= len(tp.input_ids):  # causal: nothing is appended
            return 0, 0
        return tp.answer_position, max(tp.answer_position + 1, tp.spans["masks"][1])

    appended = spans(lambda tp: [appended_span(tp)])
    layout = BatchLayout(
        readout=torch.tensor([readout_position(start + tp.answer_position, prediction_offset)
                              for tp, start in zip(prompts, starts)]),
        answer_ids=torch.tensor([tp.answer_id for tp in prompts]),
        valid=valid,
        answer=spans(lambda tp: [tp.spans["answer"]] if tp.answer_position < len(tp.input_ids) else []),
        appended=appended,
        masks=spans(lambda tp: [tp.spans["masks"]]),
        relevant=spans(lambda tp: [tp.example_spans[i] for i in tp.relevant_examples]),
        query=spans(lambda tp: [tp.spans["query"]]),
        context=valid & ~appended,
        last_context=spans(lambda tp: [(max(0, tp.answer_position - last_k), tp.answer_position)]),
    )
    moved = BatchLayout(**{name: value.to(device) for name, value in vars(layout).items()})
    return PromptBatch(ids.to(device), valid.long().to(device), moved, starts)
