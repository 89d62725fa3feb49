"""Ablating heads: does removing what the chosen heads take from the masks restore the answer?

Three modes, each applied to the chosen heads (and, as the control, to as many random heads, over
several seeded draws):

- ``attention``: the head's queries stop attending to the masks after the answer slot; its attention
  is renormalised over the remaining keys (``hooks.interventions.remove_attention_to_keys``). Which
  queries: ``positions`` "all" (every query, the default) or "readout" (only the readout position,
  where the answer is predicted: the answer slot for LLaDA, the position before it for Dream);
- ``zero``: the head's output (``attn.hook_z``) is zero at every position;
- ``mean``: the head's output is its mean over every valid position of the evaluated prompts at the
  same mask count, without ablation.

On mixture-of-experts models experts are units too: ``experts`` "L.E" pairs are removed (their top-k
weight set to 0) at the masks after the answer slot, the readout position or everywhere, against as
many random experts.

Heads are given as "L.H" pairs or as ``top:K``: the K heads with the largest mean attention mass from
the answer readout on the masks after the answer slot, measured on the evaluated prompts at the
largest mask count (``rank_heads``). Random control heads are drawn among the heads not chosen.
"""

import numpy as np
import torch

from mdlm_interp.batching import collate
from mdlm_interp.circuits.pairs import run_to_readout
from mdlm_interp.circuits.schemas import ABLATION
from mdlm_interp.errors import UsageError
from mdlm_interp.hooks.experts import parse_experts, remove_experts
from mdlm_interp.hooks.interventions import remove_attention_to_keys, replace_head_output
from mdlm_interp.hooks.routing import moe_layers, n_experts
from mdlm_interp.hooks.recorders import AttentionRecorder, PredictionRecorder
from mdlm_interp.models.hook_names import hook_name
from mdlm_interp.plan import RECORDS_NOTHING, Condition, PromptPlan, plan_prompts
from mdlm_interp.record import tqdm_or_none
from mdlm_interp.resources import check_fits
from mdlm_interp.sharding import Shard
from mdlm_interp.store.partial import check_result_output, open_partial, resumes_complete_store
from mdlm_interp.store.results import write_results
from mdlm_interp.subject import provenance, run_settings, subject_from

MODES = ("attention", "zero", "mean")
POSITIONS = ("all", "readout")  # the queries whose attention to the masks mode "attention" removes
EXPERT_MODES = ("zero",)  # an expert's top-k weight set to 0
EXPERT_POSITIONS = ("masks", "readout", "all")  # where ablated experts are removed (the first is the default)
RESULTS = ("predicted_id", "p_answer", "correct")


def parse_heads(spec: str, n_layers: int, n_heads: int) -> tuple[int | None, list]:
    """Parse ``top:K`` -> (K, []) or "L.H,L.H" -> (None, [(L, H), ...]) (sorted, unique).

    Raises ``UsageError`` for a malformed spec, K outside 1 .. n_layers * n_heads, or a head that the
    model does not have.
    """
    spec = spec.strip()
    if spec.startswith("top:"):
        try:
            k = int(spec[4:])
        except ValueError:
            raise UsageError(f"--heads top:K needs an integer K, got {spec!r}") from None
        if not 1 <= k <= n_layers * n_heads:
            raise UsageError(f"--heads top:{k}: K must be between 1 and {n_layers * n_heads} (the model's heads)")
        return k, []
    heads = set()
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        try:
            layer, head = (int(x) for x in part.split("."))
        except ValueError:
            raise UsageError(f"--heads: expected top:K or LAYER.HEAD pairs like 0.1,2.3, got {part!r}") from None
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise UsageError(f"--heads: {part} is not a head of this model ({n_layers} layers x {n_heads} heads)")
        heads.add((layer, head))
    if not heads:
        raise UsageError("--heads: no head given")
    return None, sorted(heads)


def head_names(heads) -> list[str]:
    """Return [(L, H), ...] as ["L.H", ...]."""
    return [f"{layer}.{head}" for layer, head in heads]


def ablation_hooks(mode: str, heads, masks: torch.Tensor, means: torch.Tensor | None = None,
                   queries: torch.Tensor | None = None) -> list:
    """Return the (hook name, function) pairs that ablate ``heads`` [(L, H), ...] in ``mode``.

    ``masks`` bool [batch, pos]: the masks after the answer slot (mode "attention"); ``queries`` bool
    [batch, pos]: the queries whose attention to them is removed (None: every query); ``means``
    [layer, head, d_head]: the heads' mean outputs (mode "mean").
    """
    by_layer = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    hooks = []
    for layer, chosen in sorted(by_layer.items()):
        if mode == "attention":
            hooks.append((hook_name("attn_scores", layer), remove_attention_to_keys(chosen, masks, queries)))
        elif mode == "zero":
            hooks.append((hook_name("z", layer), replace_head_output(chosen, torch.zeros(len(chosen), 1))))
        elif mode == "mean":
            hooks.append((hook_name("z", layer), replace_head_output(chosen, means[layer, chosen])))
        else:
            raise UsageError(f"unknown ablation mode {mode!r}; choose from {', '.join(MODES)}")
    return hooks


def expert_positions(positions: str, layout) -> torch.Tensor | None:
    """Return the positions bool [batch, pos] of ``layout`` where ablated experts are removed: the masks
    after the answer slot ("masks"), the readout position ("readout") or None for every position ("all")."""
    if positions == "masks":
        return layout.masks
    return query_positions(positions, layout)


def query_positions(positions: str, layout) -> torch.Tensor | None:
    """Return the queries bool [batch, pos] of ``layout`` (``batching.BatchLayout``) whose attention to the
    masks mode "attention" removes: None for "all" (every query), the readout position for "readout"."""
    if positions == "all":
        return None
    if positions == "readout":
        queries = torch.zeros_like(layout.valid, dtype=torch.bool)
        queries[layout.rows, layout.readout.to(queries.device)] = True
        return queries
    raise UsageError(f"unknown --positions {positions!r}; choose from {', '.join(POSITIONS)}")


@torch.no_grad()
def rank_heads(module, batches, shard: Shard | None = None) -> torch.Tensor:
    """Return the mean attention mass [layer, head] from the answer readout on the masks after the answer
    slot over the prompts of ``batches`` (``PromptBatch`` list). With ``shard`` (``sharding.Shard``) each
    rank runs its block of batches and every rank returns the same mean (the batches summed in order)."""
    shard = shard or Shard()
    sums = []  # per batch of this rank's block: (attention mass summed over its rows [layer, head], rows)
    for batch in (batches[index] for index in shard.block(len(batches))):
        recorder = AttentionRecorder(module, batch.layout)
        logits = run_to_readout(module, batch, recorder.fwd_hooks(), **recorder.forward_kwargs())
        sums.append((recorder.results(logits)["mask_mass_from_answer"].sum(0).cpu(), len(batch.input_ids)))
    total, count = 0.0, 0
    for mass, rows in (pair for block in shard.exchange(sums) for pair in block):
        total, count = total + mass, count + rows
    return total / count


@torch.no_grad()
def predict(module, batch, hooks=()) -> dict:
    """Return predicted_id, p_answer, correct [batch] (on the CPU) of one forward pass with ``hooks``."""
    logits = run_to_readout(module, batch, hooks)
    results = PredictionRecorder(module, batch.layout, top_k=1).results(logits)
    return {name: results[name].cpu() for name in RESULTS}


def head_output_sums(n_layers: int, sums: dict, counts: dict, valid: torch.Tensor) -> list:
    """Return hooks on every ``attn.hook_z`` that add the batch's outputs over valid positions into
    ``sums[layer]`` [head, d_head] and the number of positions into ``counts[layer]``."""

    def hook_for(layer):
        def accumulate(z, hook):
            weights = valid.to(z.dtype)
            sums[layer] = sums.get(layer, 0) + torch.einsum("bthd,bt->hd", z.detach().float(), weights.float())
            counts[layer] = counts.get(layer, 0) + float(weights.sum())

        return accumulate

    return [(hook_name("z", layer), hook_for(layer)) for layer in range(n_layers)]


def mean_head_outputs(n_layers: int, sums: list) -> torch.Tensor:
    """Return every head's mean output [layer, head, d_head] from ``sums``, one ({layer: output summed over
    the batch's valid positions [head, d_head]}, {layer: positions}) per batch (``head_output_sums``), added
    up in batch order (so that a sharded run gets the same floats as one process)."""
    totals, counts = {}, {}
    for batch_sums, batch_counts in sums:
        for layer in batch_sums:
            totals[layer] = totals.get(layer, 0) + batch_sums[layer]
            counts[layer] = counts.get(layer, 0) + batch_counts[layer]
    return torch.stack([totals[layer] / max(counts[layer], 1.0) for layer in range(n_layers)])


def draw_control_heads(chosen, n_layers: int, n_heads: int, draws: int, seed: int) -> list:
    """Return ``draws`` sets of len(chosen) random heads, each drawn without replacement among the heads
    not in ``chosen``, seeded. Raises ``UsageError`` when fewer than len(chosen) heads remain."""
    return draw_control_units(chosen, [(l, h) for l in range(n_layers) for h in range(n_heads)], draws, seed)


def draw_control_units(chosen, units: list, draws: int, seed: int) -> list:
    """Return ``draws`` sets of len(chosen) random units (heads or experts, (layer, index) pairs), each drawn
    without replacement among the ``units`` not in ``chosen``, seeded. Raises ``UsageError`` when fewer
    than len(chosen) remain."""
    check_control_pool(len(chosen), len(units), draws)
    pool = [unit for unit in units if unit not in set(chosen)]
    rng = np.random.default_rng(seed)
    return [sorted(pool[i] for i in rng.choice(len(pool), size=len(chosen), replace=False)) for _ in range(draws)]


def check_control_pool(n_chosen: int, n_all: int, draws: int) -> None:
    """Raise ``UsageError`` when a control of ``draws`` draws cannot take ``n_chosen`` heads from the
    ``n_all - n_chosen`` heads not chosen; return None otherwise."""
    if draws > 0 and n_all - n_chosen < n_chosen:
        raise UsageError(f"the control draws {n_chosen} heads among those not chosen, but only {n_all - n_chosen} of "
                         f"the model's {n_all} remain; choose fewer heads or give --control-draws 0")


def control_bytes(rows: int, n_chosen: int, draws: int, modes: int) -> float:
    """Return about how many bytes a control of ``draws`` draws takes: its results (three per row, draw and
    mode, held twice while stacked) and its head lists."""
    return draws * (rows * modes * 2 * (4 + 4 + 1) + 120 + 72 * n_chosen)


def run_ablation(lm, config: PromptPlan, heads: str | None = None, *, out, experts: str | None = None, modes=None,
                 control_draws: int = 0, batch_size: int = 8, positions: str | None = None, overwrite: bool = False,
                 resume: bool = False, progress: bool = True, command_line: str | None = None,
                 shard: Shard | None = None):
    """Evaluate ``config``'s prompts at each of ``config.masks`` without ablation, with the chosen
    ``heads`` ("top:K" or "L.H,...") ablated in each mode, and with ``control_draws`` random head sets;
    write an ablation store to ``out`` and return its path. ``positions`` ("all", the default, or
    "readout"): the queries whose attention to the masks mode "attention" removes (stored in the settings
    only when not "all"). ``modes``: default all of ``MODES``.

    Or, on a mixture-of-experts model, ``experts`` ("L.E,...") instead of ``heads``: the chosen experts are
    removed (mode "zero", the only one: their top-k weight set to 0, ``hooks.experts.remove_experts``) at
    the ``positions`` "masks" (the masks after the answer slot, the default), "readout" or "all", against
    as many random experts of the MoE layers; the store's settings name the ``experts``.
    Bad input raises ``UsageError`` before any work. Each completed batch is committed beside ``out``
    (``store.partial``); ``resume`` continues a killed run with the same settings and batch size (and
    leaves a complete store with them as it is). With ``shard`` (``sharding.Shard``, under torchrun) each rank
    ablates its block of every mask count's batches and the leader alone checks, claims and writes ``out``.
    """
    shard = shard or Shard()

    out = shard.step(lambda: check_result_output(out, resume=resume, overwrite=overwrite), leader_only=True)
    subject = subject_from(lm)
    if subject.causal:
        raise UsageError("ablating attention to the masks needs a diffusion model; a causal model takes no masks")
    if (heads is None) == (experts is None):
        raise UsageError("give the heads (--heads) or the experts (--experts) to ablate, one of them")
    units = "experts" if experts is not None else "heads"
    allowed_modes, allowed_positions = (EXPERT_MODES, EXPERT_POSITIONS) if experts else (MODES, POSITIONS)
    modes = tuple(dict.fromkeys(modes or allowed_modes))
    positions = positions or allowed_positions[0]
    unknown = set(modes) - set(allowed_modes)
    if unknown or not modes:
        raise UsageError(f"unknown ablation mode(s) {sorted(unknown)} for {units}; choose from "
                         f"{', '.join(allowed_modes)}")
    if positions not in allowed_positions:
        raise UsageError(f"unknown --positions {positions!r} for {units}; choose from {', '.join(allowed_positions)}")
    if control_draws < 0 or batch_size < 1:
        raise UsageError("control draws must be at least 0 and batch size at least 1")
    if experts is not None:
        layers, count = moe_layers(subject.module), n_experts(subject.module)
        top_k, chosen = None, parse_experts(experts, layers, count)
        pool = [(layer, expert) for layer in layers for expert in range(count)]
    else:
        top_k, chosen = parse_heads(heads, subject.n_layers, subject.n_heads)
        pool = [(layer, head) for layer in range(subject.n_layers) for head in range(subject.n_heads)]
    n_chosen = len(chosen) if top_k is None else top_k
    check_control_pool(n_chosen, len(pool), control_draws)
    rows = len(config.masks) * len(config.tasks) * config.n
    check_fits(f"--control-draws {control_draws}", control_bytes(rows, n_chosen, control_draws, len(modes)))
    if len(config.placements) != 1:
        raise UsageError("ablate takes one placement")
    placement = config.placements[0]
    plan = {m: config.rows([Condition(m, False, placement)]) for m in config.masks}
    prompts = {m: plan_prompts(subject, config, rows) for m, rows in plan.items()}
    device = next(lm.model.parameters()).device
    module = subject.module

    def batches(m):
        rows = prompts[m]
        return [collate(rows[b:b + batch_size], subject.prediction_offset, device=device)
                for b in range(0, len(rows), batch_size)]

    ranking = None
    if top_k is not None:
        largest = max(config.masks)
        if largest < 2:
            raise UsageError("--heads top:K ranks heads by attention to the masks; give --masks with a count above 1")
        ranking = rank_heads(module, batches(largest), shard)
        order = sorted(((float(ranking[l, h]), -l, -h) for l in range(subject.n_layers)
                        for h in range(subject.n_heads)), reverse=True)
        chosen = sorted((-l, -h) for _, l, h in order[:top_k])
    control = draw_control_units(chosen, pool, control_draws, config.seed)

    facts = subject.facts()
    selected = {"experts": experts} if experts is not None else {"heads": heads}
    settings = run_settings(subject, config, facts, **RECORDS_NOTHING, **selected, modes=list(modes),
                            control_draws=control_draws, **({"positions": positions} if positions != "all" else {}))
    if shard.step(lambda: resumes_complete_store(out, settings, ABLATION.name, resume=resume), leader_only=True):
        return out
    key = {"settings": settings, "batch_size": batch_size, "heads": head_names(chosen),
           "control_heads": [head_names(draw) for draw in control],
           "rows": [[m, config.tasks[row.task], int(config.example(row))] for m in config.masks for row in plan[m]]}
    partial = shard.step(lambda: open_partial(out, key, resume=resume), leader_only=True)
    settings_per_batch = 1 + len(modes) * (1 + control_draws)
    bar = tqdm_or_none(progress and shard.leader, total=sum(len(p) for p in prompts.values()) * settings_per_batch,
                       desc="ablating", unit="run")

    def ablate_block() -> dict:
        """Ablate this rank's block of each mask count's batches; return {batch index: columns} of those not
        committed before (committed now)."""
        parts, first = {}, 0  # first: the index of the mask count's first batch among all batches
        for m in config.masks:
            mask_batches = batches(m)
            indices = range(first, first + len(mask_batches))
            first += len(mask_batches)
            if all(partial.committed(index) for index in indices):  # done before a resume: not even the
                if bar is not None:  # baselines rerun
                    bar.update(len(prompts[m]) * settings_per_batch)
                continue
            runs, sums = {}, []
            for i in shard.block(len(mask_batches)):  # the baselines; the means of mode "mean" take every rank's
                batch, batch_sums, batch_counts = mask_batches[i], {}, {}
                runs[indices[i]] = (batch, predict(module, batch, head_output_sums(
                    subject.n_layers, batch_sums, batch_counts, batch.layout.valid)))
                sums.append(({layer: total.cpu() for layer, total in batch_sums.items()}, batch_counts))
                if bar is not None:
                    bar.update(len(batch.input_ids))
            means = mean_head_outputs(subject.n_layers, [pair for block in shard.exchange(sums) for pair in block])
            for index, (batch, baseline) in runs.items():
                if partial.committed(index):
                    if bar is not None:
                        bar.update(len(batch.input_ids) * (settings_per_batch - 1))
                    continue

                def ablated(units_, mode):
                    hooks = (remove_experts(units_, expert_positions(positions, batch.layout)) if experts is not None
                             else ablation_hooks(mode, units_, batch.layout.masks, means,
                                                 query_positions(positions, batch.layout)))
                    result = predict(module, batch, hooks)
                    if bar is not None:
                        bar.update(len(batch.input_ids))
                    return result

                chosen_runs = [ablated(chosen, mode) for mode in modes]
                control_runs = [[ablated(draw, mode) for mode in modes] for draw in control]
                part = {f"examples/{name}": baseline[name].numpy() for name in RESULTS}
                for name in RESULTS:
                    part[f"ablated/{name}"] = torch.stack([r[name] for r in chosen_runs], 1).numpy()
                    size = len(batch.input_ids)
                    part[f"control/{name}"] = (
                        torch.stack([torch.stack([r[name] for r in draw], 1) for draw in control_runs], 1).numpy()
                        if control_runs else np.zeros((size, 0, len(modes)), dtype=baseline[name].numpy().dtype))
                partial.commit(index, part)
                parts[index] = part
        return parts

    computed = shard.step(ablate_block)
    if bar is not None:
        bar.close()

    def write():
        n_batches = sum(-(-len(prompts[m]) // batch_size) for m in config.masks)
        parts = [computed[index] if index in computed else partial.load(index)[0] for index in range(n_batches)]
        columns = {path: np.concatenate([p[path] for p in parts]) for path in parts[0]}
        rows = [row for m in config.masks for row in plan[m]]
        columns["examples/example"] = np.array([config.example(row) for row in rows])
        columns["examples/task"] = [config.tasks[row.task] for row in rows]
        columns["examples/masks"] = np.array([row.condition.masks for row in rows])
        columns["examples/answer_id"] = np.array([tp.answer_id for m in config.masks for tp in prompts[m]])
        columns["examples/input_length"] = np.array([len(tp.input_ids) for m in config.masks for tp in prompts[m]])

        attrs = {"heads": head_names(chosen), "head_selection": experts or heads, "modes": list(modes),
                 "control_heads": [head_names(draw) for draw in control],
                 "ranking": None if ranking is None else ranking.tolist()}
        written = write_results(out, ABLATION, columns, dims={"modes": len(modes), "draws": control_draws},
                                provenance=provenance(subject, config, facts, command_line), settings=settings,
                                attrs=attrs, overwrite=overwrite or resume)
        partial.remove()
        return written

    return shard.step(write, leader_only=True)
