"""The decoder's configuration: shape and numerics from a checkpoint, plus the model's run-time settings."""

from dataclasses import FrozenInstanceError, dataclass, field
from typing import ClassVar


RUNTIME_SETTINGS = ("device", "use_attn_result", "explicit_attention", "block_length")


@dataclass(unsafe_hash=True)
class DecoderConfig:
    """Shape and numerics of a decoder (built from a checkpoint's config.json by its family spec),
    plus the run-time settings of the model that owns it.

    The shape fields cannot change once set. The settings can (``RUNTIME_SETTINGS``, ignored by
    ``==`` and ``hash``): ``device`` (where the weights are; ``HookedDecoder`` keeps it current),
    ``use_attn_result`` (compute per-head outputs at ``blocks.{l}.attn.hook_result``, off by default
    as in TransformerLens: it costs [batch, pos, head, d_model] per layer) and
    ``explicit_attention`` (compute every attention pattern; see ``HookedDecoder.explicit_attention``) and
    ``block_length`` (None: the family's own attention; N: block attention, bidirectional inside blocks of
    N positions and causal across them; see ``HookedDecoder.block_attention``).
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
    qk_norm: bool = False  # RMSNorm over d_head on each query and key head, before RoPE (Qwen3, LLaDA-MoE, LLaDA2)
    o_bias: bool = False  # the attention output projection has a bias
    partial_rotary_factor: float = 1.0  # RoPE rotates the first int(d_head * factor) dimensions of each head
    # Mixture of experts (models.moe): n_experts 0 means every MLP is dense (d_mlp wide).
    n_experts: int = 0  # routed experts in each MoE layer
    n_experts_per_tok: int = 0  # experts chosen per token (k)
    d_expert: int = 0  # hidden width of a routed expert
    d_shared: int = 0  # hidden width of the shared expert(s) of a MoE layer (0: none)
    moe_layers: tuple[int, ...] = ()  # the layers whose MLP is a MoE (the others are dense)
    router: str = "softmax"  # "softmax" (top-k of softmax scores) or "sigmoid_grouped" (group-limited top-k)
    router_bias: bool = False  # a per-expert bias added to the scores that choose the experts
    norm_topk_prob: bool = False  # renormalise the chosen weights to sum to 1 ("sigmoid_grouped" does when k > 1)
    n_group: int = 1  # expert groups ("sigmoid_grouped": experts are chosen from the topk_group best groups)
    topk_group: int = 1
    routed_scaling_factor: float = 1.0  # the chosen weights are multiplied by it
    device: str = field(default="cpu", compare=False)
    use_attn_result: bool = field(default=False, compare=False)
    explicit_attention: bool = field(default=False, compare=False)
    block_length: int | None = field(default=None, compare=False)

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
        object.__setattr__(self, "moe_layers", tuple(self.moe_layers))  # hashable, also from a JSON list

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
        """Number of rotated dimensions per head (all of them unless ``partial_rotary_factor`` < 1)."""
        return int(self.d_head * self.partial_rotary_factor)

    def is_moe_layer(self, layer: int) -> bool:
        """Whether block ``layer``'s MLP is a mixture of experts."""
        return self.n_experts > 0 and layer in self.moe_layers

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
        attn += self.d_model * self.o_bias + 2 * self.d_head * self.qk_norm
        moe = sum(self.is_moe_layer(layer) for layer in range(self.n_layers))
        dense_mlp = 3 * self.d_model * self.d_mlp
        moe_mlp = (3 * self.d_model * (self.n_experts * self.d_expert + self.d_shared)
                   + self.n_experts * (self.d_model + self.router_bias))
        blocks = self.n_layers * (attn + 2 * self.d_model) + (self.n_layers - moe) * dense_mlp + moe * moe_mlp
        unembed = 0 if self.tie_embeddings else self.d_vocab * self.d_model
        return blocks + self.d_vocab * self.d_model + unembed + self.d_model
