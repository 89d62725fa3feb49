"""The four model families as data: LLaDA, Dream and their autoregressive twins Llama and Qwen2.

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

    @property
    def mask_token(self) -> str | None:
        """The mask token's string, or None for causal families."""
        return self.special_tokens.get("mask")

    def decoder_config(self, config: dict) -> "DecoderConfig":
        """Return the ``DecoderConfig`` described by a checkpoint's config.json ``config``."""
        for key, required in self.fixed_config.items():
            if key in config and config[key] != required:
                raise UsageError(
                    f"config.json has {key}={config[key]!r}; {self.family} checkpoints need {required!r}"
                )

        def get(name, default=None):
            for key in self.config_keys.get(name, ()):
                if config.get(key) is not None:
                    return config[key]
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
        from mdlm_interp.models.transformer import DecoderConfig

        return DecoderConfig(**fields)

    def _decoder_fields(self, config: dict, get) -> dict:
        """Return the ``DecoderConfig`` fields that config.json gives (unchecked)."""
        d_model, n_heads = int(get("d_model")), int(get("n_heads"))
        d_mlp = next((config[k] for k in self.config_keys["d_mlp"] if config.get(k) is not None), None)
        if d_mlp is None and self.mlp_ratio_key is not None:
            d_mlp = int(config.get(self.mlp_ratio_key, 4)) * d_model
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise UsageError(f"config.json asks for rope scaling '{rope_type}', which is not supported")
        qkv_bias = self.qkv_bias if self.qkv_bias is not None else bool(get("qkv_bias", False))
        return dict(
            d_model=d_model,
            n_layers=int(get("n_layers")),
            n_heads=n_heads,
            n_kv_heads=int(get("n_kv_heads", n_heads)),
            d_head=int(get("d_head", d_model // n_heads if n_heads > 0 else 0)),
            d_mlp=int(d_mlp if d_mlp is not None else get("d_mlp")),
            d_vocab=int(get("d_vocab")),
            max_seq_len=int(get("max_seq_len")),
            rope_theta=float(config.get("rope_theta") or rope.get("rope_theta") or get("rope_theta")),
            norm_eps=float(get("norm_eps")),
            qkv_bias=qkv_bias,
            causal=self.causal,
            tie_embeddings=bool(get("tie_embeddings", False)),
            rope_in_float32=self.rope_in_float32,
        )

    def preset_config(self, preset: str, d_vocab: int, overrides: dict | None = None) -> "DecoderConfig":
        """Return the ``DecoderConfig`` of a new ``preset``-shaped model of this family with ``d_vocab``
        tokens: the preset's shape (``overrides`` replace any of its fields, rope_theta included) and
        the family's defaults for rope theta, norm eps and q/k/v bias."""
        from mdlm_interp.models.transformer import DecoderConfig

        if preset not in SHAPE_PRESETS:
            raise UsageError(f"unknown preset '{preset}' (choose from {', '.join(SHAPE_PRESETS)})")
        shape = dict(SHAPE_PRESETS[preset], **(overrides or {}))
        shape.setdefault("rope_theta", self.default_rope_theta)
        return DecoderConfig(
            d_head=shape["d_model"] // shape["n_heads"], d_vocab=d_vocab, norm_eps=self.default_norm_eps,
            qkv_bias=bool(self.qkv_bias), causal=self.causal, rope_in_float32=self.rope_in_float32, **shape,
        )

    def checkpoint_name(self, our_name: str) -> str:
        """Map one of our parameter names (e.g. ``blocks.3.attn.q_proj.bias``) to the checkpoint's."""
        module, _, kind = our_name.rpartition(".")
        match = re.match(r"blocks\.(\d+)\.(.*)", module)
        template = f"blocks.{{i}}.{match.group(2)}" if match else module
        return self.param_names[template].format(i=match.group(1) if match else "") + "." + kind


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
)

# Llama: the Hugging Face layout of Qwen2 with Llama 3's tokens, RoPE base and norm epsilon, no q/k/v bias.
LLAMA = replace(
    QWEN2,
    family="llama",
    model_types=("llama",),
    architecture="LlamaForCausalLM",
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

FAMILIES: dict[str, FamilySpec] = {spec.family: spec for spec in (LLADA, DREAM, LLAMA, QWEN2)}


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
