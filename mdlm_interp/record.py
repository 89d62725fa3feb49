"""Recording: task prompts -> batches -> one forward pass with recorder hooks -> rows of a store.

``record`` takes a loaded model (``load_model``) or any ``HookedRootModule`` with the standard hook
names plus its tokenizer, mask id and prediction offset. It plans one row per (example, condition),
where a condition is (masks, filler, placement), writes them batch by batch to an HDF5 store, and
can resume a killed run.
"""

import hashlib
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from mdlm_interp.errors import UsageError
from mdlm_interp.hooks.recorders import AttentionRecorder, BatchLayout, GradientRecorder, LensRecorder, distribution_stats
from mdlm_interp.models.loader import LoadedModel
from mdlm_interp.store.writer import Provenance, check_writable, open_writer
from mdlm_interp.tasks import TASK_NAMES, PromptConfig, record_seed, sample_prompt, single_token_words, tokenize_prompt

RECORDABLE = ("attention", "gradients", "lens")
LAST_NONMASK = 50


@dataclass(frozen=True)
class Condition:
    """How the prompt is asked: appended mask count, filler control, placement."""

    masks: int
    filler: bool
    placement: str


@dataclass(frozen=True)
class Subject:
    """The model being recorded, reduced to what recording needs."""

    module: torch.nn.Module
    tokenizer: object
    mask_token_id: int | None
    prediction_offset: int
    causal: bool
    family: str
    model_id: str
    dtype: str
    chat_template: str | None
    max_length: int | None

    @property
    def n_layers(self) -> int:
        """Number of transformer blocks."""
        return len(self.module.blocks)

    @property
    def n_heads(self) -> int:
        """Number of attention (query) heads per block."""
        return int(self.module.cfg.n_heads)


def subject_from(model, tokenizer, mask_token_id, prediction_offset, causal, chat) -> Subject:
    """Return a ``Subject`` from a ``LoadedModel`` or a HookedRootModule plus its facts."""
    if isinstance(model, LoadedModel):
        return Subject(model.model, model.tokenizer, model.mask_token_id, model.spec.prediction_offset,
                       model.spec.causal, model.spec.family, model.source, str(next(model.model.parameters()).dtype),
                       model.spec.chat_template if chat else None, model.config.max_seq_len)
    if tokenizer is None or prediction_offset is None:
        raise UsageError("recording a bare module needs its tokenizer and prediction_offset")
    if not causal and mask_token_id is None:
        raise UsageError("the tokenizer has no mask token: a diffusion model needs mask_token_id")
    if chat:
        raise UsageError("chat mode needs a loaded model (its family gives the chat template)")
    cfg = getattr(model, "cfg", None)
    return Subject(model, tokenizer, mask_token_id, prediction_offset, causal, "custom",
                   type(model).__name__, str(next(model.parameters()).dtype), None, getattr(cfg, "n_ctx", None))


def plan_conditions(masks, filler: str | None, placements) -> list[Condition]:
    """Return the conditions in recording order: every (placement, masks); with a filler, also the
    filler control for each mask count above 1."""
    conditions = [Condition(m, False, p) for p in placements for m in masks]
    if filler is not None:
        conditions += [Condition(m, True, p) for p in placements for m in masks if m > 1]
    return conditions


def validate_request(tasks, masks, placements, record, n, n_relevant, n_distractor, batch_size, top_k) -> list[str]:
    """Check a recording request that needs no model; return the task names ("all" expanded).

    Raises ``UsageError`` naming the first problem (unknown task, mask count below 1, bad placement,
    unknown record item, non-positive n / batch size / top-k).
    """
    tasks = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    task_names = list(TASK_NAMES) if tasks == ["all"] else tasks
    for task in task_names:
        if task not in TASK_NAMES:
            raise UsageError(f"unknown task '{task}' (see `mdlm-interp tasks list`)")
    if not masks or any(int(m) < 1 for m in masks):
        raise UsageError(f"masks must be at least 1 (the first mask is the answer slot), got {list(masks)}")
    for placement in placements:
        PromptConfig(task_names[0], n_relevant, n_distractor, placement)
    unknown = set(record) - set(RECORDABLE)
    if unknown:
        raise UsageError(f"unknown --record item(s) {sorted(unknown)}; choose from {', '.join(RECORDABLE)}")
    if n < 1 or batch_size < 1 or top_k < 1:
        raise UsageError("n, batch size and top-k must be at least 1")
    return task_names


def module_fingerprint(module: torch.nn.Module) -> str:
    """Return a sha256 over a module's parameter names and values (for modules without a checkpoint)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def record(
    model,
    tokenizer=None,
    *,
    out,
    mask_token_id: int | None = None,
    prediction_offset: int | None = None,
    causal: bool = False,
    tasks="all",
    masks=(1,),
    filler: str | None = None,
    placements=("random",),
    n: int = 20,
    n_relevant: int = 10,
    n_distractor: int = 40,
    record=RECORDABLE,
    batch_size: int = 8,
    seed: int = 0,
    top_k: int = 10,
    chat: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    command_line: str | None = None,
    shard: tuple[int, int] | None = None,
) -> Path:
    """Record ``n`` prompts per task under every condition into the HDF5 store ``out``; return its path.

    ``model``: a ``LoadedModel``, or any HookedRootModule with the standard hook names (then pass
    ``tokenizer``, ``prediction_offset``, ``causal`` and, for a diffusion model, ``mask_token_id``).
    ``masks``: appended mask counts (the first mask is the answer slot; causal models take none);
    ``filler`` (e.g. " ."): also record the filler control for each mask count above 1;
    ``placements``: "random", "relevant-at:K", "query-at:K"; ``record``: any of attention, gradients,
    lens (the one-step prediction is always recorded). Rows are (condition, task, example), in that
    order. Bad input raises ``UsageError`` before any work; an existing ``out`` needs ``resume`` (same
    settings) or ``overwrite``. ``shard=(rank, world)`` records only the rank's contiguous block of
    rows into ``shard_path(out, rank, world)`` (merge the shards with ``store.merge_stores``).
    """
    rank, world = shard or (0, 1)
    out = check_writable(shard_path(out, rank, world) if shard else out, resume=resume, overwrite=overwrite)
    subject = subject_from(model, tokenizer, mask_token_id, prediction_offset, causal, chat)
    task_names = validate_request(tasks, masks, placements, record, n, n_relevant, n_distractor, batch_size, top_k)
    masks = [int(m) for m in masks]
    if subject.causal and masks != [1]:
        raise UsageError("a causal model takes no appended masks (its answer is the next token); drop --masks")
    conditions = plan_conditions(masks, None if subject.causal else filler, placements)
    words = single_token_words(subject.tokenizer)
    prompts = {(task, p): [sample_prompt(PromptConfig(task, n_relevant, n_distractor, p), record_seed(seed, i), words)
                           for i in range(n)] for p in dict.fromkeys(placements) for task in task_names}
    plan = [(c, t, i) for c in conditions for t, task in enumerate(task_names) for i in range(n)]
    tokenized = [tokenize_prompt(prompts[(task_names[t], c.placement)][i], subject.tokenizer,
                                 mask_token_id=subject.mask_token_id, causal=subject.causal,
                                 masks=0 if subject.causal else c.masks, filler=filler if c.filler else None,
                                 chat_template=subject.chat_template)
                 for c, t, i in plan]
    longest = max(len(tp.input_ids) for tp in tokenized)
    if subject.max_length is not None and longest > subject.max_length:
        raise UsageError(f"prompts reach {longest} tokens, longer than the model's context of {subject.max_length}")

    settings = {
        "model_id": subject.model_id, "family": subject.family, "dtype": subject.dtype, "tasks": task_names,
        "masks": masks, "filler": filler, "placements": list(placements), "n": n, "n_relevant": n_relevant,
        "n_distractor": n_distractor, "record": sorted(record), "seed": seed, "top_k": top_k, "chat": chat,
    }
    fingerprint = model.fingerprint() if isinstance(model, LoadedModel) else module_fingerprint(subject.module)
    settings["weights_fingerprint"] = fingerprint
    if shard:
        settings["shard"] = [rank, world]
    first, stop = len(plan) * rank // world, len(plan) * (rank + 1) // world
    provenance = Provenance(
        command_line=command_line or shlex.join(sys.argv), model_id=subject.model_id, family=subject.family,
        dtype=subject.dtype, weights_fingerprint=fingerprint,
        task_config={k: settings[k] for k in ("tasks", "masks", "filler", "placements", "n", "n_relevant",
                                              "n_distractor", "chat")},
        seed=seed)
    dims = {"k": top_k, "relevant": max(n_relevant, 1), "layers": subject.n_layers, "heads": subject.n_heads}
    groups = ("examples", "tokens", *record)
    with open_writer(out, settings=settings, provenance=provenance, groups=groups, dims=dims,
                     n_planned=stop - first, resume=resume, overwrite=overwrite) as writer:
        start = first + writer.n_rows_done
        bar = tqdm_or_none(progress, total=stop - first, initial=writer.n_rows_done)
        for begin in range(start, stop, batch_size):
            rows = range(begin, min(begin + batch_size, stop))
            batch = record_batch(subject, [tokenized[r] for r in rows], set(record), top_k, dims["relevant"])
            batch["examples/row"] = list(rows)
            batch["examples/example"] = [plan[r][1] * n + plan[r][2] for r in rows]
            batch["examples/task"] = [task_names[plan[r][1]] for r in rows]
            batch["examples/masks"] = [0 if subject.causal else plan[r][0].masks for r in rows]
            batch["examples/filler"] = [plan[r][0].filler for r in rows]
            batch["examples/placement"] = [plan[r][0].placement for r in rows]
            writer.append(batch)
            if bar is not None:
                bar.update(len(rows))
        writer.finish()
        if bar is not None:
            bar.close()
    return out


def shard_path(out, rank: int, world: int) -> Path:
    """Return the store path of shard ``rank`` of ``world`` for the merged store ``out``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.shard{rank}-of-{world}{out.suffix}")


def tqdm_or_none(enabled: bool, **kwargs):
    """Return a tqdm progress bar over rows, or None when progress is off."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(unit="row", desc="recording", **kwargs)


def batch_layout(tokenized: list, offset: int, device) -> tuple[torch.Tensor, torch.Tensor, BatchLayout]:
    """Right-pad a batch; return (input_ids [batch, pos], attention_mask [batch, pos], layout)."""
    width = max(len(tp.input_ids) for tp in tokenized)
    batch = len(tokenized)
    ids = torch.zeros(batch, width, dtype=torch.long)
    selections = {name: torch.zeros(batch, width, dtype=torch.bool)
                  for name in ("valid", "appended", "masks", "relevant", "last50")}
    for row, tp in enumerate(tokenized):
        length = len(tp.input_ids)
        ids[row, :length] = torch.tensor(tp.input_ids)
        selections["valid"][row, :length] = True
        answer, (mask_start, mask_end) = tp.answer_position, tp.spans["masks"]
        selections["appended"][row, answer:max(answer + 1, mask_end)] = answer < length
        selections["masks"][row, mask_start:mask_end] = True
        for index in tp.relevant_examples:
            start, end = tp.example_spans[index]
            selections["relevant"][row, start:end] = True
        selections["last50"][row, max(0, answer - LAST_NONMASK):answer] = True
    selections["context"] = selections["valid"] & ~selections["appended"]
    readout = torch.tensor([tp.answer_position + offset for tp in tokenized])
    answers = torch.tensor([tp.answer_id for tp in tokenized])
    layout = BatchLayout(readout=readout.to(device), answer_ids=answers.to(device),
                         **{k: v.to(device) for k, v in selections.items()})
    return ids.to(device), selections["valid"].long().to(device), layout


def supports_probes(module) -> bool:
    """Whether ``module`` exposes attention probes (the toolkit's own decoder does)."""
    return "blocks.0.attn.hook_probe_mass" in getattr(module, "hook_dict", {})


def record_batch(subject: Subject, tokenized: list, record: set, top_k: int, max_relevant: int,
                 use_probes: bool | None = None) -> dict:
    """Run one forward pass (and a backward pass for gradients) over a batch; return store columns.

    Returns a dict of store dataset paths -> per-row values, without the plan columns (row, example,
    task, masks, filler, placement), which the caller adds. ``use_probes`` (default: when the module
    supports them) measures attention mass with attention probes instead of patterns.
    """
    device = next(subject.module.parameters()).device
    ids, attention_mask, layout = batch_layout(tokenized, subject.prediction_offset, device)
    recorders = {}
    if "attention" in record:
        probes = supports_probes(subject.module) if use_probes is None else use_probes
        recorders["attention"] = AttentionRecorder(subject.n_layers, layout, probes)
    if "lens" in record:
        recorders["lens"] = LensRecorder(subject.module, subject.n_layers, layout)
    if "gradients" in record:
        recorders["gradients"] = GradientRecorder(layout)
    hooks = [hook for recorder in recorders.values() for hook in recorder.fwd_hooks()]
    kwargs = recorders["attention"].forward_kwargs() if "attention" in recorders else {}
    with torch.set_grad_enabled("gradients" in record):
        logits = subject.module.run_with_hooks(ids, attention_mask=attention_mask, fwd_hooks=hooks, **kwargs)
        columns = recorders["gradients"].results(logits) if "gradients" in record else {}
    with torch.no_grad():
        answer_logits = logits.detach()[layout.rows, layout.readout].float()
        stats = distribution_stats(answer_logits, layout.answer_ids)
        top = answer_logits.softmax(-1).topk(top_k, dim=-1)
        for name in ("attention", "lens"):
            if name in recorders:
                columns.update(recorders[name].results())
    lengths = [len(tp.input_ids) for tp in tokenized]
    columns = {k: v.cpu().numpy() for k, v in columns.items()}
    if "gradients/norms" in columns:
        columns["gradients/norms"] = [row[:n] for row, n in zip(columns["gradients/norms"], lengths)]
    relevant = torch.full((len(tokenized), max_relevant, 2), -1, dtype=torch.int32)
    for row, tp in enumerate(tokenized):
        spans = [tp.example_spans[i] for i in tp.relevant_examples][:max_relevant]
        if spans:
            relevant[row, :len(spans)] = torch.tensor(spans, dtype=torch.int32)
    predicted = answer_logits.argmax(-1)
    columns.update({
        "examples/input_length": lengths,
        "examples/relevant_spans": relevant.numpy(),
        "examples/query_start": [tp.spans["query"][0] for tp in tokenized],
        "examples/query_end": [tp.spans["query"][1] for tp in tokenized],
        "examples/answer_position": [tp.answer_position for tp in tokenized],
        "examples/masks_start": [tp.spans["masks"][0] for tp in tokenized],
        "examples/masks_end": [tp.spans["masks"][1] for tp in tokenized],
        "examples/answer_id": layout.answer_ids.cpu().numpy(),
        "examples/predicted_id": predicted.cpu().numpy(),
        "examples/p_answer": stats["p_answer"].cpu().numpy(),
        "examples/entropy": stats["entropy"].cpu().numpy(),
        "examples/correct": (predicted == layout.answer_ids).cpu().numpy(),
        "examples/topk_ids": top.indices.cpu().numpy(),
        "examples/topk_probs": top.values.cpu().numpy(),
        "tokens/input_ids": [torch.tensor(tp.input_ids).numpy() for tp in tokenized],
    })
    return columns
