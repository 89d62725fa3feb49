"""The model families as data: LLaDA, Dream, their autoregressive twins Llama and Qwen2, Qwen3, the
mixture-of-experts diffusion models LLaDA-MoE and LLaDA2 (block diffusion), and the A2D conversions
(Qwen3, Qwen2.5 and Llama made bidirectional and trained as masked diffusion models).

A ``FamilySpec`` holds every family fact the toolkit uses (docs/models.md): how a checkpoint's
config.json maps onto ``DecoderConfig`` and what it must say, the architecture name and defaults a
new checkpoint is written with, how our parameter names map onto the checkpoint's, the tokenizer's
file format and special tokens, where the prediction for a position is read
(``prediction_offset``) and how a chat turn is templated. Adding a family is one more spec here.

This module imports no torch, so the command line can read its tables (families, shape presets,
dtype names) without slowing ``--help``.
"""

import math
import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from mdlm_interp.errors import UsageError

if TYPE_CHECKING:
    from mdlm_interp.models.transformer import DecoderConfig

# Weight dtypes a model can be loaded or written in (torch dtype names).
DTYPE_NAMES = ("float32", "bfloat16", "float16")

# Shape presets of random and trained checkpoints; the family supplies rope theta, norm eps, q/k/v bias.
SHAPE_PRESETS: dict[str, dict] = {
    # Tiny random models for tests: grouped-query attention, 2 layers.
    "tiny": dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=160, max_seq_len=2048),
    # A medium shape for benchmarks (about 30M parameters with a small vocabulary).
    "medium": dict(d_model=512, n_layers=8, n_heads=8, n_kv_heads=8, d_mlp=1376, max_seq_len=2048),
    # The trained model organisms (data/models/organism-*; mdlm_interp.training.organisms).
    "organism": dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, d_mlp=384, max_seq_len=1024, tie_embeddings=True),
}

# The decoder's linear projections (module names, the same in every family's model; the checkpoint's
# own names are in FamilySpec.param_names): what LoRA may adapt.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Tokenizer file formats: what a checkpoint of the format ships, and the transformers class named in
# its tokenizer_config.json.
TOKENIZER_FORMATS = {
    "tokenizer.json": "PreTrainedTokenizerFast",
    "vocab.json+merges.txt": "Qwen2Tokenizer",
}


@dataclass(frozen=True)
class FamilySpec:
    """Everything family-specific, as data."""

    family: str
    model_types: tuple[str, ...]  # config.json "model_type" values (matched ignoring case); the first is written
    architecture: str  # config.json "architectures" entry of the real checkpoints
    causal: bool
    prediction_offset: int  # logits[:, i + offset] is the prediction for the token at i
    config_keys: dict[str, tuple[str, ...]]  # DecoderConfig field -> config.json keys, first found wins
    param_names: dict[str, str]  # our module path (with {i}) -> checkpoint module path
    special_tokens: dict[str, str]  # role (bos, eos, pad, mask, ...) -> token string
    special_id_keys: dict[str, str]  # role -> config.json key holding its id
    chat_template: str  # "{content}" is the user's message; ends where the assistant's answer starts
    rope_in_float32: bool
    default_rope_theta: float  # what a new checkpoint of the family is written with
    default_norm_eps: float
    tokenizer_format: str  # a key of TOKENIZER_FORMATS: the files the real checkpoints ship
    fixed_config: dict[str, object] = field(default_factory=dict)  # config.json values we require
    extra_config: dict[str, object] = field(default_factory=dict)  # further fields a written config.json carries
    qkv_bias: bool | None = None  # None: read it from config_keys["qkv_bias"] (absent: no bias)
    mlp_ratio_key: str | None = None  # when config_keys["d_mlp"] are absent: d_mlp = config[key] (default 4) * d_model
    lora_targets: tuple[str, ...] = PROJECTIONS  # modules LoRA adapts by default (a subset of PROJECTIONS)
    sampler: str | None = None  # the family's own iterative sampler (mdlm_interp.decoding); None for causal families
    alternative_tokens: dict[str, tuple[str, ...]] = field(default_factory=dict)  # role -> other tokens a
    # checkpoint's config.json id may name instead (models.tokenizer.check_special_ids)
    block_length: int | None = None  # block diffusion (LLaDA2): the sampler's default block length; None otherwise
    fixed_fields: dict[str, object] = field(default_factory=dict)  # DecoderConfig fields the family fixes
    config_defaults: dict[str, object] = field(default_factory=dict)  # config.json key -> value when absent
    # (the official configuration class's default)
    moe_layers_key: str | None = None  # "moe_layer_freq" (per-layer list, 0 = dense) or "first_k_dense_replace"
    routing_keys: tuple[str, ...] = ()  # further routing fields of the official config (known, not used)
    zero_is_default: tuple[str, ...] = ()  # DecoderConfig fields whose config.json value 0 means the default
    preset_fields: dict[str, object] = field(default_factory=dict)  # DecoderConfig fields of a new model
    # ("n_dense_layers": how many first layers stay dense; "n_shared_experts": shared experts of d_expert each)

    @property
    def attention(self) -> str:
        """How positions attend: "causal", "bidirectional" or "block" (bidirectional within a block of
        ``block_length``, causal across blocks)."""
        return "block" if self.block_length else "causal" if self.causal else "bidirectional"

    @property
    def is_moe(self) -> bool:
        """Whether the family's checkpoints have mixture-of-experts layers."""
        return "n_experts" in self.config_keys

    @property
    def mask_token(self) -> str | None:
        """The mask token's string, or None for causal families."""
        return self.special_tokens.get("mask")

    def decoder_config(self, config: dict) -> "DecoderConfig":
        """Return the ``DecoderConfig`` described by a checkpoint's config.json ``config``."""
        for key, required in self.fixed_config.items():
            if config.get(key) is not None and config[key] != required:
                raise UsageError(
                    f"config.json has {key}={config[key]!r}; {self.family} checkpoints need {required!r}"
                )

        self._check_routing_keys(config)

        def get(name, default=None):
            for key in self.config_keys.get(name, ()):
                if config.get(key) is not None:
                    return config[key]
                if self.config_defaults.get(key) is not None:
                    return self.config_defaults[key]
            if default is None:
                raise UsageError(f"config.json lacks {' or '.join(self.config_keys[name])} ({self.family})")
            return default

        try:
            fields = self._decoder_fields(config, get)
        except (TypeError, ValueError, OverflowError, AttributeError) as error:
            raise UsageError(f"config.json: a size or rate is not a number ({error})") from None
        sizes = ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_head", "d_mlp", "d_vocab", "max_seq_len")
        bad = [f"{name}={fields[name]}" for name in sizes if fields[name] < 1]
        bad += [f"{name}={fields[name]}" for name in ("norm_eps", "rope_theta") if not 0 < fields[name] < math.inf]
        if bad:
            raise UsageError(f"config.json: sizes and rates must be positive, got {', '.join(bad)}")
        if fields["n_heads"] % fields["n_kv_heads"]:
            raise UsageError(f"config.json: n_heads {fields['n_heads']} is not a multiple of n_kv_heads "
                             f"{fields['n_kv_heads']}")
        check_rotary_and_routing(fields)
        from mdlm_interp.models.transformer import DecoderConfig

        return DecoderConfig(**fields)

    def _check_routing_keys(self, config: dict) -> None:
        """Refuse a config.json with routing fields this family's official code does not know."""
        known = {key for keys in self.config_keys.values() for key in keys}
        known |= set(self.routing_keys) | set(self.fixed_config) | {self.moe_layers_key}
        unknown = sorted(key for key in config if ROUTING_KEY.search(key) and key not in known)
        if unknown:
            raise UsageError(f"config.json has routing field(s) {', '.join(unknown)} that {self.family} "
                             f"checkpoints do not have; this toolkit cannot say how they route")

    def _decoder_fields(self, config: dict, get) -> dict:
        """Return the ``DecoderConfig`` fields that config.json gives (unchecked)."""
        d_model, n_heads = int(get("d_model")), int(get("n_heads"))
        n_layers = int(get("n_layers"))
        moe = self._moe_fields(config, get, n_layers)
        d_mlp = next((config[k] for k in self.config_keys["d_mlp"] if config.get(k) is not None), None)
        if d_mlp is None and self.mlp_ratio_key is not None:
            d_mlp = int(config.get(self.mlp_ratio_key, 4)) * d_model
        if moe and len(moe["moe_layers"]) == n_layers and (d_mlp is None or int(d_mlp) < 1):
            d_mlp = moe["d_expert"]  # no dense layer: the dense width is unused
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise UsageError(f"config.json asks for rope scaling '{rope_type}', which is not supported")
        qkv_bias = self.qkv_bias if self.qkv_bias is not None else bool(get("qkv_bias", False))
        n_kv_heads = int(get("n_kv_heads", n_heads))
        if n_kv_heads == 0 and "n_kv_heads" in self.zero_is_default:
            n_kv_heads = n_heads
        fields = dict(
            **moe,
            qk_norm=bool(get("qk_norm", False)),
            o_bias=bool(get("o_bias", False)),
            partial_rotary_factor=float(get("partial_rotary_factor", 1.0)),
            d_model=d_model,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            d_head=int(get("d_head", d_model // n_heads if n_heads > 0 else 0)),
            d_mlp=int(d_mlp if d_mlp is not None else get("d_mlp")),
            d_vocab=int(get("d_vocab")),
            max_seq_len=int(get("max_seq_len")),
            rope_theta=float(config.get("rope_theta") or rope.get("rope_theta") or get("rope_theta")),
            norm_eps=float(get("norm_eps")),
            qkv_bias=qkv_bias,
            causal=self.causal,
            n_layers=n_layers,
            tie_embeddings=bool(get("tie_embeddings", False)),
            rope_in_float32=self.rope_in_float32,
        )
        fields.update(self.fixed_fields)
        return fields

    def _moe_fields(self, config: dict, get, n_layers: int) -> dict:
        """Return the mixture-of-experts ``DecoderConfig`` fields config.json gives (none for a dense family)."""
        if not self.is_moe or int(get("n_experts", 0)) <= 0:
            return {}
        if self.moe_layers_key == "moe_layer_freq":
            frequency = config.get("moe_layer_freq")
            if not isinstance(frequency, list) or len(frequency) != n_layers:
                raise UsageError(f"config.json: moe_layer_freq must list one entry per layer ({n_layers})")
            moe_layers = tuple(layer for layer, moe in enumerate(frequency) if moe)
        else:
            moe_layers = tuple(range(int(get("n_dense_layers", 0)), n_layers))
        d_expert = int(get("d_expert"))
        if "n_shared_experts" in self.config_keys:
            d_shared = int(get("n_shared_experts", 0)) * d_expert
        else:
            d_shared = int(get("d_shared", 0))
        return dict(
            n_experts=int(get("n_experts")), n_experts_per_tok=int(get("n_experts_per_tok")), d_expert=d_expert,
            d_shared=d_shared, moe_layers=moe_layers, router_bias=bool(get("router_bias", False)),
            norm_topk_prob=bool(get("norm_topk_prob", False)), n_group=int(get("n_group", 1)),
            topk_group=int(get("topk_group", 1)), routed_scaling_factor=float(get("routed_scaling_factor", 1.0)),
        )

    def preset_config(self, preset: str, d_vocab: int, overrides: dict | None = None) -> "DecoderConfig":
        """Return the ``DecoderConfig`` of a new ``preset``-shaped model of this family with ``d_vocab``
        tokens: the preset's shape (``overrides`` replace any of its fields, rope_theta included) and
        the family's defaults for rope theta, norm eps and q/k/v bias."""
        from mdlm_interp.models.transformer import DecoderConfig

        if preset not in SHAPE_PRESETS:
            raise UsageError(f"unknown preset '{preset}' (choose from {', '.join(SHAPE_PRESETS)})")
        shape = {**SHAPE_PRESETS[preset], **self.fixed_fields, **self.preset_fields, **(overrides or {})}
        shape.setdefault("rope_theta", self.default_rope_theta)
        shape.setdefault("d_head", shape["d_model"] // shape["n_heads"])
        n_dense, n_shared = shape.pop("n_dense_layers", 0), shape.pop("n_shared_experts", 0)
        if shape.get("n_experts"):
            shape.setdefault("d_expert", shape["d_mlp"] // 4)
            shape.setdefault("d_shared", n_shared * shape["d_expert"])
            shape.setdefault("moe_layers", tuple(range(n_dense, shape["n_layers"])))
        return DecoderConfig(
            d_vocab=d_vocab, norm_eps=self.default_norm_eps, qkv_bias=bool(self.qkv_bias), causal=self.causal,
            rope_in_float32=self.rope_in_float32, **shape,
        )

    def checkpoint_name(self, our_name: str) -> str:
        """Map one of our parameter names (e.g. ``blocks.3.attn.q_proj.bias``) to the checkpoint's.

        ``param_names`` maps module templates ({i}: the layer, {e}: the expert), or a whole parameter
        name where a family keeps one parameter elsewhere. Several of our modules may map to one
        checkpoint module: its tensor is theirs concatenated along dim 0 (LLaDA2's query_key_value)."""
        layer = re.match(r"blocks\.(\d+)\.", our_name)
        expert = re.search(r"\.experts\.(\d+)\.", our_name)
        template = re.sub(r"^blocks\.\d+\.", "blocks.{i}.", our_name)
        template = re.sub(r"\.experts\.\d+\.", ".experts.{e}.", template)
        numbers = dict(i=layer.group(1) if layer else "", e=expert.group(1) if expert else "")
        if template in self.param_names:
            return self.param_names[template].format(**numbers)
        module, _, kind = template.rpartition(".")
        return self.param_names[module].format(**numbers) + "." + kind


# config.json keys that are about routing tokens to experts: a family refuses those it does not know.
ROUTING_KEY = re.compile(r"expert|moe|rout|topk|n_group|score_func")


def check_rotary_and_routing(fields: dict) -> None:
    """Raise a one-line ``UsageError`` unless the rotary fraction and the routing numbers of the
    ``DecoderConfig`` fields ``fields`` make sense (a rotated width that is even and at most d_head;
    k experts out of n, groups that divide the experts and leave k to choose from)."""
    rotary_dim = int(fields["d_head"] * fields["partial_rotary_factor"])
    if not 0 < fields["partial_rotary_factor"] <= 1 or rotary_dim < 2 or rotary_dim % 2:
        raise UsageError(f"config.json: partial_rotary_factor {fields['partial_rotary_factor']} of head dim "
                         f"{fields['d_head']} does not give an even number of rotated dimensions")
    n_experts = fields.get("n_experts", 0)
    if not n_experts:
        return
    k, groups, top_groups = fields["n_experts_per_tok"], fields["n_group"], fields["topk_group"]
    problems = []
    if not 1 <= k <= n_experts:
        problems.append(f"num_experts_per_tok {k} of {n_experts} experts")
    if fields["d_expert"] < 1 or fields["d_shared"] < 0:
        problems.append(f"expert width {fields['d_expert']}, shared width {fields['d_shared']}")
    if groups < 1 or n_experts % groups or not 1 <= top_groups <= groups:
        problems.append(f"{n_experts} experts in {groups} groups, {top_groups} of them chosen")
    elif top_groups * (n_experts // groups) < k:
        problems.append(f"{top_groups} groups of {n_experts // groups} experts hold fewer than {k}")
    if not 0 < fields["routed_scaling_factor"] < math.inf:
        problems.append(f"routed_scaling_factor {fields['routed_scaling_factor']}")
    if any(not 0 <= layer < fields["n_layers"] for layer in fields["moe_layers"]):
        problems.append("MoE layers outside the model")
    if problems:
        raise UsageError(f"config.json: routing that cannot work: {'; '.join(problems)}")


HF_CONFIG_KEYS = {
    "d_model": ("hidden_size",),
    "n_layers": ("num_hidden_layers",),
    "n_heads": ("num_attention_heads",),
    "n_kv_heads": ("num_key_value_heads",),
    "d_head": ("head_dim",),
    "d_mlp": ("intermediate_size",),
    "d_vocab": ("vocab_size",),
    "max_seq_len": ("max_position_embeddings",),
    "rope_theta": ("rope_theta",),
    "norm_eps": ("rms_norm_eps",),
    "qkv_bias": ("attention_bias",),
    "tie_embeddings": ("tie_word_embeddings",),
}

HF_PARAM_NAMES = {
    "embed": "model.embed_tokens",
    "blocks.{i}.ln1": "model.layers.{i}.input_layernorm",
    "blocks.{i}.attn.q_proj": "model.layers.{i}.self_attn.q_proj",
    "blocks.{i}.attn.k_proj": "model.layers.{i}.self_attn.k_proj",
    "blocks.{i}.attn.v_proj": "model.layers.{i}.self_attn.v_proj",
    "blocks.{i}.attn.o_proj": "model.layers.{i}.self_attn.o_proj",
    "blocks.{i}.ln2": "model.layers.{i}.post_attention_layernorm",
    "blocks.{i}.mlp.gate_proj": "model.layers.{i}.mlp.gate_proj",
    "blocks.{i}.mlp.up_proj": "model.layers.{i}.mlp.up_proj",
    "blocks.{i}.mlp.down_proj": "model.layers.{i}.mlp.down_proj",
    "ln_final": "model.norm",
    "unembed": "lm_head",
}

LLADA_PARAM_NAMES = {
    "embed": "model.transformer.wte",
    "blocks.{i}.ln1": "model.transformer.blocks.{i}.attn_norm",
    "blocks.{i}.attn.q_proj": "model.transformer.blocks.{i}.q_proj",
    "blocks.{i}.attn.k_proj": "model.transformer.blocks.{i}.k_proj",
    "blocks.{i}.attn.v_proj": "model.transformer.blocks.{i}.v_proj",
    "blocks.{i}.attn.o_proj": "model.transformer.blocks.{i}.attn_out",
    "blocks.{i}.ln2": "model.transformer.blocks.{i}.ff_norm",
    "blocks.{i}.mlp.gate_proj": "model.transformer.blocks.{i}.ff_proj",
    "blocks.{i}.mlp.up_proj": "model.transformer.blocks.{i}.up_proj",
    "blocks.{i}.mlp.down_proj": "model.transformer.blocks.{i}.ff_out",
    "ln_final": "model.transformer.ln_f",
    "unembed": "model.transformer.ff_out",
}

HF_EXTRA_CONFIG = {"hidden_act": "silu", "use_sliding_window": False, "attention_dropout": 0.0}

LLAMA3_CHAT = (
    "{bos}<|start_header_id|>user<|end_header_id|>\n\n{{content}}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
QWEN_CHAT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"
)

LLADA = FamilySpec(
    family="llada",
    model_types=("llada",),
    architecture="LLaDAModelLM",
    causal=False,
    prediction_offset=0,
    config_keys={
        "d_model": ("d_model",),
        "n_layers": ("n_layers",),
        "n_heads": ("n_heads",),
        "n_kv_heads": ("n_kv_heads",),
        "d_mlp": ("mlp_hidden_size",),
        "d_vocab": ("embedding_size", "vocab_size"),
        "max_seq_len": ("max_sequence_length",),
        "rope_theta": ("rope_theta",),
        "norm_eps": ("rms_norm_eps",),
        "qkv_bias": ("include_qkv_bias",),
        "tie_embeddings": ("weight_tying",),
    },
    param_names=LLADA_PARAM_NAMES,
    special_tokens={
        "bos": "<|startoftext|>",
        "eos": "<|endoftext|>",
        "pad": "<|endoftext|>",
        "mask": "<|mdm_mask|>",
        "start_header": "<|start_header_id|>",
        "end_header": "<|end_header_id|>",
        "eot": "<|eot_id|>",
    },
    special_id_keys={"mask": "mask_token_id", "eos": "eos_token_id", "pad": "pad_token_id"},
    chat_template=LLAMA3_CHAT.format(bos="<|startoftext|>"),
    rope_in_float32=True,
    default_rope_theta=500000.0,
    default_norm_eps=1e-5,
    tokenizer_format="tokenizer.json",
    mlp_ratio_key="mlp_ratio",
    sampler="llada",
    extra_config={"mlp_ratio": 4, "attention_dropout": 0.0, "residual_dropout": 0.0, "embedding_dropout": 0.0},
    fixed_config={
        "rope": True,
        "activation_type": "silu",
        "block_type": "llama",
        "layer_norm_type": "rms",
        "include_bias": False,
        "scale_logits": False,
        "input_emb_norm": False,
        "attention_layer_norm": False,
        "block_group_size": 1,
    },
)

DREAM = FamilySpec(
    family="dream",
    model_types=("Dream",),
    architecture="DreamModel",
    causal=False,
    prediction_offset=-1,
    config_keys=HF_CONFIG_KEYS,
    param_names=HF_PARAM_NAMES,
    special_tokens={
        "bos": "<|endoftext|>",
        "eos": "<|endoftext|>",
        "pad": "<|endoftext|>",
        "mask": "<|mask|>",
        "im_start": "<|im_start|>",
        "im_end": "<|im_end|>",
    },
    special_id_keys={
        "mask": "mask_token_id",
        "bos": "bos_token_id",
        "eos": "eos_token_id",
        "pad": "pad_token_id",
    },
    chat_template=QWEN_CHAT,
    rope_in_float32=False,
    default_rope_theta=1000000.0,
    default_norm_eps=1e-6,
    tokenizer_format="vocab.json+merges.txt",
    extra_config=HF_EXTRA_CONFIG,
    qkv_bias=True,
    sampler="dream",
    # Dream-Coder-v0-*-7B name <|beginoftext|> (151665) as bos_token_id; Dream-v0 and DiffuCoder name <|endoftext|>
    alternative_tokens={"bos": ("<|beginoftext|>",)},
)

def causal_twin(spec: FamilySpec, **changes) -> FamilySpec:
    """Return the autoregressive twin of the diffusion family ``spec``: the same architecture read causally
    (prediction offset -1, no mask token, no iterative sampler), with ``changes`` (its names and tokens)."""
    return replace(spec, causal=True, prediction_offset=-1, sampler=None, **changes)


# Qwen2 is Dream's architecture without the mask, and a causal Qwen2 tokenizer without BOS or padding.
QWEN2 = causal_twin(
    DREAM,
    family="qwen2",
    model_types=("qwen2",),
    architecture="Qwen2ForCausalLM",
    special_tokens={"eos": "<|endoftext|>", "im_start": "<|im_start|>", "im_end": "<|im_end|>"},
    special_id_keys={"eos": "eos_token_id"},
    alternative_tokens={},
)

# Llama: the Hugging Face layout of Qwen2 with Llama 3's tokens, RoPE base and norm epsilon, no q/k/v bias
# (attention_bias, when set, biases q/k/v and the output projection, as in Hugging Face LlamaAttention).
LLAMA = replace(
    QWEN2,
    family="llama",
    model_types=("llama",),
    architecture="LlamaForCausalLM",
    config_keys={**HF_CONFIG_KEYS, "o_bias": ("attention_bias",)},
    special_tokens={
        "bos": "<|begin_of_text|>",
        "eos": "<|end_of_text|>",
        "start_header": "<|start_header_id|>",
        "end_header": "<|end_header_id|>",
        "eot": "<|eot_id|>",
    },
    special_id_keys={"bos": "bos_token_id", "eos": "eos_token_id"},
    chat_template=LLAMA3_CHAT.format(bos="<|begin_of_text|>"),
    default_rope_theta=500000.0,
    default_norm_eps=1e-5,
    tokenizer_format="tokenizer.json",
    qkv_bias=None,
)

QK_NORM_PARAM_NAMES = {
    "blocks.{i}.attn.q_norm": "model.layers.{i}.self_attn.q_norm",
    "blocks.{i}.attn.k_norm": "model.layers.{i}.self_attn.k_norm",
}

# Qwen3: Qwen2's layout with RMSNorm on each query and key head, head_dim from config.json, and
# attention_bias on q/k/v and the output projection (Hugging Face Qwen3Attention).
QWEN3 = replace(
    QWEN2,
    family="qwen3",
    model_types=("qwen3",),
    architecture="Qwen3ForCausalLM",
    config_keys={**HF_CONFIG_KEYS, "o_bias": ("attention_bias",)},
    param_names={**HF_PARAM_NAMES, **QK_NORM_PARAM_NAMES},
    chat_template="<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n",
    special_id_keys={},  # eos_token_id is <|endoftext|> in base models and <|im_end|> in post-trained ones
    qkv_bias=None,
    fixed_fields={"qk_norm": True},
)


def a2d(spec: FamilySpec, model_type: str, architecture: str) -> FamilySpec:
    """Return the A2D conversion of the causal family ``spec`` (ZHZisZZ/dllm, pipelines/a2d): the same
    weights and config read bidirectionally (a 2-D padding mask only), trained as a masked diffusion
    model with ``<|mask|>`` added to the tokenizer and EOS as padding (dllm's tokenizer setup); logits are
    not shifted (the MDLM sampler's ``right_shift_logits`` is off) and it decodes with the LLaDA-style
    low-confidence sampler."""
    tokens = {**spec.special_tokens, "pad": spec.special_tokens["eos"], "mask": "<|mask|>"}
    return replace(spec, family=model_type, model_types=(model_type,), architecture=architecture, causal=False,
                   prediction_offset=0, sampler="llada", special_tokens=tokens)


A2D_QWEN3 = a2d(QWEN3, "a2d-qwen3", "A2DQwen3LMHeadModel")
A2D_QWEN2 = a2d(QWEN2, "a2d-qwen2", "A2DQwen2LMHeadModel")
A2D_LLAMA = a2d(LLAMA, "a2d-llama", "A2DLlamaLMHeadModel")

# Ling-style tokens of the inclusionAI MoE models (LLaDA-MoE, LLaDA2): dllm adds <|mask|> as the mask
# and ends a turn with <|role_end|>.
LING_TOKENS = {"eos": "<|endoftext|>", "pad": "<|endoftext|>", "mask": "<|mask|>", "role_end": "<|role_end|>"}
LING_CHAT = "<role>HUMAN</role>{content}<|role_end|><role>ASSISTANT</role>"

EXPERT_PARAM_NAMES = {
    "blocks.{i}.mlp.gate": "model.layers.{i}.mlp.gate",
    "blocks.{i}.mlp.experts.{e}.gate_proj": "model.layers.{i}.mlp.experts.{e}.gate_proj",
    "blocks.{i}.mlp.experts.{e}.up_proj": "model.layers.{i}.mlp.experts.{e}.up_proj",
    "blocks.{i}.mlp.experts.{e}.down_proj": "model.layers.{i}.mlp.experts.{e}.down_proj",
}

# LLaDA-MoE (inclusionAI/LLaDA-MoE-7B-A1B-*; dllm pipelines/llada/models/modeling_lladamoe.py): Hugging
# Face names, QK norm, softmax top-k routing (the official block fixes norm_topk_prob to False and
# ignores routed_scaling_factor and the router groups), an optional expert bias added to the softmax
# scores (and so to the weights), an optional shared expert beside the MoE block, dense layers where
# moe_layer_freq is 0.
LLADA_MOE = FamilySpec(
    family="lladamoe",
    model_types=("lladamoe",),
    architecture="LLaDAMoEModelLM",
    causal=False,
    prediction_offset=0,
    config_keys={
        **{name: keys for name, keys in HF_CONFIG_KEYS.items() if name not in ("d_head", "d_mlp")},
        "d_head": (),  # hidden_size // num_attention_heads
        "d_mlp": ("dense_intermediate_size",),
        "o_bias": ("attention_bias",),
        "qk_norm": ("qk_layernorm",),
        "partial_rotary_factor": ("partial_rotary_factor",),
        "n_experts": ("num_experts",),
        "n_experts_per_tok": ("num_experts_per_tok",),
        "d_expert": ("expert_intermediate_size",),
        "d_shared": ("shared_expert_intermediate_size",),
        "router_bias": ("moe_router_enable_expert_bias",),
    },
    param_names={
        **HF_PARAM_NAMES, **QK_NORM_PARAM_NAMES, **EXPERT_PARAM_NAMES,
        "blocks.{i}.mlp.gate.expert_bias": "model.layers.{i}.mlp.expert_bias",
        "blocks.{i}.mlp.shared_expert.gate_proj": "model.layers.{i}.shared_expert.gate_proj",
        "blocks.{i}.mlp.shared_expert.up_proj": "model.layers.{i}.shared_expert.up_proj",
        "blocks.{i}.mlp.shared_expert.down_proj": "model.layers.{i}.shared_expert.down_proj",
    },
    special_tokens=LING_TOKENS,
    special_id_keys={"pad": "pad_token_id"},
    chat_template=LING_CHAT,
    rope_in_float32=False,
    default_rope_theta=50000.0,
    default_norm_eps=1e-5,
    tokenizer_format="tokenizer.json",
    sampler="llada",
    fixed_config={"hidden_act": "silu", "moe_router_score_function": "softmax", "clip_qkv": None},
    extra_config={"hidden_act": "silu", "moe_router_score_function": "softmax", "attention_dropout": 0.0,
                  "norm_topk_prob": False, "routed_scaling_factor": 1, "output_router_logits": False},
    moe_layers_key="moe_layer_freq",
    routing_keys=("norm_topk_prob", "routed_scaling_factor", "router_num_group", "router_topk_group",
                  "output_router_logits", "router_aux_loss_coef"),
    fixed_fields={"router": "softmax", "norm_topk_prob": False},
    preset_fields={"qk_norm": True, "n_experts": 4, "n_experts_per_tok": 2},
)

# LLaDA2.0 / LLaDA2.1 (inclusionAI/LLaDA2.0-mini, -flash, LLaDA2.1-mini; dllm pipelines/llada2 and
# llada21): Ling 2.0 (BailingMoeV2) names, a fused query_key_value projection ([q; k; v] rows), a
# biased-or-not output projection "dense", QK norm, partial RoPE, sigmoid group-limited routing
# with an expert bias, routed scaling, shared experts in the MoE block, the first
# first_k_dense_replace layers dense; generation by block diffusion.
LLADA2 = FamilySpec(
    family="llada2",
    model_types=("llada2_moe", "llada21_moe"),
    architecture="LLaDA2MoeModelLM",
    causal=False,
    prediction_offset=0,
    config_keys={
        **HF_CONFIG_KEYS,
        "qkv_bias": ("use_qkv_bias",),
        "o_bias": ("use_bias",),
        "qk_norm": ("use_qk_norm",),
        "partial_rotary_factor": ("partial_rotary_factor",),
        "n_experts": ("num_experts",),
        "n_experts_per_tok": ("num_experts_per_tok",),
        "d_expert": ("moe_intermediate_size",),
        "n_shared_experts": ("num_shared_experts",),
        "n_dense_layers": ("first_k_dense_replace",),
        "n_group": ("n_group",),
        "topk_group": ("topk_group",),
        "routed_scaling_factor": ("routed_scaling_factor",),
    },
    # LLaDA2MoeConfig's defaults, used where config.json leaves a field out
    config_defaults={"use_qkv_bias": False, "use_bias": True, "use_qk_norm": True, "partial_rotary_factor": 0.5,
                     "num_experts": 16, "num_shared_experts": 0, "num_experts_per_tok": 2, "n_group": 8,
                     "topk_group": 4, "routed_scaling_factor": 2.5, "first_k_dense_replace": 0,
                     "max_position_embeddings": 16384, "rope_theta": 10000.0, "rms_norm_eps": 1e-5},
    param_names={
        **HF_PARAM_NAMES, **EXPERT_PARAM_NAMES,
        "embed": "model.word_embeddings",
        "blocks.{i}.attn.q_proj": "model.layers.{i}.attention.query_key_value",
        "blocks.{i}.attn.k_proj": "model.layers.{i}.attention.query_key_value",
        "blocks.{i}.attn.v_proj": "model.layers.{i}.attention.query_key_value",
        "blocks.{i}.attn.o_proj": "model.layers.{i}.attention.dense",
        "blocks.{i}.attn.q_norm": "model.layers.{i}.attention.query_layernorm",
        "blocks.{i}.attn.k_norm": "model.layers.{i}.attention.key_layernorm",
        "blocks.{i}.mlp.shared_expert.gate_proj": "model.layers.{i}.mlp.shared_experts.gate_proj",
        "blocks.{i}.mlp.shared_expert.up_proj": "model.layers.{i}.mlp.shared_experts.up_proj",
        "blocks.{i}.mlp.shared_expert.down_proj": "model.layers.{i}.mlp.shared_experts.down_proj",
    },
    special_tokens=LING_TOKENS,
    special_id_keys={"pad": "pad_token_id"},
    chat_template=LING_CHAT,
    rope_in_float32=False,
    default_rope_theta=600000.0,
    default_norm_eps=1e-6,
    tokenizer_format="tokenizer.json",
    sampler="llada2_block",
    block_length=32,
    fixed_config={"hidden_act": "silu", "score_function": "sigmoid", "router_dtype": "fp32"},
    extra_config={"hidden_act": "silu", "score_function": "sigmoid", "moe_router_enable_expert_bias": True,
                  "norm_topk_prob": True, "router_dtype": "fp32", "norm_head": False, "output_router_logits": False},
    moe_layers_key="first_k_dense_replace",
    # (Ling 2.0's moe_shared_expert_intermediate_size is ignored by the official code, which sizes the
    # shared experts as moe_intermediate_size x num_shared_experts)
    routing_keys=("norm_topk_prob", "moe_router_enable_expert_bias", "output_router_logits", "router_aux_loss_coef",
                  "moe_shared_expert_intermediate_size"),
    fixed_fields={"router": "sigmoid_grouped", "router_bias": True},
    zero_is_default=("n_kv_heads",),  # LLaDA2.1's configuration class: num_key_value_heads 0 = one per query head
    preset_fields={"qk_norm": True, "partial_rotary_factor": 0.5, "n_experts": 8, "n_experts_per_tok": 2,
                   "n_group": 4, "topk_group": 2, "routed_scaling_factor": 2.5, "n_shared_experts": 1,
                   "n_dense_layers": 1},
)

FAMILIES: dict[str, FamilySpec] = {
    spec.family: spec
    for spec in (LLADA, DREAM, LLAMA, QWEN2, QWEN3, LLADA_MOE, LLADA2, A2D_QWEN3, A2D_QWEN2, A2D_LLAMA)
}


def family_for_config(config: dict) -> FamilySpec:
    """Return the family spec whose ``model_type`` matches a checkpoint's config.json."""
    model_type = str(config.get("model_type", "")).lower()
    for spec in FAMILIES.values():
        if model_type in (t.lower() for t in spec.model_types):
            return spec
    raise UsageError(
        f"config.json has model_type {config.get('model_type')!r}; supported: "
        + ", ".join(t for spec in FAMILIES.values() for t in spec.model_types)
    )
