"""Splicing an SAE into a model: its reconstruction replaces the activation at a site, and the loss at
the answer slot with and without it.

``splice_hooks(site, sae, positions)`` returns TransformerLens ``fwd_hooks``; ``site_width(model,
site)`` is the width an SAE must have there (read from a one-token forward pass, so it holds for any
site and family); ``answer_loss_with_sae`` compares the answer slot's cross-entropy of a task batch
with and without the SAE.
"""

import torch

from mdlm_interp.errors import UsageError
from mdlm_interp.models.readout import logits_at_index, run_reading


def site_width(model, site: str) -> int:
    """Return the width per position of ``site`` (a [batch, pos, ...] hook of ``model``): the product of
    its trailing dimensions, e.g. d_model for the residual stream, heads * d_head for ``attn.hook_z``."""
    if site not in model.hook_dict:
        raise UsageError(f"unknown site {site!r}: give a TransformerLens hook name of this model")
    shape = {}

    def note(activation, hook):
        shape["trailing"] = activation.shape[2:]

    with torch.no_grad():
        model.run_with_hooks(torch.zeros(1, 1, dtype=torch.long, device=model.cfg.device), fwd_hooks=[(site, note)])
    return int(torch.Size(shape["trailing"]).numel())


def splice_hooks(site: str, sae, positions: torch.Tensor | None = None) -> list:
    """Return ``fwd_hooks`` [(site, hook)] that replace the activation [batch, pos, ...] at ``site`` by the
    SAE's reconstruction (computed in float32, returned in the activation's dtype and shape) where
    ``positions`` [batch, pos] (bool) is true, everywhere if None."""

    def hook(activation: torch.Tensor, hook=None) -> torch.Tensor:
        flat = activation.reshape(*activation.shape[:2], -1)
        sae.check_width(flat.shape[-1], where=f"the activations at {site}")
        reconstruction = sae(flat.float()).to(activation.dtype).reshape(activation.shape)
        if positions is None:
            return reconstruction
        where = positions.to(device=activation.device, dtype=torch.bool)
        return torch.where(where.reshape(*where.shape, *[1] * (activation.ndim - 2)), reconstruction, activation)

    return [(site, hook)]


def answer_loss_with_sae(model, batch, site: str, sae, positions: torch.Tensor | None = None) -> dict:
    """Return {"loss", "loss_with_sae"} (mean cross-entropy of the correct answer at the readout, nats)
    and {"accuracy", "accuracy_with_sae"} (argmax correct) of task batch ``batch``
    (``batching.PromptBatch``) without and with ``sae`` spliced in at ``site`` (at ``positions``)."""
    sae.check_width(site_width(model, site), where=f"the activations at {site}")
    return answer_loss(model, batch, [], "") | answer_loss(model, batch, splice_hooks(site, sae, positions), "_with_sae")


def answer_loss(model, batch, fwd_hooks: list, suffix: str = "") -> dict:
    """Return {"loss" + suffix: mean cross-entropy of the correct answer at the readout (nats),
    "accuracy" + suffix: argmax accuracy there} of task batch ``batch`` run with ``fwd_hooks``."""
    layout = batch.layout
    with torch.no_grad():
        logits = logits_at_index(run_reading(model, batch.input_ids, layout.readout[:, None], fwd_hooks,
                                             attention_mask=batch.attention_mask_if_padded), layout.readout).float()
    return {f"loss{suffix}": float(torch.nn.functional.cross_entropy(logits, layout.answer_ids)),
            f"accuracy{suffix}": float((logits.argmax(-1) == layout.answer_ids).float().mean())}
