"""One hooked decoder for LLaDA, Dream, Llama and Qwen2.

Pre-norm blocks: RMSNorm, rotate-half RoPE, grouped-query attention (optionally with q/k/v bias),
SwiGLU MLP; attention is bidirectional (masked diffusion models) or causal. Every interesting
activation passes through a TransformerLens ``HookPoint`` with TransformerLens' names, so
``run_with_hooks`` and ``run_with_cache`` work as usual.

Attention uses ``scaled_dot_product_attention`` unless a hook is attached to ``hook_attn_scores`` or
``hook_pattern`` or the model's ``explicit_attention`` setting is on (needed by tools such as nnsight
that do not attach TransformerLens hooks); then it takes the explicit path (same numbers) so the
pattern exists to be seen and edited.

The model also speaks TransformerLens: its config answers to TL's field names, it has TL's weight
views (``W_E``, ``W_U``, ``blocks[l].attn.W_Q`` ..., views of the real parameters), ``run_with_cache``
returns a ``transformer_lens.ActivationCache``, and ``to_tokens`` / ``to_string`` /
``tokens_to_residual_directions`` work with the tokenizer that ``load_model`` attaches. So the
cache's helpers (``accumulated_resid``, ``decompose_resid``, ``stack_head_results``, ``logit_attrs``,
``stack_neuron_results``) and ``transformer_lens.patching`` run on it.

Attention probes measure how much attention goes to sets of keys without materialising any
pattern: ``model(ids, attention_probes=w)`` with key weights ``w`` [batch, pos, probe] appends ``w``
to the values, so the attention output carries ``pattern @ w`` for free; it is exposed at
``blocks.{l}.attn.hook_probe_mass`` [batch, head, query, probe] and the logits are unchanged.
"""

from contextlib import contextmanager
from dataclasses import FrozenInstanceError, dataclass, field, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from mdlm_interp.errors import UsageError


RUNTIME_SETTINGS = ("device", "use_attn_result", "explicit_attention")


@dataclass(unsafe_hash=True)
class DecoderConfig:
    """Shape and numerics of a decoder (built from a checkpoint's config.json by its family spec),
    plus the run-time settings of the model that owns it.

    The shape fields cannot change once set. The settings can (``RUNTIME_SETTINGS``, ignored by
    ``==`` and ``hash``): ``device`` (where the weights are; ``HookedDecoder`` keeps it current),
    ``use_attn_result`` (compute per-head outputs at ``blocks.{l}.attn.hook_result``, off by default
    as in TransformerLens: it costs [batch, pos, head, d_model] per layer) and
    ``explicit_attention`` (compute every attention pattern; see ``HookedDecoder.explicit_attention``).
    The class attributes and properties below give TransformerLens' names for what its utilities read.
    """

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
    device: str = field(default="cpu", compare=False)
    use_attn_result: bool = field(default=False, compare=False)
    explicit_attention: bool = field(default=False, compare=False)

    # TransformerLens' names for what every family here is.
    normalization_type: ClassVar[str] = "RMS"  # RMSNorm with a weight and no bias, before each sublayer
    final_rms: ClassVar[bool] = True
    attn_only: ClassVar[bool] = False
    gated_mlp: ClassVar[bool] = True
    act_fn: ClassVar[str] = "silu"
    positional_embedding_type: ClassVar[str] = "rotary"
    rotary_adjacent_pairs: ClassVar[bool] = False  # rotate-half layout

    def __post_init__(self):
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")

    def __setattr__(self, name, value):
        if name in self.__dict__ and name not in RUNTIME_SETTINGS:
            raise FrozenInstanceError(f"cannot assign to field {name!r} (only {', '.join(RUNTIME_SETTINGS)} change)")
        super().__setattr__(name, value)

    @property
    def n_ctx(self) -> int:
        """TransformerLens' name for ``max_seq_len``."""
        return self.max_seq_len

    @property
    def d_vocab_out(self) -> int:
        """TransformerLens' name for the width of the logits (``d_vocab``)."""
        return self.d_vocab

    @property
    def n_key_value_heads(self) -> int:
        """TransformerLens' name for ``n_kv_heads``."""
        return self.n_kv_heads

    @property
    def eps(self) -> float:
        """TransformerLens' name for ``norm_eps``."""
        return self.norm_eps

    @property
    def rotary_base(self) -> float:
        """TransformerLens' name for ``rope_theta``."""
        return self.rope_theta

    @property
    def rotary_dim(self) -> int:
        """Number of rotated dimensions per head: all of them."""
        return self.d_head

    @property
    def attention_dir(self) -> str:
        """TransformerLens' "causal" or "bidirectional"."""
        return "causal" if self.causal else "bidirectional"

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
    """Grouped-query self-attention with RoPE; bidirectional or causal.

    TransformerLens weight views (they share storage with the projections, so edits to them are
    edits to the model): ``W_Q`` [head, d_model, d_head], ``W_O`` [head, d_head, d_model],
    ``_W_K`` / ``_W_V`` [kv_head, d_model, d_head]; ``W_K`` / ``W_V`` are [head, d_model, d_head]
    (views without grouped-query attention, repeated copies with it, as in TransformerLens: head h
    reads key/value head h // (n_heads / n_kv_heads)). Biases ``b_Q`` [head, d_head], ``_b_K`` /
    ``_b_V`` [kv_head, d_head], ``b_K`` / ``b_V`` [head, d_head] are views where the family has
    q/k/v biases (Dream, Qwen2) and zeros elsewhere.
    """

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
            return self.hook_result(torch.einsum("bthd,hdm->bthm", z, self.W_O)).sum(dim=2)
        return self.o_proj(rearrange(z, "b t h d -> b t (h d)"))


def future_keys(n: int, device) -> torch.Tensor:
    """Return a boolean [n, n] matrix that is True ABOVE the diagonal (the keys a causal query may not see)."""
    return torch.ones(n, n, dtype=torch.bool, device=device).triu(1)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x)).

    Hooks and weight views follow TransformerLens' gated MLP: ``hook_pre`` = gate(x),
    ``hook_pre_linear`` = up(x), ``hook_post`` = silu(gate(x)) * up(x) (the neurons), all
    [batch, pos, d_mlp]; ``W_gate`` and ``W_in`` [d_model, d_mlp], ``W_out`` [d_mlp, d_model].
    """

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_mlp, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_mlp, bias=False)
        self.down_proj = nn.Linear(cfg.d_mlp, cfg.d_model, bias=False)
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
    """One pre-norm transformer block."""

    # TransformerLens' logit lens asks this: hook_resid_post is the one residual stream ln_final reads.
    hook_out_is_single_residual_stream = True

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

    ``cfg`` is the model's own copy of the config it was built from (its run-time settings are
    per model). ``tokenizer`` and ``default_prepend_bos`` are set by ``load_model``.
    """

    tokenizer = None
    default_prepend_bos = False

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = replace(cfg)
        cfg = self.cfg
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.unembed = nn.Linear(cfg.d_model, cfg.d_vocab, bias=False)
        if cfg.tie_embeddings:
            self.unembed.weight = self.embed.weight
        self.cfg.device = str(self.embed.weight.device)
        self.setup()

    def _apply(self, fn, recurse=True):
        """``nn.Module._apply`` (behind ``to``, ``cuda``, ``half`` ...), then record the new device in ``cfg``."""
        module = super()._apply(fn, recurse)
        self.cfg.device = str(self.embed.weight.device)
        return module

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

    def run_with_cache(self, *model_args, return_cache_object: bool = True, remove_batch_dim: bool = False, **kwargs):
        """Run the model caching every hook (or ``names_filter``'s); return (logits, cache).

        The cache is a ``transformer_lens.ActivationCache`` (a plain dict of hook name -> tensor with
        ``return_cache_object=False``). Other arguments are ``HookedRootModule.run_with_cache``'s and
        the model's (``attention_mask``, ``attention_probes``).
        """
        from transformer_lens import ActivationCache

        logits, cache = super().run_with_cache(*model_args, remove_batch_dim=remove_batch_dim, **kwargs)
        if return_cache_object:
            cache = ActivationCache(cache, self, has_batch_dim=not remove_batch_dim)
        return logits, cache

    @contextmanager
    def explicit_attention(self, enabled: bool = True):
        """Within the block, every attention layer computes its pattern explicitly (or, with
        ``enabled=False``, only when a TransformerLens hook asks for it, the default).

        The explicit path gives the same logits as the fused kernel and makes ``hook_attn_scores``
        and ``hook_pattern`` fire on every forward pass, which tools that do not attach TL hooks
        (nnsight) need to read or edit a pattern. Sets ``cfg.explicit_attention`` (which can also be
        set for good) and restores it on exit.
        """
        previous = self.cfg.explicit_attention
        self.cfg.explicit_attention = enabled
        try:
            yield self
        finally:
            self.cfg.explicit_attention = previous

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Turn the per-head outputs at ``blocks.{l}.attn.hook_result`` on or off (TransformerLens' switch)."""
        self.cfg.use_attn_result = use_attn_result

    @property
    def W_E(self) -> torch.Tensor:
        """[d_vocab, d_model]: the embedding matrix itself."""
        return self.embed.weight

    @property
    def W_U(self) -> torch.Tensor:
        """[d_model, d_vocab] view of the unembedding (without ``ln_final``'s weight folded in)."""
        return self.unembed.weight.T

    @property
    def b_U(self) -> torch.Tensor:
        """[d_vocab] zeros: these families have no unembedding bias."""
        return self.unembed.weight.new_zeros(self.cfg.d_vocab)

    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True) -> torch.Tensor:
        """[d_model] zeros: no attention-output or MLP bias writes to the residual stream here."""
        return self.embed.weight.new_zeros(self.cfg.d_model)

    def tokens_to_residual_directions(self, tokens: str | int | torch.Tensor) -> torch.Tensor:
        """Return the residual direction of each token, [*tokens.shape, d_model].

        The direction has ``ln_final``'s weight folded in (``ln_final.weight * W_U[:, token]``), so
        that (resid / ``ln_final.hook_scale``) . direction is the token's logit; this is what
        TransformerLens' ``logit_attrs`` needs to give attributions that sum to the logit.
        """
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        ids = torch.as_tensor(tokens, device=self.unembed.weight.device)
        return self.unembed.weight[ids] * self.ln_final.weight

    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise UsageError("this model has no tokenizer; load it with mdlm_interp.load_model or set model.tokenizer")
        return self.tokenizer

    def to_tokens(self, input: str | list[str], prepend_bos: bool | None = None, move_to_device: bool = True,
                  truncate: bool = True) -> torch.Tensor:
        """Return the token ids [batch, pos] of a string or a list of strings of equal token length.

        The text is tokenized as it is, with no special tokens except the family's BOS when
        ``prepend_bos`` (default ``default_prepend_bos``: True where the family's prompts start with
        BOS, LLaDA and Llama; False for Dream and Qwen2). ``truncate`` keeps the first ``cfg.n_ctx``
        tokens. Strings of different token lengths are refused (pad them yourself and pass an
        ``attention_mask`` to the model).
        """
        tokenizer = self._require_tokenizer()
        prepend_bos = self.default_prepend_bos if prepend_bos is None else prepend_bos
        texts = [input] if isinstance(input, str) else list(input)
        if prepend_bos and tokenizer.bos_token_id is None:
            raise UsageError("this tokenizer has no BOS token; call to_tokens with prepend_bos=False")
        bos = [tokenizer.bos_token_id] if prepend_bos else []
        rows = [(bos + tokenizer.encode(text, add_special_tokens=False))[: self.cfg.n_ctx if truncate else None]
                for text in texts]
        if len({len(row) for row in rows}) > 1:
            raise UsageError(f"the strings are {sorted({len(row) for row in rows})} tokens long; to_tokens needs "
                             "equal lengths (pad them yourself and pass attention_mask)")
        return torch.tensor(rows, dtype=torch.long, device=self.cfg.device if move_to_device else "cpu")

    def to_string(self, tokens) -> str | list[str]:
        """Decode token ids: [pos] (or a list of ids) -> str, [batch, pos] -> list of str."""
        tokenizer = self._require_tokenizer()
        tokens = torch.as_tensor(tokens)
        if tokens.dim() == 2:
            return [tokenizer.decode(row.tolist(), clean_up_tokenization_spaces=False) for row in tokens]
        return tokenizer.decode(tokens.reshape(-1).tolist(), clean_up_tokenization_spaces=False)

    def to_str_tokens(self, input) -> list[str]:
        """Return each token of ``input`` (a string, tokenized as ``to_tokens`` does, or ids [pos]) as a string."""
        tokens = self.to_tokens(input)[0] if isinstance(input, str) else torch.as_tensor(input).reshape(-1)
        return [self.to_string(token.reshape(1)) for token in tokens]

    def to_single_token(self, string: str) -> int:
        """Return the id of ``string``, which must be exactly one token (no BOS added)."""
        tokens = self.to_tokens(string, prepend_bos=False)[0]
        if len(tokens) != 1:
            raise UsageError(f"{string!r} is {len(tokens)} tokens, not one")
        return int(tokens[0])
