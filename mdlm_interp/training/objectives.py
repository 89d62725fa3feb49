"""Training losses of the model organisms: LLaDA's masked-diffusion loss (with Dream's -1 prediction
offset as an option) and the next-token loss of the causal twin.

Masked diffusion (LLaDA, docs/models.md): t ~ U(0, 1), p = (1 - eps) t + eps, each maskable token is
replaced by the mask token with probability p, and the loss is the cross-entropy on the masked
tokens weighted by 1/p, divided by the number of tokens. Dream reads the prediction for the token at
position i from ``logits[:, i - 1]``; LLaDA from ``logits[:, i]``.
"""

import torch
import torch.nn.functional as F

from mdlm_interp.models.readout import logits_where

EPS = 1e-3


def mask_ratios(batch: int, generator: torch.Generator, eps: float = EPS, stratified: bool = True,
                high: float = 1.0) -> torch.Tensor:
    """Return p [batch] = (high - eps) t + eps, the masking probability of each sequence (in [eps, high]).

    ``stratified``: t_b = (b + u_b) / batch with u_b ~ U(0, 1), one t per stratum of [0, 1), which
    covers the noise levels evenly in every batch; otherwise t_b ~ U(0, 1) independently.
    """
    u = torch.rand(batch, generator=generator)
    t = (torch.arange(batch) + u) / batch if stratified else u
    return (high - eps) * t + eps


def apply_masks(
    input_ids: torch.Tensor, maskable: torch.Tensor, p: torch.Tensor, mask_token_id: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask each ``maskable`` token of sequence b independently with probability ``p[b]``.

    ``input_ids`` [B, T] long, ``maskable`` [B, T] bool, ``p`` [B] (or [B, T], one probability per
    position). Returns (noisy ids [B, T], masked [B, T] bool), masked being the positions replaced by
    ``mask_token_id``.
    """
    threshold = p if p.dim() == 2 else p[:, None]
    masked = (torch.rand(input_ids.shape, generator=generator) < threshold) & maskable
    return torch.where(masked, torch.full_like(input_ids, mask_token_id), input_ids), masked


def masked_diffusion_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    masked: torch.Tensor,
    p: torch.Tensor,
    normalizer: torch.Tensor,
    prediction_offset: int = 0,
) -> torch.Tensor:
    """Return the masked-diffusion loss (a scalar).

    loss = 1/B * sum_b sum_{i masked in b} CE(logits[b, i + offset], targets[b, i]) / (p[b] * normalizer[b])

    ``logits`` [B, T, V] raw model output; ``targets`` [B, T] the clean ids; ``masked`` [B, T] bool;
    ``p`` [B] masking probabilities (or [B, T], one per position: p[b, i] replaces p[b]);
    ``normalizer`` [B] the token count each sequence's sum is divided by: LLaDA pretraining divides
    by the number of tokens (pass N_tokens / B for every sequence, so the loss is the sum over the
    batch / N_tokens), LLaDA SFT by each sequence's
    response length. ``prediction_offset`` 0 (LLaDA) or -1 (Dream: the prediction for the token at
    i is ``logits[:, i - 1]``; a masked position 0 raises ``models.readout.NoPrediction``, a ValueError).
    """
    rows, cols = masked.nonzero(as_tuple=True)
    ce = F.cross_entropy(logits_where(logits, rows, cols, prediction_offset).float(), targets[rows, cols],
                         reduction="none")
    p_at = p[rows, cols] if p.dim() == 2 else p[rows]
    weights = 1.0 / (p_at * normalizer[rows].to(ce.dtype))
    return (ce * weights).sum() / masked.shape[0]


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Return the mean next-token cross-entropy over the ``scored`` target positions (a scalar).

    The token at position i is predicted from ``logits[:, i - 1]``. ``logits`` [B, T, V];
    ``targets`` [B, T] the input ids; ``scored`` [B, T] bool marks the tokens whose prediction is
    trained (position 0 cannot be scored: ``models.readout.NoPrediction``, a ValueError). Pretraining
    scores every real token after the first; SFT scores only the response.
    """
    rows, cols = scored.nonzero(as_tuple=True)
    return F.cross_entropy(logits_where(logits, rows, cols, -1).float(), targets[rows, cols])
