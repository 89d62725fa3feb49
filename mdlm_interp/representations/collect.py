"""Collecting activations from a forward pass: the rows an activation store holds, for one batch.

A *position group* names a set of positions of a task prompt batch (``batching.BatchLayout``):
answer (the answer slot), readout (the position whose logits predict the answer: the answer slot
for LLaDA, the one before it for Dream and causal models), masks (the n - 1 positions after the
answer slot: masks, or the fillers of the filler control), relevant (tokens of the relevant
examples), query, last_context (the last_k tokens before the answer slot) and context (every valid
token outside the answer slot and the positions after it). A position collected once belongs to the
first asked group that holds it, so groups asked as ("answer", "masks", "context") give disjoint rows.

Each site's hook keeps only the collected positions (moved to the CPU as float32) while the forward
pass runs, so memory holds the rows, never a whole [batch, pos, d] cache.
"""

import torch

from mdlm_interp.errors import UsageError
from mdlm_interp.models.readout import logits_at_index, run_reading

POSITION_GROUPS = ("answer", "readout", "masks", "relevant", "query", "last_context", "context")


def group_index(layout, groups) -> torch.Tensor:
    """Return long [batch, pos]: the index in ``groups`` of the first group holding each position,
    -1 where none does. An unknown group is a one-line UsageError."""
    unknown = [g for g in groups if g not in POSITION_GROUPS]
    if unknown or not groups:
        raise UsageError(f"unknown position group(s) {unknown}; choose from {', '.join(POSITION_GROUPS)}")
    index = torch.full(layout.valid.shape, -1, dtype=torch.long, device=layout.valid.device)
    for i, group in reversed(list(enumerate(groups))):
        if group == "readout":
            where = torch.zeros_like(layout.valid)
            where[layout.rows, layout.readout] = True
        else:
            where = getattr(layout, group)
        index[where & layout.valid.bool()] = i
    return index


def collect_activations(model, batch, sites, groups) -> dict:
    """Run ``model`` (a hooked decoder) on ``batch`` (``batching.PromptBatch``) and return the rows at
    the positions of ``groups``, in (batch row, position) order:

    {"activations": {site: float32 [R, d]} (a [.., heads, d_head] site flattened to heads * d_head),
     "row": long [R] (batch row), "position": long [R] (position within the prompt, padding removed),
     "group": list of R group names, "answer_loss": float32 [batch] (cross-entropy of the correct answer
    at the readout position, nats), "correct": bool [batch] (the readout's argmax is the answer)}. Sites
    are TransformerLens hook names; an unknown one is a one-line UsageError.
    """
    unknown = [site for site in sites if site not in model.hook_dict]
    if unknown:
        raise UsageError(f"unknown site(s) {unknown}: give TransformerLens hook names of this model, "
                         "e.g. blocks.0.hook_resid_post")
    index = group_index(batch.layout, tuple(groups))
    where = index >= 0
    kept = {}

    def keep(activation, hook):
        kept[hook.name] = activation[where].detach().reshape(int(where.sum()), -1).float().cpu()

    with torch.no_grad():
        hooks = [(site, keep) for site in sites]
        if any(site.startswith("ln_final.") for site in sites):  # the final norm's hooks need every position
            logits = model.run_with_hooks(batch.input_ids, attention_mask=batch.attention_mask_if_padded,
                                          fwd_hooks=hooks)
        else:  # unembed only the readout positions
            logits = run_reading(model, batch.input_ids, batch.layout.readout[:, None], hooks,
                                 attention_mask=batch.attention_mask_if_padded)
        readout = logits_at_index(logits, batch.layout.readout).float()
        answer_loss = torch.nn.functional.cross_entropy(readout, batch.layout.answer_ids, reduction="none")
    rows, positions = where.nonzero(as_tuple=True)
    starts = torch.as_tensor(batch.starts, device=rows.device)
    return {"activations": {site: kept[site] for site in sites}, "row": rows.cpu(),
            "position": (positions - starts[rows]).cpu(), "group": [groups[i] for i in index[where].tolist()],
            "answer_loss": answer_loss.cpu(), "correct": (readout.argmax(-1) == batch.layout.answer_ids).cpu()}


def store_rows(collected: dict, prompt_keys, conditions, labels: dict | None = None) -> dict:
    """Return the keyword arguments of ``ActivationWriter.append`` for collected rows: ``prompt_keys``
    and ``conditions`` [batch] (str) and ``labels`` {name: [batch] numbers} per prompt, spread to rows."""
    rows = collected["row"].tolist()
    return {"activations": collected["activations"], "prompt_key": [prompt_keys[r] for r in rows],
            "condition": [conditions[r] for r in rows], "position_group": collected["group"],
            "position": collected["position"].numpy(),
            "labels": {name: [values[r] for r in rows] for name, values in (labels or {}).items()},
            "items": len(prompt_keys)}
