"""Grouped-query self-attention with RoPE, bidirectional or causal, with TransformerLens' hooks and weight views."""

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn
from transformer_lens.hook_points import HookPoint

from mdlm_interp.models.config import DecoderConfig
from mdlm_interp.models.norm import RMSNorm
from mdlm_interp.models.rotary import apply_rotary


def has_hooks(hook_point: HookPoint) -> bool:
    """Return whether any forward or backward hook is attached to ``hook_point``."""
    return bool(hook_point._forward_hooks or hook_point._backward_hooks)

class Attention(nn.Module):
    """Grouped-query self-attention with RoPE; bidirectional or causal.

    TransformerLens weight views (they share storage with the projections, so edits to them are
    edits to the model): ``W_Q`` [head, d_model, d_head], ``W_O`` [head, d_head, d_model],
    ``_W_K`` / ``_W_V`` [kv_head, d_model, d_head]; ``W_K`` / ``W_V`` are [head, d_model, d_head]
    (views without grouped-query attention, repeated copies with it, as in TransformerLens: head h
    reads key/value head h // (n_heads / n_kv_heads)). Biases ``b_Q`` [head, d_head], ``_b_K`` /
    ``_b_V`` [kv_head, d_head], ``b_K`` / ``b_V`` [head, d_head] are views where the family has
    q/k/v biases (Dream, Qwen2) and zeros elsewhere.

    With ``cfg.qk_norm`` (Qwen3, LLaDA-MoE, LLaDA2) each query and key head is RMS-normalised over
    d_head by ``q_norm`` / ``k_norm`` after ``hook_q`` / ``hook_k`` and before RoPE; with
    ``cfg.partial_rotary_factor`` < 1 RoPE turns only the first ``cfg.rotary_dim`` dimensions of a head.
    """

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.d_head, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.d_head, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.d_head, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.d_head, cfg.d_model, bias=cfg.o_bias)
        self.q_norm = RMSNorm(cfg.d_head, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.d_head, cfg.norm_eps) if cfg.qk_norm else None
        self.hook_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_k = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_v = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_rot_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_rot_k = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head, query_pos, key_pos]
        self.hook_pattern = HookPoint()  # [batch, head, query_pos, key_pos]
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]
        self.hook_result = HookPoint()  # [batch, pos, head, d_model], only with cfg.use_attn_result
        self.hook_probe_mass = HookPoint()  # [batch, head, query_pos, probe]

    def needs_pattern(self) -> bool:
        """Whether the explicit path must run: a hook wants the scores or pattern, or the model's
        ``explicit_attention`` setting is on."""
        return self.cfg.explicit_attention or has_hooks(self.hook_attn_scores) or has_hooks(self.hook_pattern)

    def _heads(self, tensor: torch.Tensor, pattern: str) -> torch.Tensor:
        return rearrange(tensor, pattern, d=self.cfg.d_head)

    def _bias(self, projection: nn.Linear) -> torch.Tensor:
        if projection.bias is not None:
            return self._heads(projection.bias, "(h d) -> h d")
        return projection.weight.new_zeros(projection.out_features // self.cfg.d_head, self.cfg.d_head)

    def _per_query_head(self, kv: torch.Tensor) -> torch.Tensor:
        group = self.cfg.n_heads // self.cfg.n_kv_heads
        return kv if group == 1 else kv.repeat_interleave(group, dim=0)

    @property
    def W_Q(self) -> torch.Tensor:
        """[head, d_model, d_head] view of the query projection."""
        return self._heads(self.q_proj.weight, "(h d) m -> h m d")

    @property
    def _W_K(self) -> torch.Tensor:
        """[kv_head, d_model, d_head] view of the key projection."""
        return self._heads(self.k_proj.weight, "(h d) m -> h m d")

    @property
    def _W_V(self) -> torch.Tensor:
        """[kv_head, d_model, d_head] view of the value projection."""
        return self._heads(self.v_proj.weight, "(h d) m -> h m d")

    @property
    def W_K(self) -> torch.Tensor:
        """[head, d_model, d_head]: each query head's key weights (a copy under grouped-query attention)."""
        return self._per_query_head(self._W_K)

    @property
    def W_V(self) -> torch.Tensor:
        """[head, d_model, d_head]: each query head's value weights (a copy under grouped-query attention)."""
        return self._per_query_head(self._W_V)

    @property
    def W_O(self) -> torch.Tensor:
        """[head, d_head, d_model] view of the output projection."""
        return self._heads(self.o_proj.weight, "m (h d) -> h d m")

    @property
    def b_Q(self) -> torch.Tensor:
        """[head, d_head] query bias (zeros for families without q/k/v biases)."""
        return self._bias(self.q_proj)

    @property
    def _b_K(self) -> torch.Tensor:
        """[kv_head, d_head] key bias."""
        return self._bias(self.k_proj)

    @property
    def _b_V(self) -> torch.Tensor:
        """[kv_head, d_head] value bias."""
        return self._bias(self.v_proj)

    @property
    def b_K(self) -> torch.Tensor:
        """[head, d_head] key bias of each query head."""
        return self._per_query_head(self._b_K)

    @property
    def b_V(self) -> torch.Tensor:
        """[head, d_head] value bias of each query head."""
        return self._per_query_head(self._b_V)

    def forward(self, x, cos, sin, allowed: torch.Tensor | None, probes: torch.Tensor | None = None) -> torch.Tensor:
        """Attend; ``allowed`` is a boolean [batch, 1, query, key] mask or None (all allowed).

        ``probes`` [batch, key, probe] (optional) are carried along as extra value channels; their
        attention-weighted sums go to ``hook_probe_mass``.
        """
        cfg = self.cfg
        q = self.hook_q(rearrange(self.q_proj(x), "b t (h d) -> b t h d", d=cfg.d_head))
        k = self.hook_k(rearrange(self.k_proj(x), "b t (h d) -> b t h d", d=cfg.d_head))
        v = self.hook_v(rearrange(self.v_proj(x), "b t (h d) -> b t h d", d=cfg.d_head))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = self.hook_rot_q(apply_rotary(q, cos, sin, cfg.rope_in_float32))
        k = self.hook_rot_k(apply_rotary(k, cos, sin, cfg.rope_in_float32))
        q, k, v = (rearrange(t, "b t h d -> b h t d") for t in (q, k, v))
        group = cfg.n_heads // cfg.n_kv_heads
        if probes is not None:
            v = torch.cat([v, probes[:, None].to(v.dtype).expand(-1, v.shape[1], -1, -1)], dim=-1)
        if self.needs_pattern():
            k, v = (repeat(t, "b h t d -> b (h g) t d", g=group) for t in (k, v))
            scores = (q @ k.transpose(-1, -2)) / cfg.d_head**0.5
            if allowed is not None:
                scores = scores.masked_fill(~allowed, float("-inf"))
            elif cfg.causal:
                scores = scores.masked_fill(future_keys(x.shape[1], x.device), float("-inf"))
            scores = self.hook_attn_scores(scores)
            pattern = self.hook_pattern(scores.float().softmax(dim=-1).to(q.dtype))
            z = pattern @ v
        else:
            if probes is not None:  # equal q/k/v widths keep SDPA on its fused kernel; zeros change no score
                q, k = (F.pad(t, (0, probes.shape[-1])) for t in (q, k))
            z = F.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, is_causal=cfg.causal and allowed is None, scale=cfg.d_head**-0.5,
                enable_gqa=group > 1,
            )
        if probes is not None:
            self.hook_probe_mass(z[..., cfg.d_head:])
            z = z[..., : cfg.d_head]
        z = self.hook_z(rearrange(z, "b h t d -> b t h d"))
        if self.cfg.use_attn_result:  # per-head outputs; their sum equals o_proj(z) up to rounding
            out = self.hook_result(torch.einsum("bthd,hdm->bthm", z, self.W_O)).sum(dim=2)
            return out if self.o_proj.bias is None else out + self.o_proj.bias
        return self.o_proj(rearrange(z, "b t h d -> b t (h d)"))


def future_keys(n: int, device) -> torch.Tensor:
    """Return a boolean [n, n] matrix that is True ABOVE the diagonal (the keys a causal query may not see)."""
    return torch.ones(n, n, dtype=torch.bool, device=device).triu(1)


def block_causal(positions: torch.Tensor, block_length: int) -> torch.Tensor:
    """Return block attention's allowed keys, boolean [batch, 1, query, key]: True where the key's block
    (position id // ``block_length``) is not after the query's. ``positions``: position ids [batch, pos]."""
    blocks = positions // block_length
    return blocks[:, None, None, :] <= blocks[:, None, :, None]
