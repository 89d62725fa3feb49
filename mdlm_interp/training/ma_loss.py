"""The mask-agnostic (MA) loss of "Masks Can Be Distracting" (README.md, "MA-loss fine-tuning").

For a prompt/answer pair the answer is noised by Bernoulli(p) masking into a~; two inputs x1 and x2
hold the same prompt and the same a~ at the same positions and differ only in the number of
terminal masks after it (l1 != l2). With n_m the number of masked answer tokens of the pair:

    L_CE = -1 / (2 p n_m) * sum_{i=1,2} sum_{j in answer} 1{x_i^j = mask} log p(x^j | x_i)
    L_TV =  p / n_m      * sum_{j in answer} 1{x_1^j = mask} TV(p(. | x_1)_j, p(. | x_2)_j)
    L_MA = alpha L_CE + beta L_TV        (beta = 0: the CE-only ablation)

TV(P, Q) = 1/2 sum_v |P(v) - Q(v)|. The CE term carries the 1/p weight of masked diffusion; the TV
term the p weight, so that it still counts when almost no answer token is masked. A pair with no
masked answer token contributes nothing; the batch loss is the mean over pairs. Predictions are read
through ``models.readout`` with the family's prediction offset: the distribution for the token at j
is ``logits[:, j + offset]``.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mdlm_interp.models.readout import logits_where


@dataclass
class MALoss:
    """The MA loss of a batch and its two terms (scalars; ``loss`` = alpha * ce + beta * tv)."""

    loss: torch.Tensor
    ce: torch.Tensor
    tv: torch.Tensor


def total_variation(logits_1: torch.Tensor, logits_2: torch.Tensor) -> torch.Tensor:
    """Return TV(softmax(logits_1), softmax(logits_2)) per row: [..., V] -> [...], in float32."""
    return 0.5 * (logits_1.float().softmax(-1) - logits_2.float().softmax(-1)).abs().sum(-1)


def ma_loss(logits_1: torch.Tensor, logits_2: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor,
            p: torch.Tensor, *, alpha: float = 1.0, beta: float = 1.0, prediction_offset: int = 0) -> MALoss:
    """Return the MA loss of a batch of input pairs (see the module docstring).

    ``logits_1`` [B, T1, V] and ``logits_2`` [B, T2, V]: raw model outputs for x1 and x2 (never
    shifted). ``targets`` [B, T] the clean ids; ``masked`` [B, T] bool the masked answer positions of
    a~ (the same in x1 and x2; T may be shorter than T1 and T2: positions beyond T are the terminal
    masks, which are never scored). ``p`` [B] the masking probabilities. ``prediction_offset``: 0
    (LLaDA) or -1 (Dream). With ``beta == 0`` the TV term is measured but detached (no gradient).
    """
    batch = masked.shape[0]
    rows, cols = masked.nonzero(as_tuple=True)
    first = logits_where(logits_1, rows, cols, prediction_offset)  # NoPrediction (a ValueError) outside
    second = logits_where(logits_2, rows, cols, prediction_offset)
    answers = targets[rows, cols]
    n_masked = masked.sum(1).to(torch.float32)[rows]
    p_at = p.to(torch.float32)[rows]
    ce_sum = F.cross_entropy(first.float(), answers, reduction="none") + \
        F.cross_entropy(second.float(), answers, reduction="none")
    ce = (ce_sum / (2 * p_at * n_masked)).sum() / batch
    tv = (total_variation(first, second) * p_at / n_masked).sum() / batch
    if beta == 0:  # the CE-only ablation still measures the TV term, but trains nothing through it
        tv = tv.detach()
    return MALoss(alpha * ce + beta * tv, ce, tv)
