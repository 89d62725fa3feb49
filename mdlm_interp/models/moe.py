"""The mixture-of-experts MLP (LLaDA-MoE, LLaDA2): a router, top-k or group-limited top-k routing,
routed SwiGLU experts and optional shared experts, with hooks on every routing decision.

Hooks (all ``blocks.{l}.mlp.*``, names from ``hook_names.hook_name``):

- ``hook_router_logits`` [batch, pos, expert]: the router's logits (float32 for "sigmoid_grouped").
- ``hook_topk_indices`` [batch, pos, k] (int64): the chosen experts. Editing them changes which
  experts run.
- ``hook_topk_weights`` [batch, pos, k]: the weights applied to the chosen experts' outputs, after
  normalisation and the routed scaling factor. A weight set to 0 removes that expert's contribution.
- ``hook_expert_out`` [batch, pos, k, d_model]: each chosen expert's output before weighting,
  aligned with ``hook_topk_indices``; patchable.
- ``hook_shared_out`` [batch, pos, d_model]: the shared experts' output (families that have them).

The MLP's output is sum_k weight_k * expert_out_k (+ shared_out). The same code path runs with and
without hooks, so attaching them costs only the hooks themselves.
"""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from transformer_lens.hook_points import HookPoint

from mdlm_interp.models.block import MLP
from mdlm_interp.models.config import DecoderConfig

ROUTERS = ("softmax", "sigmoid_grouped")


class Expert(nn.Module):
    """One routed expert: a SwiGLU feed-forward down(silu(gate(x)) * up(x)) of hidden width ``d_hidden``."""

    def __init__(self, d_model: int, d_hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_hidden, bias=False)
        self.up_proj = nn.Linear(d_model, d_hidden, bias=False)
        self.down_proj = nn.Linear(d_hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the expert's output [..., d_model] for inputs [..., d_model]."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    """The router: ``weight`` [expert, d_model] (the checkpoints' ``mlp.gate.weight``) and, where the
    family has one, ``expert_bias`` [expert], added to the scores that choose the experts only."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.n_experts, cfg.d_model))
        self.expert_bias = nn.Parameter(torch.zeros(cfg.n_experts), requires_grad=False) if cfg.router_bias else None

    def logits(self, x: torch.Tensor, in_float32: bool) -> torch.Tensor:
        """Return the router logits [..., expert] of ``x`` [..., d_model]."""
        if in_float32:
            return F.linear(x.float(), self.weight.float())
        return F.linear(x, self.weight)


class MoEMLP(nn.Module):
    """A sparse mixture-of-experts MLP (see the module docstring for its hooks and routing)."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        if cfg.router not in ROUTERS:
            raise ValueError(f"unknown router {cfg.router!r} (known: {', '.join(ROUTERS)})")
        self.cfg = cfg
        self.gate = Router(cfg)
        self.experts = nn.ModuleList(Expert(cfg.d_model, cfg.d_expert) for _ in range(cfg.n_experts))
        self.shared_expert = MLP(cfg, cfg.d_shared) if cfg.d_shared else None
        self.hook_router_logits = HookPoint()  # [batch, pos, expert]
        self.hook_topk_indices = HookPoint()  # [batch, pos, k]
        self.hook_topk_weights = HookPoint()  # [batch, pos, k]
        self.hook_expert_out = HookPoint()  # [batch, pos, k, d_model]
        self.hook_shared_out = HookPoint()  # [batch, pos, d_model]

    def route(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (chosen experts [..., k] int64, their weights [..., k]) for router ``logits`` [..., expert].

        "softmax" (LLaDA-MoE, Qwen3-MoE): scores = softmax(logits) in float32, plus the expert bias
        where there is one; the k highest scores are the weights (renormalised with
        ``norm_topk_prob``), cast to the logits' dtype. "sigmoid_grouped" (LLaDA2, DeepSeek-V3):
        scores = sigmoid(logits); the experts are split into ``n_group`` groups, each group is scored
        by the sum of its two best (score + bias) values, the experts outside the ``topk_group`` best
        groups are excluded, and the k best (score + bias) remaining experts are chosen; their
        weights are the scores without bias, divided by their sum (+1e-20) when k > 1, in float32.
        Both multiply the weights by ``routed_scaling_factor``.
        """
        cfg = self.cfg
        bias = self.gate.expert_bias
        if cfg.router == "softmax":
            scores = logits.float().softmax(dim=-1)
            if bias is not None:
                scores = scores + bias.float()
            weights, indices = scores.topk(cfg.n_experts_per_tok, dim=-1)
            if cfg.norm_topk_prob:
                weights = weights / weights.sum(dim=-1, keepdim=True)
            weights = weights.to(logits.dtype)
        else:
            scores = torch.sigmoid(logits.float())
            choice = scores if bias is None else scores + bias.float()
            grouped = rearrange(choice, "... (g e) -> ... g e", g=cfg.n_group)
            group_scores = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(dim=-1)
            best_groups = group_scores.topk(cfg.topk_group, dim=-1).indices
            keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(-1, best_groups, True)
            keep = keep.unsqueeze(-1).expand_as(grouped).flatten(-2)
            indices = choice.masked_fill(~keep, float("-inf")).topk(cfg.n_experts_per_tok, dim=-1).indices
            weights = scores.gather(-1, indices)
            if cfg.n_experts_per_tok > 1:
                weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return indices, weights * cfg.routed_scaling_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the MoE output [batch, pos, d_model] for ``x`` [batch, pos, d_model]."""
        cfg = self.cfg
        logits = self.hook_router_logits(self.gate.logits(x, in_float32=cfg.router == "sigmoid_grouped"))
        indices, weights = self.route(logits)
        indices = self.hook_topk_indices(indices)
        weights = self.hook_topk_weights(weights)
        flat_x = x.reshape(-1, x.shape[-1])
        flat_indices = indices.reshape(flat_x.shape[0], -1)
        expert_out = flat_x.new_zeros(*flat_indices.shape, x.shape[-1])  # [token, k, d_model]
        for expert, (token, slot) in self._assignments(flat_indices):
            expert_out[token, slot] = self.experts[expert](flat_x[token])
        expert_out = self.hook_expert_out(expert_out.reshape(*indices.shape, x.shape[-1]))
        out = (expert_out.to(weights.dtype) * weights.unsqueeze(-1)).sum(dim=-2).to(x.dtype)
        if self.shared_expert is not None:
            out = out + self.hook_shared_out(self.shared_expert(x))
        return out

    def _assignments(self, flat_indices: torch.Tensor):
        """Yield (expert, (token ids, slot ids)) for every expert chosen at least once in ``flat_indices``
        [token, k], one host sync for the whole layer."""
        order = flat_indices.reshape(-1).argsort(stable=True)
        counts = torch.bincount(flat_indices.reshape(-1), minlength=self.cfg.n_experts).tolist()
        k = flat_indices.shape[1]
        start = 0
        for expert, count in enumerate(counts):
            if count:
                chosen = order[start:start + count]
                yield expert, (chosen // k, chosen % k)
            start += count
