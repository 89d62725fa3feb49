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
from dataclasses import replace

import torch
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from mdlm_interp.errors import UsageError
from mdlm_interp.models.attention import Attention, block_causal, future_keys, has_hooks  # noqa: F401 (re-exported)
from mdlm_interp.models.block import MLP, Block
from mdlm_interp.models.config import RUNTIME_SETTINGS, DecoderConfig  # noqa: F401 (re-exported)
from mdlm_interp.models.norm import RMSNorm
from mdlm_interp.models.rotary import apply_rotary, rotary_tables  # noqa: F401 (re-exported)

MIN_UNEMBED_ROWS = 16  # see HookedDecoder.kept_logits

__all__ = ["Attention", "Block", "DecoderConfig", "HookedDecoder", "MLP", "RMSNorm", "RUNTIME_SETTINGS",
           "apply_rotary", "future_keys", "has_hooks", "rotary_tables"]


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
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.n_layers))
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
        padding gives the same positions as an unpadded run). Under block attention
        (``cfg.block_length``) a query sees only keys whose block (position id // block length) is
        not after its own. Padded query rows may see every key,
        which keeps them finite; their outputs are meaningless and should be ignored.
        """
        if attention_mask is None and not self.cfg.block_length:
            return None, torch.arange(n, device=device).expand(batch, n)
        valid = (torch.ones(batch, n, dtype=torch.bool, device=device) if attention_mask is None
                 else attention_mask.to(device=device, dtype=torch.bool))
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
        allowed = valid[:, None, None, :].expand(batch, 1, n, n)
        if self.cfg.causal:
            allowed = allowed & ~future_keys(n, device)
        if self.cfg.block_length:
            allowed = allowed & block_causal(positions, self.cfg.block_length)
        allowed = allowed | ~valid[:, None, :, None]
        return allowed, positions

    def forward(
        self,
        input: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        attention_probes: torch.Tensor | None = None,
        *,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
        logit_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return raw logits [batch, pos, vocab] for ``input`` (token ids [batch, pos]).

        ``logit_positions`` [batch, k] (logit indices of each row): only those positions go through
        ``ln_final`` and the unembedding, and the result is [batch, k, vocab] (as transformers'
        ``logits_to_keep``; read it with ``models.readout``: ``logit_request``, ``received``).

        ``attention_mask`` [batch, pos] marks valid tokens with 1 and padding with 0.
        ``attention_probes`` [batch, pos, probe]: key weights whose attention-weighted sums are
        exposed at every ``blocks.{l}.attn.hook_probe_mass`` (see the module docstring).

        Partial passes, as in TransformerLens: with ``stop_at_layer=L`` the pass stops before block L
        and returns the residual stream entering it [batch, pos, d_model] (``L = n_layers``: the final
        residual, before ``ln_final``; negative L counts from the end). With ``start_at_layer=L``,
        ``input`` is that residual stream [batch, pos, d_model] and the pass runs blocks L onwards
        (then ``ln_final`` and the unembedding, unless ``stop_at_layer`` stops it earlier); give it the
        ``attention_mask`` of the original ids so that padding and positions are the same. Hooks fire
        as usual in the part that runs (``hook_embed`` only when the pass starts at the ids).
        """
        if input.dim() == 3 and start_at_layer is None:
            raise UsageError("the model got a residual stream [batch, pos, d_model]: pass start_at_layer=L with it")
        batch, n = input.shape[:2]
        allowed, positions = self.attention_mask_and_positions(attention_mask, batch, n, input.device)
        cos, sin = rotary_tables(positions, self.cfg.rotary_dim, self.cfg.rope_theta)
        x = self.hook_embed(self.embed(input)) if start_at_layer is None else input
        for block in self.blocks[start_at_layer:stop_at_layer]:
            x = block(x, cos, sin, allowed, attention_probes)
        if stop_at_layer is not None:
            return x
        if logit_positions is not None:
            if logit_positions.dim() != 2 or logit_positions.shape[0] != batch:
                raise UsageError(f"logit_positions must be [batch, k] with batch {batch}; got "
                                 f"{list(logit_positions.shape)}")
            return self.kept_logits(x[torch.arange(batch, device=x.device)[:, None], logit_positions.to(x.device)])
        return self.final_logits(x)

    def final_logits(self, final_residual: torch.Tensor) -> torch.Tensor:
        """Return the logits [..., vocab] of a final residual stream [..., d_model] (``ln_final``, then
        the unembedding): what ``forward`` does after the last block, for any selection of positions."""
        return self.unembed(self.ln_final(final_residual))

    def kept_logits(self, kept_residual: torch.Tensor) -> torch.Tensor:
        """Return the logits [batch, k, vocab] of the final residual at a few positions [batch, k, d_model].

        Matrix libraries multiply very few rows with other kernels (matrix-vector, or split sums) than a
        full forward pass's many, and round differently; the unembedding therefore takes at least
        ``MIN_UNEMBED_ROWS`` rows (zeros added, their logits dropped), which on the CPU gives the full
        pass's logits bit for bit in float32 and bfloat16."""
        normalized = self.ln_final(kept_residual).flatten(0, 1)
        short = MIN_UNEMBED_ROWS - normalized.shape[0]
        if short > 0:
            normalized = torch.cat([normalized, normalized.new_zeros(short, normalized.shape[1])])
        return self.unembed(normalized)[: kept_residual.shape[0] * kept_residual.shape[1]].unflatten(
            0, kept_residual.shape[:2])

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

    @contextmanager
    def block_attention(self, block_length: int | None):
        """Within the block, attention is block attention with blocks of ``block_length`` positions
        (bidirectional inside a block, causal across blocks: what LLaDA2's block sampler uses; None or
        0: the family's own attention). Blocks count from position id 0, so padding on either side
        leaves them where they are. Sets ``cfg.block_length`` and restores it on exit."""
        previous = self.cfg.block_length
        self.cfg.block_length = block_length or None
        try:
            yield self
        finally:
            self.cfg.block_length = previous

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
        """[d_model]: the sum of the attention-output biases written to the residual stream before block
        ``layer`` (and block ``layer``'s own with ``mlp_input``), as TransformerLens defines it; zeros for
        families without an output bias. No MLP here has a bias."""
        total = self.embed.weight.new_zeros(self.cfg.d_model)
        for block in self.blocks[: layer + 1 if mlp_input else layer]:
            if block.attn.o_proj.bias is not None:
                total = total + block.attn.o_proj.bias
        return total

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

    def to_tokens(self, input: str | list[str], prepend_bos: bool | None = None, padding_side: str | None = None,
                  move_to_device: bool = True, truncate: bool = True) -> torch.Tensor:
        """Return the token ids [batch, pos] of a string or a list of strings of equal token length.

        The text is tokenized as it is, with no special tokens except the family's BOS when
        ``prepend_bos`` (default ``default_prepend_bos``: True where the family's prompts start with
        BOS, LLaDA and Llama; False for Dream and Qwen2). ``truncate`` keeps the first ``cfg.n_ctx``
        tokens. Strings of different token lengths are refused (pad them yourself and pass an
        ``attention_mask`` to the model), so TransformerLens' ``padding_side`` ("left" or "right") is
        accepted and changes nothing.
        """
        tokenizer = self._require_tokenizer()
        if padding_side not in (None, "left", "right"):
            raise UsageError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
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
        """Decode token ids: [pos] (or a list of ids, or one id) -> str, [batch, pos] -> list of str."""
        tokenizer = self._require_tokenizer()
        tokens = torch.as_tensor(tokens)
        if tokens.dim() == 2:
            return [tokenizer.decode(row.tolist(), clean_up_tokenization_spaces=False) for row in tokens]
        return tokenizer.decode(tokens.reshape(-1).tolist(), clean_up_tokenization_spaces=False)

    def to_str_tokens(self, input, prepend_bos: bool | None = None, padding_side: str | None = None) -> list:
        """Return each token of ``input`` as a string, as TransformerLens does: a string (tokenized as
        ``to_tokens`` does, with ``prepend_bos`` and ``padding_side`` as there) or ids ([pos], or [1, pos])
        -> list of str; a list of strings -> one such list per string."""
        if isinstance(input, (list, tuple)) and input and all(isinstance(item, str) for item in input):
            return [self.to_str_tokens(item, prepend_bos=prepend_bos, padding_side=padding_side) for item in input]
        if isinstance(input, str):
            tokens = self.to_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side)[0]
        else:
            tokens = torch.as_tensor(input)
            if tokens.dim() == 2 and tokens.shape[0] != 1:
                raise UsageError(f"to_str_tokens takes one sequence of ids; got a batch of {tokens.shape[0]}")
        return [self.to_string(token.reshape(1)) for token in tokens.reshape(-1)]

    def to_single_token(self, string: str) -> int:
        """Return the id of ``string``, which must be exactly one token (no BOS added)."""
        tokens = self.to_tokens(string, prepend_bos=False)[0]
        if len(tokens) != 1:
            raise UsageError(f"{string!r} is {len(tokens)} tokens, not one")
        return int(tokens[0])
