"""Experts as units of activation patching (mixture-of-experts models): does an expert's contribution at a
position group carry the difference between two mask configurations?

For the prompt pairs of two conditions (``pairs.pair_prompts``, e.g. 1 mask against 50 masks) and each
chosen expert (layer, expert) and position group (``PromptPair.position_groups``: all, relevant,
distractor, query, answer, the tokens after the answer slot that both runs have, ...), the expert's
share of the MoE output (``hooks.experts.expert_contribution``: the sum over the top-k slots routed to
it of weight * output) is patched from the donor run into the receiver at the group's positions, in
both directions, and the logit difference logit(answer) - logit(wrong) at the readout is read (the
wrong token: the corrupt run's most probable other token, as ``patch`` reads it). Only the patched
layer's MLP output changes; the routing of every layer is the receiver's own. ``run_expert_patching``
writes the cells as an expert patching store (``circuits.schemas.EXPERT_PATCHING``; ``patch --experts``).
"""

import torch

from mdlm_interp.circuits.pairs import answer_metrics, make_pair, pair_prompts, readout_logits, top_wrong_ids
from mdlm_interp.errors import UsageError
from mdlm_interp.hooks.experts import expert_contribution, parse_experts, patch_expert_contribution
from mdlm_interp.hooks.routing import moe_layers, n_experts
from mdlm_interp.models.hook_names import hook_name
from mdlm_interp.plan import RECORDS_NOTHING, Condition, PromptPlan
from mdlm_interp.subject import provenance, run_settings, subject_from

DIRECTIONS = {"clean_into_corrupt": ("corrupt", "clean"), "corrupt_into_clean": ("clean", "corrupt")}  # receiver, donor
ROUTING_KINDS = ("topk_indices", "topk_weights", "expert_out")


@torch.no_grad()
def patch_experts(lm, plan: PromptPlan, clean: Condition, corrupt: Condition, experts: str, *,
                  batch_size: int = 8) -> "pandas.DataFrame":
    """Patch each expert of ``experts`` ("L.E,...") between the ``clean`` and ``corrupt`` runs of ``plan``'s
    prompts; return one row per (pair, direction, expert, position group): example, task, direction,
    expert ("L.E"), group, clean, corrupt and patched logit difference (the receiver's without patching is
    clean or corrupt), n_positions (the group's positions in the receiver). ``UsageError`` for a dense
    model, an expert the model lacks or a causal model."""
    import pandas as pd

    subject = subject_from(lm)
    layers = moe_layers(subject.module)
    if not layers:
        raise UsageError("patching experts needs a mixture-of-experts model (LLaDA-MoE, LLaDA2); this one is dense")
    chosen = parse_experts(experts, layers, n_experts(subject.module))
    prompts = pair_prompts(subject, plan, clean, corrupt)
    device = next(subject.module.parameters()).device
    names = [hook_name(kind, layer) for layer in sorted({l for l, _ in chosen}) for kind in ROUTING_KINDS]
    records = []
    for start in range(0, len(prompts["clean"]), batch_size):
        rows = slice(start, start + batch_size)
        pair = make_pair(prompts["clean"][rows], prompts["corrupt"][rows], subject.prediction_offset, device=device)
        runs, caches = {}, {}
        for run, batch in pair.batches.items():
            logits, caches[run] = subject.module.run_with_cache(
                batch.input_ids, attention_mask=batch.attention_mask_if_padded, names_filter=names)
            runs[run] = readout_logits(logits, batch)
        answers = pair.answer_ids()
        wrong = top_wrong_ids(runs["corrupt"], answers)
        base = {run: answer_metrics(logits, answers, wrong)["logit_diff"] for run, logits in runs.items()}
        for direction, (receiver, donor) in DIRECTIONS.items():
            batch = pair.batches[receiver]
            groups, where = pair.position_groups(receiver, last_k=0, appended=clean.masks > 1 and corrupt.masks > 1)
            for layer, expert in chosen:
                cache = caches[donor]
                contribution = expert_contribution(*(cache[hook_name(kind, layer)] for kind in ROUTING_KINDS),
                                                   [expert])
                aligned = {layer: pair.aligned(contribution, receiver)}
                for group, positions in zip(groups, where):
                    logits = subject.module.run_with_hooks(
                        batch.input_ids, attention_mask=batch.attention_mask_if_padded,
                        fwd_hooks=patch_expert_contribution([(layer, expert)], aligned, positions))
                    patched = answer_metrics(readout_logits(logits, batch), answers, wrong)["logit_diff"]
                    for row in range(pair.size):
                        records.append({"example": prompts["example"][start + row], "task": prompts["task"][start + row],
                                        "direction": direction, "expert": f"{layer}.{expert}", "group": group,
                                        "clean": float(base["clean"][row]), "corrupt": float(base["corrupt"][row]),
                                        "patched": float(patched[row]), "n_positions": int(positions[row].sum())})
    return pd.DataFrame(records)


def run_expert_patching(lm, plan: PromptPlan, clean: Condition, corrupt: Condition, experts: str, *, out,
                        batch_size: int = 8, overwrite: bool = False, command_line: str | None = None):
    """Patch ``experts`` ("L.E,...") between the ``clean`` and ``corrupt`` runs of ``plan`` (``patch_experts``)
    and write the cells to ``out`` as an expert patching store (one row per pair, direction, expert and
    position group); return its path. ``UsageError`` as ``patch_experts``, before anything is written."""
    from mdlm_interp.circuits.schemas import EXPERT_PATCHING
    from mdlm_interp.store.results import write_results

    frame = patch_experts(lm, plan, clean, corrupt, experts, batch_size=batch_size)
    subject = subject_from(lm)
    facts = subject.facts()
    settings = run_settings(subject, plan, facts, **RECORDS_NOTHING, clean=vars(clean), corrupt=vars(corrupt),
                            experts=experts)
    columns = {field.path: frame[field.name].to_numpy() if field.dtype != "str" else list(frame[field.name])
               for field in EXPERT_PATCHING.data}
    return write_results(out, EXPERT_PATCHING, columns, dims={},
                         provenance=provenance(subject, plan, facts, command_line), settings=settings,
                         attrs={"experts": list(dict.fromkeys(frame["expert"])), "directions": list(DIRECTIONS)},
                         overwrite=overwrite)
