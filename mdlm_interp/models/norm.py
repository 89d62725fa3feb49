"""RMSNorm with TransformerLens' ``hook_scale`` and ``hook_normalized``."""

import torch
from torch import nn
from transformer_lens.hook_points import HookPoint


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, cast back to the input dtype, then scaled by the weight.

    ``hook_scale`` [batch, pos, 1] (float32) is TransformerLens' scale, sqrt(mean(x^2) + eps): the
    normalised vector is x / scale before the weight. Where a hook (TransformerLens or nnsight, in
    place or not) changes the scale, the output divides by the new one; elsewhere it keeps the exact
    numbers of x * rsqrt(mean(x^2) + eps).
    """

    def __init__(self, d_model: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        inv_rms = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        scale = inv_rms.reciprocal()
        hooked = self.hook_scale(scale.clone())  # a copy, so that an edit in place shows against scale
        inv_rms = torch.where(hooked == scale, inv_rms, hooked.float().reciprocal())
        return self.hook_normalized(self.weight * (x32 * inv_rms).to(x.dtype))
