"""Hook names in TransformerLens' vocabulary: the one place a hook name is assembled.

``hook_name("z", 3)`` is ``"blocks.3.attn.hook_z"``, as ``transformer_lens.utils.get_act_name`` names
it; the short aliases TransformerLens accepts ("scores", "attn", "result", "normalized") work too.
"""

from mdlm_interp.errors import UsageError

# kind -> (module path inside a block, or None for a model-level hook; the hook's attribute name)
_BLOCK_HOOKS = {
    "resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out",
    "q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v", "z": "attn.hook_z",
    "rot_q": "attn.hook_rot_q", "rot_k": "attn.hook_rot_k", "attn_scores": "attn.hook_attn_scores",
    "pattern": "attn.hook_pattern", "result": "attn.hook_result", "probe_mass": "attn.hook_probe_mass",
    "pre": "mlp.hook_pre", "pre_linear": "mlp.hook_pre_linear", "post": "mlp.hook_post",
    # mixture-of-experts layers only (models.moe)
    "router_logits": "mlp.hook_router_logits", "topk_indices": "mlp.hook_topk_indices",
    "topk_weights": "mlp.hook_topk_weights", "expert_out": "mlp.hook_expert_out", "shared_out": "mlp.hook_shared_out",
    "scale_attn": "ln1.hook_scale", "normalized_attn": "ln1.hook_normalized",
    "scale_mlp": "ln2.hook_scale", "normalized_mlp": "ln2.hook_normalized",
}
MOE_HOOK_KINDS = ("router_logits", "topk_indices", "topk_weights", "expert_out", "shared_out")
_MODEL_HOOKS = {"embed": "hook_embed", "scale": "ln_final.hook_scale", "normalized": "ln_final.hook_normalized"}
_ALIASES = {"scores": "attn_scores", "attn": "pattern", "ln_final": "normalized", "final_normalized": "normalized"}

HOOK_KINDS = tuple(sorted(set(_BLOCK_HOOKS) | set(_MODEL_HOOKS) | set(_ALIASES)))


def hook_name(kind: str, layer: int | None = None) -> str:
    """Return the full hook name of ``kind`` at block ``layer`` ("z", 3 -> "blocks.3.attn.hook_z").

    Model-level kinds ("embed", "scale", "normalized") take no layer. An unknown kind, a block kind
    without a layer or a model kind with one is a one-line ``UsageError``.
    """
    kind = _ALIASES.get(kind, kind)
    if kind in _MODEL_HOOKS:
        if layer is not None:
            raise UsageError(f"hook kind {kind!r} is not inside a block: give no layer")
        return _MODEL_HOOKS[kind]
    if kind not in _BLOCK_HOOKS:
        raise UsageError(f"unknown hook kind {kind!r}; known: {', '.join(HOOK_KINDS)}")
    if layer is None:
        raise UsageError(f"hook kind {kind!r} needs a layer")
    return f"blocks.{int(layer)}.{_BLOCK_HOOKS[kind]}"
