"""Reading the model's prediction for a position: the one place the prediction offset is applied.

Logits only where they are read: the decoder's forward pass takes ``logit_positions`` [batch, k] and then
unembeds only those positions (at LLaDA's vocabulary the full [pos, vocab] tensor of one 660-token prompt
is 330 MB in float32). A reader runs the model with ``run_reading`` (or asks with
``logit_request(module, positions)``, the forward keywords: none for a module that cannot, or when
``FULL_LOGITS_ENV`` is set, and wraps what comes back with ``received``), gets ``PartialLogits`` or the
full tensor, and reads either through ``logits_at``, ``logits_at_index`` and ``logits_where``, which
give the same values from both.
"""

import inspect
import os
from dataclasses import dataclass

import torch

FULL_LOGITS_ENV = "MDLM_INTERP_FULL_LOGITS"  # set to 1: every reader gets the full logits (for comparisons)


class NoPrediction(IndexError, ValueError):
    """A position whose prediction would be read from outside the sequence (an IndexError and a ValueError)."""


def readout_position(answer_position, prediction_offset: int):
    """Return the index of the logits that predict the token at ``answer_position`` (an int, or a tensor of
    any shape, returned in kind): ``answer_position + prediction_offset`` (the answer slot for LLaDA, the
    position before it for Dream and causal models)."""
    return answer_position + prediction_offset


@dataclass(frozen=True)
class PartialLogits:
    """Raw logits computed at some positions only: ``values`` [batch, k, vocab] are the logits at the
    logit indices ``positions`` [batch, k] of a sequence ``width`` positions long. Read them with
    ``logits_at``, ``logits_at_index`` or ``logits_where``, as the full logits."""

    values: torch.Tensor
    positions: torch.Tensor
    width: int

    @property
    def dtype(self) -> torch.dtype:
        """The logits' dtype."""
        return self.values.dtype


def kept_positions(needed: torch.Tensor) -> torch.Tensor:
    """Return the logit indices [batch, k] to unembed so that every True of ``needed`` (bool [batch, pos])
    is among them: each row's needed indices in order, then (rows needing fewer than the most) other
    indices of the row; k is the most any row needs, at least 1."""
    k = max(int(needed.sum(-1).max()) if needed.numel() else 0, 1)
    return (~needed).to(torch.int8).argsort(dim=-1, stable=True)[:, :k]


def full_logits_forced() -> bool:
    """Whether ``FULL_LOGITS_ENV`` asks every reader for the full logits (any value but "", "0")."""
    return os.environ.get(FULL_LOGITS_ENV, "") not in ("", "0")


def logit_request(module, positions: torch.Tensor) -> dict:
    """Return the forward keywords that ask ``module`` for the logits at ``positions`` [batch, k] only:
    ``{"logit_positions": positions}``, or {} (full logits) when the module's forward takes no
    ``logit_positions`` or ``full_logits_forced()``."""
    if full_logits_forced():
        return {}
    try:
        accepts = "logit_positions" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        accepts = False
    return {"logit_positions": positions} if accepts else {}


def received(logits: torch.Tensor, request: dict, width: int) -> "torch.Tensor | PartialLogits":
    """Return the forward pass's output ``logits`` as a reader takes it: ``PartialLogits`` when ``request``
    (from ``logit_request``) asked for some positions of a ``width``-long sequence, else the tensor."""
    if "logit_positions" not in request:
        return logits
    return PartialLogits(logits, request["logit_positions"], width)


def run_reading(module, input_ids: torch.Tensor, positions: torch.Tensor, hooks=(), **forward_kwargs):
    """Run ``module.run_with_hooks(input_ids, fwd_hooks=hooks, **forward_kwargs)`` asking for the logits at
    the logit indices ``positions`` [batch, k] only; return them as readers take them (``PartialLogits``,
    or the full [batch, pos, vocab] where the module cannot or ``FULL_LOGITS_ENV`` is set)."""
    request = logit_request(module, positions)
    logits = module.run_with_hooks(input_ids, fwd_hooks=list(hooks), **forward_kwargs, **request)
    return received(logits, request, input_ids.shape[1])


def _slots(logits: PartialLogits, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Return where the logit indices ``index`` (rows ``rows``, same shape) sit among ``logits.positions``."""
    match = logits.positions[rows] == index[..., None]
    if not bool(match.any(-1).all()):
        raise NoPrediction(f"logits at {index.tolist()} were not computed (only at {logits.positions.tolist()})")
    return match.to(torch.int8).argmax(-1)


def logits_at_index(logits, index: torch.Tensor) -> torch.Tensor:
    """Return the raw logits at logit indices ``index`` ([batch] or [batch, k]) of each row: [batch, vocab]
    or [batch, k, vocab]. ``logits``: the full [batch, pos, vocab] or ``PartialLogits``."""
    full = not isinstance(logits, PartialLogits)
    values = logits if full else logits.values
    index = torch.as_tensor(index, device=values.device)
    width = values.shape[1] if full else logits.width
    if (index < 0).any() or (index >= width).any():
        raise NoPrediction(f"logit indices {index.tolist()} fall outside the sequence of {width}")
    rows = torch.arange(values.shape[0], device=values.device)
    rows = rows if index.dim() == 1 else rows[:, None].expand_as(index)
    return values[rows, index if full else _slots(logits, rows, index)]


def logits_at(logits, positions: torch.Tensor, prediction_offset: int) -> torch.Tensor:
    """Return the logits that predict the tokens AT ``positions``.

    ``logits`` is the raw output [batch, pos, vocab] (or ``PartialLogits``); ``positions`` is [batch] or
    [batch, k] (token indices). The prediction for position i is ``logits[:, i + prediction_offset]``
    (offset 0 for LLaDA, -1 for Dream and causal models). Returns [batch, vocab] or [batch, k, vocab].
    """
    return logits_at_index(logits, readout_position(torch.as_tensor(positions), prediction_offset))


def logits_where(logits, rows: torch.Tensor, cols: torch.Tensor, prediction_offset: int, *,
                 clamp: bool = False) -> torch.Tensor:
    """Return the logits that predict the tokens at the pairs (``rows``, ``cols``), each [n]: [n, vocab].

    The prediction for (b, i) is ``logits[b, i + prediction_offset]``. ``clamp``: a prediction outside
    the sequence reads its nearest end (Dream's shift ``cat([logits[:, :1], logits[:, :-1]])``: position
    0 reads ``logits[:, 0]``); otherwise it raises ``NoPrediction``. ``logits``: the full
    [batch, pos, vocab] or ``PartialLogits``.
    """
    full = not isinstance(logits, PartialLogits)
    width = logits.shape[1] if full else logits.width
    index = cols + prediction_offset
    if clamp:
        index = index.clamp(0, width - 1)
    elif (index < 0).any() or (index >= width).any():
        raise NoPrediction(f"a position has no prediction with offset {prediction_offset}")
    return logits[rows, index] if full else logits.values[rows, _slots(logits, rows, index)]
