"""Recorders: hook functions that reduce activations on the fly, layer by layer.

Each recorder gives TransformerLens ``fwd_hooks`` for one batch and, after the forward pass, a dict of
reduced arrays keyed by store dataset path ("attention/mask_mass_from_answer", ...). They need only
the standard hook names, so they work with the toolkit's ``HookedDecoder`` and with any
``HookedRootModule`` exposing them (e.g. a TransformerLens ``TransformerBridge``). Nothing holds more
than one layer's attention pattern at a time.
"""

from dataclasses import dataclass

import torch
from einops import einsum


@dataclass
class BatchLayout:
    """Where things are in a padded batch; every mask is bool [batch, pos].

    readout [batch]: index of the logits that predict the answer slot (answer position + offset).
    answer_ids [batch]: the correct answer's token id.
    valid: real tokens (not padding). appended: the answer slot and the tokens appended after it.
    masks: the appended tokens after the answer slot only. relevant: tokens of relevant examples.
    context: valid tokens outside ``appended``. last50: the 50 context tokens nearest before the
    answer slot.
    """

    readout: torch.Tensor
    answer_ids: torch.Tensor
    valid: torch.Tensor
    appended: torch.Tensor
    masks: torch.Tensor
    relevant: torch.Tensor
    context: torch.Tensor
    last50: torch.Tensor

    @property
    def rows(self) -> torch.Tensor:
        """Return arange(batch)."""
        return torch.arange(len(self.readout), device=self.readout.device)


class AttentionRecorder:
    """Attention mass on the appended masks and on the relevant examples, per layer and head.

    With ``use_probes`` (the toolkit's ``HookedDecoder``) the masses ride along the fast attention
    kernel as attention probes (``blocks.{l}.attn.hook_probe_mass``); otherwise each layer's
    ``hook_pattern`` is reduced as it passes. Both give the same numbers.
    """

    def __init__(self, n_layers: int, layout: BatchLayout, use_probes: bool):
        self.layout = layout
        self.n_layers = n_layers
        self.use_probes = use_probes
        self.probes = torch.stack([layout.masks, layout.relevant], dim=-1).float()  # [batch, key, 2]
        self.per_layer: dict[int, dict[str, torch.Tensor]] = {}

    def forward_kwargs(self) -> dict:
        """Return the extra keyword arguments of the forward pass (the probes, in probe mode)."""
        return {"attention_probes": self.probes} if self.use_probes else {}

    def fwd_hooks(self) -> list:
        """Return [(hook name, fn)]: every layer's ``attn.hook_probe_mass`` or ``attn.hook_pattern``."""
        name = "hook_probe_mass" if self.use_probes else "hook_pattern"
        return [(f"blocks.{layer}.attn.{name}", self._hook(layer)) for layer in range(self.n_layers)]

    def _hook(self, layer: int):
        def reduce(activation: torch.Tensor, hook) -> None:
            if self.use_probes:
                mass = activation.detach().float()  # [batch, head, query, 2]
            else:
                mass = einsum(activation.detach().float(), self.probes, "b h q k, b k p -> b h q p")
            lay = self.layout
            from_answer = mass[lay.rows, :, lay.readout]  # [batch, head, 2]
            context = lay.context.float()
            self.per_layer[layer] = {
                "attention/mask_mass_from_answer": from_answer[..., 0],
                "attention/relevant_mass_from_answer": from_answer[..., 1],
                "attention/mask_mass_from_context": einsum(mass[..., 0], context, "b h q, b q -> b h")
                / context.sum(-1, keepdim=True).clamp(min=1),
            }

        return reduce

    def results(self) -> dict[str, torch.Tensor]:
        """Return each quantity stacked over layers: [batch, layer, head]."""
        names = self.per_layer[0].keys()
        return {name: torch.stack([self.per_layer[l][name] for l in range(self.n_layers)], dim=1) for name in names}


def distribution_stats(logits: torch.Tensor, answer_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Return p(answer), rank of the answer (tokens with a strictly higher logit) and entropy in nats.

    ``logits`` [batch, vocab]; each result is [batch].
    """
    logits = logits.float()
    log_probs = logits.log_softmax(-1)
    answer_logit = logits.gather(-1, answer_ids[:, None])
    return {
        "p_answer": log_probs.gather(-1, answer_ids[:, None])[:, 0].exp(),
        "rank": (logits > answer_logit).sum(-1),
        "entropy": -(log_probs.exp() * log_probs).sum(-1),
    }


class LensRecorder:
    """Logit lens at the readout position: the residual stream entering block 0 and after each block,
    through the model's final norm and unembedding."""

    def __init__(self, model, n_layers: int, layout: BatchLayout):
        self.model = model
        self.layout = layout
        self.n_layers = n_layers
        self.per_stage: dict[int, dict[str, torch.Tensor]] = {}

    def fwd_hooks(self) -> list:
        """Return hooks on blocks.0.hook_resid_pre (stage 0) and blocks.{l}.hook_resid_post (stage l+1)."""
        hooks = [("blocks.0.hook_resid_pre", self._hook(0))]
        return hooks + [(f"blocks.{l}.hook_resid_post", self._hook(l + 1)) for l in range(self.n_layers)]

    def _hook(self, stage: int):
        def reduce(resid: torch.Tensor, hook) -> None:
            lay = self.layout
            with torch.no_grad():
                picked = resid.detach()[lay.rows, lay.readout][:, None]  # [batch, 1, d_model]
                logits = self.model.unembed(self.model.ln_final(picked))[:, 0]
                self.per_stage[stage] = distribution_stats(logits, lay.answer_ids)

        return reduce

    def results(self) -> dict[str, torch.Tensor]:
        """Return lens/p_answer, lens/rank, lens/entropy, each [batch, layer + 1]."""
        stages = range(self.n_layers + 1)
        return {f"lens/{name}": torch.stack([self.per_stage[s][name] for s in stages], dim=1)
                for name in ("p_answer", "rank", "entropy")}


class GradientRecorder:
    """Per-token L2 norm of d(answer logit at the readout) / d(input embedding), and its normalised means."""

    def __init__(self, layout: BatchLayout):
        self.layout = layout
        self.embeddings: torch.Tensor | None = None

    def fwd_hooks(self) -> list:
        """Return a hook on ``hook_embed`` that makes the embeddings a leaf to differentiate against."""

        def capture(embeddings: torch.Tensor, hook) -> torch.Tensor:
            self.embeddings = embeddings.detach().requires_grad_(True)
            return self.embeddings

        return [("hook_embed", capture)]

    def results(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return gradients/norms [batch, pos] (0 on padding) and the three normalised means [batch].

        ``logits`` is the raw output [batch, pos, vocab] of the forward pass that ran this recorder's
        hook. Rows are independent, so one backward pass of the summed answer logits serves them all.
        """
        lay = self.layout
        target = logits[lay.rows, lay.readout, lay.answer_ids].sum()
        (grad,) = torch.autograd.grad(target, self.embeddings)
        norms = grad.float().norm(dim=-1) * lay.valid  # [batch, pos]
        share = norms / norms.sum(-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)

        def mean_over(selection: torch.Tensor) -> torch.Tensor:
            count = selection.sum(-1)
            total = (share * selection).sum(-1)
            return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))

        return {
            "gradients/norms": norms.detach(),
            "gradients/mask_mean": mean_over(lay.appended),
            "gradients/last50_mean": mean_over(lay.last50),
            "gradients/nonmask_mean": mean_over(lay.context),
        }
