"""The SwiGLU MLP and the pre-norm transformer block."""

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens.hook_points import HookPoint

from mdlm_interp.models.attention import Attention
from mdlm_interp.models.config import DecoderConfig
from mdlm_interp.models.norm import RMSNorm


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x)).

    Hooks and weight views follow TransformerLens' gated MLP: ``hook_pre`` = gate(x),
    ``hook_pre_linear`` = up(x), ``hook_post`` = silu(gate(x)) * up(x) (the neurons), all
    [batch, pos, d_mlp]; ``W_gate`` and ``W_in`` [d_model, d_mlp], ``W_out`` [d_mlp, d_model].
    """

    def __init__(self, cfg: DecoderConfig, d_mlp: int | None = None):
        super().__init__()
        d_mlp = cfg.d_mlp if d_mlp is None else d_mlp  # a MoE layer's shared expert has its own width
        self.gate_proj = nn.Linear(cfg.d_model, d_mlp, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, d_mlp, bias=False)
        self.down_proj = nn.Linear(d_mlp, cfg.d_model, bias=False)
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_pre_linear = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        neurons = F.silu(self.hook_pre(self.gate_proj(x))) * self.hook_pre_linear(self.up_proj(x))
        return self.down_proj(self.hook_post(neurons))

    @property
    def W_gate(self) -> torch.Tensor:
        """[d_model, d_mlp] view of the gate projection."""
        return self.gate_proj.weight.T

    @property
    def W_in(self) -> torch.Tensor:
        """[d_model, d_mlp] view of the up projection."""
        return self.up_proj.weight.T

    @property
    def W_out(self) -> torch.Tensor:
        """[d_mlp, d_model] view of the down projection."""
        return self.down_proj.weight.T


class Block(nn.Module):
    """One pre-norm transformer block; its MLP is a ``MoEMLP`` where ``cfg`` makes layer ``layer`` a MoE layer."""

    # TransformerLens' logit lens asks this: hook_resid_post is the one residual stream ln_final reads.
    hook_out_is_single_residual_stream = True

    def __init__(self, cfg: DecoderConfig, layer: int = 0):
        super().__init__()
        from mdlm_interp.models.moe import MoEMLP  # moe builds its shared expert from this module's MLP

        self.ln1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ln2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MoEMLP(cfg) if cfg.is_moe_layer(layer) else MLP(cfg)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(self, x, cos, sin, allowed, probes=None):
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln1(x), cos, sin, allowed, probes)))
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.ln2(x))))
