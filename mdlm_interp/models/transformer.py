"""One hooked decoder for LLaDA, Dream, Llama and Qwen2.

Pre-norm blocks: RMSNorm, rotate-half RoPE, grouped-query attention (optionally with q/k/v bias),
SwiGLU MLP; attention is bidirectional (masked diffusion models) or causal. Every interesting
activation passes through a TransformerLens ``HookPoint`` with TransformerLens' names, so
``run_with_hooks`` and ``run_with_cache`` work as usual.

Attention uses ``scaled_dot_product_attention`` unless a hook is attached to ``hook_attn_scores`` or
``hook_pattern``; then it takes the explicit path (same numbers) so the pattern exists to be seen
and edited.

Attention probes measure how much attention goes to sets of keys without materialising any
pattern: ``model(ids, attention_probes=w)`` with key weights ``w`` [batch, pos, probe] appends ``w``
to the values, so the attention output carries ``pattern @ w`` for free; it is exposed at
``blocks.{l}.attn.hook_probe_mass`` [batch, head, query, probe] and the logits are unchanged.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint


@dataclass(frozen=True)
class DecoderConfig:
    """Shape and numerics of a decoder; built from a checkpoint's config.json by its family spec."""

    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    max_seq_len: int
    rope_theta: float
    norm_eps: float
    qkv_bias: bool = False
    causal: bool = False
    tie_embeddings: bool = False
    rope_in_float32: bool = True

    def __post_init__(self):
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")

    @property
    def n_params(self) -> int:
        """Number of parameters of a decoder of this shape."""
        attn = self.d_model * self.d_head * (2 * self.n_heads + 2 * self.n_kv_heads)
        if self.qkv_bias:
            attn += self.d_head * (self.n_heads + 2 * self.n_kv_heads)
        block = attn + 3 * self.d_model * self.d_mlp + 2 * self.d_model
        unembed = 0 if self.tie_embeddings else self.d_vocab * self.d_model
        return self.n_layers * block + self.d_vocab * self.d_model + unembed + self.d_model


def has_hooks(hook_point: HookPoint) -> bool:
    """Return whether any forward or backward hook is attached to ``hook_point``."""
    return bool(hook_point._forward_hooks or hook_point._backward_hooks)


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, cast back to the input dtype, then scaled by the weight."""

    def __init__(self, d_model: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.hook_normalized(self.weight * x32.to(x.dtype))


def rotary_tables(positions: torch.Tensor, d_head: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return float32 (cos, sin) of shape [batch, pos, d_head] for integer ``positions`` [batch, pos]."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, d_head, 2, device=positions.device, dtype=torch.float32) / d_head))
    angles = positions.float()[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, in_float32: bool) -> torch.Tensor:
    """Rotate-half RoPE of ``x`` [batch, pos, head, d_head]; returns the same shape and dtype.

    ``in_float32`` follows LLaDA (rotate in float32, cast back); otherwise the tables are cast to the
    input dtype first, as Hugging Face Llama/Qwen2 do.
    """
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    work = x.float() if in_float32 else x
    cos, sin = cos.to(work.dtype), sin.to(work.dtype)
    half = work.shape[-1] // 2
    rotated = torch.cat([-work[..., half:], work[..., :half]], dim=-1)
    return (work * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE; bidirectional or causal."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.d_head, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.d_head, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.d_head, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.d_head, cfg.d_model, bias=False)
        self.hook_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_k = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_v = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_rot_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_rot_k = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head, query_pos, key_pos]
        self.hook_pattern = HookPoint()  # [batch, head, query_pos, key_pos]
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]
        self.hook_probe_mass = HookPoint()  # [batch, head, query_pos, probe]

    def needs_pattern(self) -> bool:
        """Whether a hook wants the attention scores or pattern (forces the explicit path)."""
        return has_hooks(self.hook_attn_scores) or has_hooks(self.hook_pattern)

    def forward(self, x, cos, sin, allowed: torch.Tensor | None, probes: torch.Tensor | None = None) -> torch.Tensor:
        """Attend; ``allowed`` is a boolean [batch, 1, query, key] mask or None (all allowed).

        ``probes`` [batch, key, probe] (optional) are carried along as extra value channels; their
        attention-weighted sums go to ``hook_probe_mass``.
        """
        cfg = self.cfg
        q = self.hook_q(rearrange(self.q_proj(x), "b t (h d) -> b t h d", d=cfg.d_head))
        k = self.hook_k(rearrange(self.k_proj(x), "b t (h d) -> b t h d", d=cfg.d_head))
        v = self.hook_v(rearrange(self.v_proj(x), "b t (h d) -> b t h d", d=cfg.d_head))
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
        return self.o_proj(rearrange(z, "b t h d -> b t (h d)"))


def future_keys(n: int, device) -> torch.Tensor:
    """Return a boolean [n, n] matrix that is True ABOVE the diagonal (the keys a causal query may not see)."""
    return torch.ones(n, n, dtype=torch.bool, device=device).triu(1)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_mlp, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_mlp, bias=False)
        self.down_proj = nn.Linear(cfg.d_mlp, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """One pre-norm transformer block."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.ln1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ln2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(self, x, cos, sin, allowed, probes=None):
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln1(x), cos, sin, allowed, probes)))
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.ln2(x))))


class HookedDecoder(HookedRootModule):
    """The decoder: ``model(input_ids, attention_mask=None)`` returns raw logits [batch, pos, vocab].

    Logits are never shifted here; reading the prediction for a position goes through
    ``mdlm_interp.models.readout.logits_at`` with the family's prediction offset.
    """

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.unembed = nn.Linear(cfg.d_model, cfg.d_vocab, bias=False)
        if cfg.tie_embeddings:
            self.unembed.weight = self.embed.weight
        self.setup()

    def attention_mask_and_positions(
        self, attention_mask: torch.Tensor | None, batch: int, n: int, device
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Return (allowed [batch, 1, query, key] bool or None, position ids [batch, pos]).

        Padded keys are never attended to; position ids count valid tokens only (left or right
        padding gives the same positions as an unpadded run). Padded query rows may see every key,
        which keeps them finite; their outputs are meaningless and should be ignored.
        """
        if attention_mask is None:
            return None, torch.arange(n, device=device).expand(batch, n)
        valid = attention_mask.to(device=device, dtype=torch.bool)
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
        allowed = valid[:, None, None, :].expand(batch, 1, n, n)
        if self.cfg.causal:
            allowed = allowed & ~future_keys(n, device)
        allowed = allowed | ~valid[:, None, :, None]
        return allowed, positions

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        attention_probes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return raw logits [batch, pos, vocab] for ``input_ids`` [batch, pos].

        ``attention_mask`` [batch, pos] marks valid tokens with 1 and padding with 0.
        ``attention_probes`` [batch, pos, probe]: key weights whose attention-weighted sums are
        exposed at every ``blocks.{l}.attn.hook_probe_mass`` (see the module docstring).
        """
        batch, n = input_ids.shape
        allowed, positions = self.attention_mask_and_positions(attention_mask, batch, n, input_ids.device)
        cos, sin = rotary_tables(positions, self.cfg.d_head, self.cfg.rope_theta)
        x = self.hook_embed(self.embed(input_ids))
        for block in self.blocks:
            x = block(x, cos, sin, allowed, attention_probes)
        return self.unembed(self.ln_final(x))
