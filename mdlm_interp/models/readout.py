"""Reading the model's prediction for a position: the one place the prediction offset is applied."""

import torch


class NoPrediction(IndexError, ValueError):
    """A position whose prediction would be read from outside the sequence (an IndexError and a ValueError)."""


def readout_position(answer_position, prediction_offset: int):
    """Return the index of the logits that predict the token at ``answer_position`` (an int, or a tensor of
    any shape, returned in kind): ``answer_position + prediction_offset`` (the answer slot for LLaDA, the
    position before it for Dream and causal models)."""
    return answer_position + prediction_offset


def logits_at(logits: torch.Tensor, positions: torch.Tensor, prediction_offset: int) -> torch.Tensor:
    """Return the logits that predict the tokens AT ``positions``.

    ``logits`` is the raw output [batch, pos, vocab]; ``positions`` is [batch] or [batch, k] (token
    indices). The prediction for position i is ``logits[:, i + prediction_offset]`` (offset 0 for
    LLaDA, -1 for Dream and causal models). Returns [batch, vocab] or [batch, k, vocab].
    """
    positions = torch.as_tensor(positions, device=logits.device)
    index = readout_position(positions, prediction_offset)
    if (index < 0).any() or (index >= logits.shape[1]).any():
        raise NoPrediction(f"positions {positions.tolist()} with offset {prediction_offset} fall outside the sequence")
    if index.dim() == 1:
        return logits[torch.arange(logits.shape[0], device=logits.device), index]
    return torch.gather(logits, 1, index[..., None].expand(*index.shape, logits.shape[-1]))


def logits_where(logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, prediction_offset: int, *,
                 clamp: bool = False) -> torch.Tensor:
    """Return the logits that predict the tokens at the pairs (``rows``, ``cols``), each [n]: [n, vocab].

    The prediction for (b, i) is ``logits[b, i + prediction_offset]``. ``clamp``: a prediction outside
    the sequence reads its nearest end (Dream's shift ``cat([logits[:, :1], logits[:, :-1]])``: position
    0 reads ``logits[:, 0]``); otherwise it raises ``NoPrediction``.
    """
    index = cols + prediction_offset
    if clamp:
        index = index.clamp(0, logits.shape[1] - 1)
    elif (index < 0).any() or (index >= logits.shape[1]).any():
        raise NoPrediction(f"a position has no prediction with offset {prediction_offset}")
    return logits[rows, index]
