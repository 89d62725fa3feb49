"""Routing at the masks: which experts a mixture-of-experts model sends the answer slot, the masks after it
and the context to, per layer (a recorder of the ``hooks.recorders`` protocol).

It reads each MoE layer's chosen experts and their weights (``blocks.{l}.mlp.hook_topk_indices`` and
``hook_topk_weights`` [batch, pos, k]) as they pass. Layers without those hooks (dense layers, such as
LLaDA2's first ones) give NaN rows.
"""

import torch
import torch.nn.functional as F

from mdlm_interp.batching import BatchLayout
from mdlm_interp.hooks.recorders import Recorder
from mdlm_interp.models.hook_names import hook_name


def moe_layers(module) -> list[int]:
    """Return the blocks of ``module`` whose MLP is a mixture of experts (they expose ``mlp.hook_topk_indices``)."""
    names = getattr(module, "hook_dict", {})
    return [layer for layer in range(len(module.blocks)) if hook_name("topk_indices", layer) in names]


def n_experts(module) -> int:
    """Return the number of routed experts of ``module``'s MoE layers (0 for a dense model)."""
    return int(getattr(module.cfg, "n_experts", 0) or 0) if moe_layers(module) else 0


def expert_shares(indices: torch.Tensor, experts: int) -> torch.Tensor:
    """Return, for chosen experts ``indices`` [..., k], each expert's share of the k choices, [..., expert]."""
    return F.one_hot(indices, experts).float().mean(-2)


class RoutingRecorder(Recorder):
    """Per layer and expert: the answer slot's routing weights and the share of the masks' and of the context's
    expert choices (see ``results``)."""

    def __init__(self, module, layout: BatchLayout):
        self.layout = layout
        self.n_layers = len(module.blocks)
        self.layers = moe_layers(module)
        self.experts = n_experts(module)
        self.answer = layout.answer.float().argmax(-1)  # the answer slot's position in each row
        self.indices: dict[int, torch.Tensor] = {}
        self.per_layer: dict[int, dict[str, torch.Tensor]] = {}

    def fwd_hooks(self) -> list:
        """Return [(hook name, fn)]: every MoE layer's ``mlp.hook_topk_indices`` and ``mlp.hook_topk_weights``."""
        return [hook for layer in self.layers for hook in ((hook_name("topk_indices", layer), self._keep(layer)),
                                                           (hook_name("topk_weights", layer), self._reduce(layer)))]

    def _keep(self, layer: int):
        def keep(indices: torch.Tensor, hook) -> None:
            self.indices[layer] = indices.detach()
        return keep

    def _reduce(self, layer: int):
        def reduce(weights: torch.Tensor, hook) -> None:
            lay = self.layout
            indices = self.indices.pop(layer)  # [batch, pos, k]
            chosen = torch.zeros(*indices.shape[:2], self.experts, device=indices.device)
            chosen.scatter_(-1, indices, weights.detach().float())
            at_answer = chosen[lay.rows, self.answer]  # [batch, expert]
            shares = expert_shares(indices, self.experts)  # [batch, pos, expert]
            self.per_layer[layer] = {
                "answer_weights": at_answer / at_answer.sum(-1, keepdim=True).clamp(min=1e-20),
                "mask_share": _mean_over(shares, lay.masks),
                "context_share": _mean_over(shares, lay.context),
            }
        return reduce

    def results(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return answer_weights (the answer slot's routing weights over the experts, normalised to sum 1),
        mask_share (each expert's share of the top-k choices of the masks after the answer slot, NaN
        without such masks) and context_share (the same over the context), each [batch, layer, expert];
        NaN for dense layers."""
        batch = len(self.layout.readout)
        out = {}
        for name in ("answer_weights", "mask_share", "context_share"):
            values = torch.full((batch, self.n_layers, self.experts), float("nan"), device=self.layout.readout.device)
            for layer, reduced in self.per_layer.items():
                values[:, layer] = reduced[name]
            out[name] = values
        return out


def _mean_over(shares: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Return the mean of ``shares`` [batch, pos, expert] over the positions ``where`` [batch, pos] of each
    row, [batch, expert] (NaN for a row without such positions)."""
    weights = where.float()
    total = torch.einsum("bpe,bp->be", shares, weights)
    count = weights.sum(-1, keepdim=True)
    return torch.where(count > 0, total / count.clamp(min=1), float("nan"))
