"""Experts as units of interventions in mixture-of-experts models (``models.moe``).

- ``remove_experts(experts, where)``: ablation. At the positions ``where`` marks, the chosen experts of a
  layer contribute nothing: the top-k weight of every slot routed to one of them is set to 0 (the
  other chosen experts keep their weights, nothing is renormalised), the same as zeroing the
  expert's output there.
- ``patch_expert_contribution(experts, donor, where)``: patching. At the positions ``where`` marks, the
  chosen experts' contribution to the MoE output (sum over the top-k slots routed to them of weight *
  output) is replaced by the donor run's contribution of the same experts (zero where the donor did not
  route there); the other experts and the shared experts keep the receiver's.

Both return ``(hook name, fn)`` pairs (``hook_name`` kinds "topk_indices", "topk_weights",
"expert_out", "mlp_out") for ``run_with_hooks``. ``expert_contribution`` reduces a run's cached
activations to the contribution the patch needs.
"""

import torch

from mdlm_interp.models.hook_names import hook_name


def parse_experts(spec: str, moe_layers: list[int], n_experts: int) -> list[tuple[int, int]]:
    """Parse "L.E,L.E" into sorted unique (layer, expert) pairs; ``UsageError`` for a malformed pair or an
    expert the model lacks (a dense layer, an expert index out of range)."""
    from mdlm_interp.errors import UsageError

    experts = set()
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        try:
            layer, expert = (int(x) for x in part.split("."))
        except ValueError:
            raise UsageError(f"--experts: expected LAYER.EXPERT pairs like 2.0,3.1, got {part!r}") from None
        if layer not in moe_layers or not 0 <= expert < n_experts:
            raise UsageError(f"--experts: {part} is not an expert of this model (mixture-of-experts layers "
                             f"{','.join(map(str, moe_layers)) or 'none'}, {n_experts} experts each)")
        experts.add((layer, expert))
    if not experts:
        raise UsageError("--experts: no expert given")
    return sorted(experts)


def by_layer(experts) -> dict[int, list[int]]:
    """Return {layer: [expert, ...]} of (layer, expert) pairs."""
    out: dict[int, list[int]] = {}
    for layer, expert in experts:
        out.setdefault(layer, []).append(expert)
    return out


def _routed_to(indices: torch.Tensor, chosen: list[int]) -> torch.Tensor:
    """Return bool [..., k]: which top-k slots of ``indices`` [..., k] go to one of the ``chosen`` experts."""
    return torch.isin(indices, torch.tensor(chosen, device=indices.device))


def remove_experts(experts, where: torch.Tensor | None = None) -> list:
    """Return the hooks that remove ``experts`` [(layer, expert), ...] at the positions ``where`` (bool
    [batch, pos]; None: every position) of the batch they run on."""
    hooks = []
    for layer, chosen in sorted(by_layer(experts).items()):
        seen = {}

        def keep(indices, hook, seen=seen):
            seen["indices"] = indices

        def zero(weights, hook, seen=seen, chosen=chosen):
            drop = _routed_to(seen.pop("indices"), chosen)
            if where is not None:
                drop = drop & where.to(drop.device)[..., None]
            return weights.masked_fill(drop, 0)

        hooks += [(hook_name("topk_indices", layer), keep), (hook_name("topk_weights", layer), zero)]
    return hooks


def expert_contribution(indices: torch.Tensor, weights: torch.Tensor, expert_out: torch.Tensor,
                        chosen: list[int]) -> torch.Tensor:
    """Return the chosen experts' part of a MoE output, [batch, pos, d_model], from a run's
    ``hook_topk_indices`` / ``hook_topk_weights`` [batch, pos, k] and ``hook_expert_out`` [batch, pos, k, d_model]."""
    routed = _routed_to(indices, chosen).to(weights.dtype) * weights
    return (expert_out.to(weights.dtype) * routed[..., None]).sum(-2).to(expert_out.dtype)


def patch_expert_contribution(experts, donor: dict, where: torch.Tensor) -> list:
    """Return the hooks that replace the contribution of ``experts`` [(layer, expert), ...] by the donor's at
    the positions ``where`` (bool [batch, pos]). ``donor``: {layer: the donor's contribution of that
    layer's chosen experts [batch, pos, d_model]} (``expert_contribution``), aligned with the receiver's
    positions."""
    hooks = []
    for layer, chosen in sorted(by_layer(experts).items()):
        seen = {}

        def keep(activation, hook, seen=seen):
            seen[hook.name.rsplit(".", 1)[-1]] = activation

        def swap(mlp_out, hook, seen=seen, chosen=chosen, layer=layer):
            own = expert_contribution(seen.pop("hook_topk_indices"), seen.pop("hook_topk_weights"),
                                      seen.pop("hook_expert_out"), chosen)
            patched = mlp_out - own + donor[layer].to(mlp_out.dtype)
            return torch.where(where.to(mlp_out.device)[..., None], patched, mlp_out)

        hooks += [(hook_name(kind, layer), keep) for kind in ("topk_indices", "topk_weights", "expert_out")]
        hooks.append((hook_name("mlp_out", layer), swap))
    return hooks
