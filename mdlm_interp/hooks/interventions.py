"""Interventions: TransformerLens hook functions that change activations (patching and ablation).

Each function here returns a hook ``fn(activation, hook) -> activation`` to attach with
``run_with_hooks(fwd_hooks=[(name, fn)])`` or ``with model.hooks(fwd_hooks=...)``:

- ``patch_positions(source, where)``: activation patching, for any hook whose activation has
  positions on its second axis (``hook_resid_pre``, ``hook_attn_out``, ``hook_mlp_out``,
  ``attn.hook_z`` ...). Several patched variants ride in one forward pass: the hooked batch holds
  V variants of the same B rows, variant-major ([V * B, pos, ...]), and variant v replaces the
  entries ``where[v]`` marks by the donor's.
- ``remove_attention_to_keys(heads, keys)``: for ``attn.hook_attn_scores``; the chosen heads stop
  attending to the marked keys (e.g. the masks after the answer slot) from every query, and each
  query's attention is renormalised over the keys that remain.
- ``replace_head_output(heads, value)``: for ``attn.hook_z``; the chosen heads' outputs become a
  fixed vector at every position (zeros: zero-ablation; their mean: mean-ablation).

Hooking ``hook_attn_scores`` makes that layer take the explicit attention path (same numbers as the
fused kernel); the other interventions keep the fused kernel.
"""

import torch


def patch_positions(source: torch.Tensor, where: torch.Tensor):
    """Return a hook that replaces activation entries by the donor's where ``where`` is True.

    ``source`` [batch, pos, ...]: the donor activation, already aligned to the receiver's positions.
    ``where`` bool [variants, batch, pos] (one position set per variant, e.g. a position group) or
    [variants, batch, pos, head] (per head, for ``attn.hook_z``); it broadcasts over the remaining
    trailing axes. The hooked activation is [variants * batch, pos, ...], variant-major; the hook
    returns the same shape.
    """

    def hook(activation: torch.Tensor, hook=None) -> torch.Tensor:
        variants = activation.unflatten(0, (where.shape[0], -1))
        selected = where.reshape(where.shape + (1,) * (variants.dim() - where.dim()))
        return torch.where(selected, source.to(variants.dtype), variants).flatten(0, 1)

    return hook


def remove_attention_to_keys(heads, keys: torch.Tensor, queries: torch.Tensor | None = None):
    """Return a hook for ``blocks.{l}.attn.hook_attn_scores`` [batch, head, query, key].

    In the heads listed in ``heads`` (head indices of that layer), the score of every query (or only of
    the queries marked in ``queries`` bool [batch, query]) for the keys marked in ``keys`` bool
    [batch, key] becomes -inf, so the softmax gives those keys zero weight and renormalises over the
    remaining keys: the new weight of a remaining key k is p_k / sum over remaining keys of p. Other
    heads and queries are untouched.
    """
    heads = sorted(set(int(h) for h in heads))

    def hook(scores: torch.Tensor, hook=None) -> torch.Tensor:
        chosen = torch.zeros(scores.shape[1], dtype=torch.bool, device=scores.device)
        chosen[heads] = True
        dropped = chosen[None, :, None, None] & keys.to(scores.device)[:, None, None, :]
        if queries is not None:
            dropped = dropped & queries.to(scores.device)[:, None, :, None]
        return scores.masked_fill(dropped, float("-inf"))

    return hook


def replace_head_output(heads, value: torch.Tensor):
    """Return a hook for ``blocks.{l}.attn.hook_z`` [batch, pos, head, d_head].

    The heads listed in ``heads`` get ``value`` [len(heads), d_head] at every position: zeros for
    zero-ablation, the head's mean output for mean-ablation. Other heads are untouched.
    """
    heads = [int(h) for h in heads]

    def hook(z: torch.Tensor, hook=None) -> torch.Tensor:
        z = z.clone()
        z[:, :, heads] = value.to(device=z.device, dtype=z.dtype)
        return z

    return hook
