"""Recording: task prompts -> batches -> one forward pass with recorder hooks -> rows of a store.

``record`` takes a loaded model (``load_model``) or any ``HookedRootModule`` with the standard hook
names plus its tokenizer, mask id and prediction offset, and a ``RecordConfig`` (what to record).
Its rows are the plan's (``plan.PromptPlan.rows``: one per example and condition, where a condition is
(masks, filler, placement)); it writes them batch by batch to an HDF5 store with the settings and
provenance ``subject`` builds, and can resume a killed run. This module alone decides where
a recorder's results go in the store: recorder ``R`` of ``RECORDERS`` fills the group named by its
key, the always-on prediction fills ``examples``.

With ``RecordConfig.decode`` each batch is also decoded iteratively (``decode_batch``, group
``decode``). That is a step of its own, not a recorder: a recorder reduces the batch's one forward
pass from its layout, while decoding needs the token ids and runs a forward pass per denoising step,
with its own per-step hooks (``hooks.decode_trace``).
"""

from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from mdlm_interp.batching import BatchLayout, collate
from mdlm_interp.decoding import DecodeConfig
from mdlm_interp.errors import UsageError
from mdlm_interp.hooks.decode_trace import AnswerSlotTrace
from mdlm_interp.hooks.recorders import (AttentionRecorder, AttentionRowRecorder, GradientRecorder, LensRecorder,
                                         PredictionRecorder)
from mdlm_interp.models.readout import run_reading
from mdlm_interp.hooks.routing import RoutingRecorder, n_experts
from mdlm_interp.plan import MAX_PLANNED_ROWS, Condition, PromptPlan, as_tuple, check_context, plan_prompts
from mdlm_interp.store import schema
from mdlm_interp.store.writer import check_writable, open_writer
from mdlm_interp.subject import Subject, dtype_name, module_fingerprint, provenance, run_settings, subject_from

# importable from here as before the plan and the subject had modules of their own
__all__ = ["MAX_PLANNED_ROWS", "Condition", "PromptPlan", "Subject", "dtype_name", "module_fingerprint",
           "plan_prompts", "subject_from", "RecordConfig", "RECORDERS", "RECORDABLE", "record", "record_batch",
           "decode_batch", "plan_columns", "block_columns", "with_family_blocks", "with_routing", "prompt_columns", "recorder_factories", "shard_path", "tqdm_or_none"]

# --record item (and the store group its results fill) -> recorder class
RECORDERS = {
    "attention": AttentionRecorder,
    "gradients": GradientRecorder,
    "lens": LensRecorder,
    "routing": RoutingRecorder,
}
RECORDABLE = ("attention", "gradients", "lens")  # the default; routing is added on mixture-of-experts models
LAST_NONMASK = 50  # the attribution table's "last 50 non-mask tokens"
MAX_KEEP_EXAMPLES = 32  # --keep-examples bound: each kept row costs 4 bytes x tokens x layers x heads
FIELDS = {f.path: f for f in schema.DATA}


@dataclass(frozen=True)
class RecordConfig(PromptPlan):
    """What a recording computes: everything that determines its rows.

    The prompts are a ``plan.PromptPlan`` (tasks, masks, filler, placements, n, n_relevant,
    n_distractor, seed, chat); besides them: ``record``: any of attention, gradients, lens, routing (the one-step
    prediction is always recorded); ``top_k`` token ids kept per row; ``decode``: also decode the answer
    slot and the masks after it iteratively (a ``decoding.DecodeConfig`` or its command-line form, e.g.
    "llada:steps=10"; None: no decoding); ``keep_examples`` K: keep the full attention rows from the readout
    position for the first K examples of each condition (``kept``; group attention_rows; 0: none);
    ``block_length``: read the answer under block attention with blocks of that many positions, as LLaDA2's
    block sampler does (0: full attention; None: the family's own, block attention of the family's block length
    for a block-diffusion family (LLaDA2: 32), resolved by ``record``). Values are normalised on construction
    and checked: a bad value
    raises ``UsageError`` naming it. The config as a dict is the store's ``settings`` (with the model's
    facts; ``decode`` only when set), compared field by field on resume.
    """

    record: tuple = RECORDABLE
    top_k: int = 10
    decode: DecodeConfig | None = None
    keep_examples: int = 0
    block_length: int | None = None

    def __post_init__(self):
        super().__post_init__()
        record = tuple(sorted(as_tuple(self.record)))
        unknown = set(record) - set(RECORDERS)
        if unknown:
            raise UsageError(f"unknown --record item(s) {sorted(unknown)}; choose from {', '.join(RECORDERS)}")
        if self.top_k < 1:
            raise UsageError("top-k must be at least 1")
        if not 0 <= self.keep_examples <= MAX_KEEP_EXAMPLES:
            raise UsageError(f"--keep-examples must be between 0 and {MAX_KEEP_EXAMPLES}")
        decode = DecodeConfig.parse(self.decode) if isinstance(self.decode, str) else self.decode
        if self.block_length is not None and (isinstance(self.block_length, bool) or not isinstance(
                self.block_length, int) or self.block_length < 0):
            raise UsageError(f"--block-length must be an integer >= 0 (0: full attention), got {self.block_length!r}")
        if self.block_length and decode is not None:
            raise UsageError("--decode runs LLaDA's or Dream's sampler, without block attention: record with "
                             "--block-length 0 (full attention) to decode")
        if decode is not None:
            decode.check(self.masks)
        object.__setattr__(self, "record", record)
        object.__setattr__(self, "decode", decode)

    def settings(self) -> dict:
        """Return the config as the JSON-ready dict written to a store's settings (``decode`` only when set,
        so stores recorded without it keep the settings they always had)."""
        settings = {**super().settings(), "record": list(self.record), "top_k": self.top_k}
        if self.decode is not None:
            settings["decode"] = self.decode.settings()
        if self.keep_examples:
            settings["keep_examples"] = self.keep_examples
        if self.block_length:
            settings["block_length"] = self.block_length
        return settings

    def kept(self, row) -> bool:
        """Return whether ``row`` (a ``plan.PlanRow``) keeps its attention rows: one of the first
        ``keep_examples`` of its condition, taking prompt 0 of every task in turn, then prompt 1, ..."""
        return row.prompt * len(self.tasks) + row.task < self.keep_examples

    def decode_steps(self) -> int:
        """Return the most denoising steps any condition takes (the store's ``steps`` dimension); 0 without decode."""
        return max(self.decode.steps_for(m) for m in self.masks) if self.decode is not None else 0


def record(model, tokenizer=None, *, out, config: RecordConfig | None = None, mask_token_id: int | None = None,
           prediction_offset: int | None = None, causal: bool = False, batch_size: int = 8, resume: bool = False,
           overwrite: bool = False, progress: bool = True, command_line: str | None = None,
           shard: tuple[int, int] | None = None, **config_fields) -> Path:
    """Record ``config.n`` prompts per task under every condition into the HDF5 store ``out``; return its path.

    ``model``: a ``LoadedModel``, or any HookedRootModule with the standard hook names (then pass
    ``tokenizer``, ``prediction_offset``, ``causal`` and, for a diffusion model, ``mask_token_id``).
    ``config``: a ``RecordConfig``, or its fields as keywords (``record(lm, out=..., masks=[1, 50], n=20)``).
    Rows are (condition, task, example), in that order, recorded in batches of ``batch_size`` rows
    (part of the settings: a resume must use the same). Bad input raises ``UsageError`` before any
    work; an existing ``out`` needs ``resume`` (same settings) or ``overwrite`` (the old store is
    replaced only once the new one is complete). ``shard=(rank, world)``
    records only the rank's contiguous block of rows into ``shard_path(out, rank, world)`` (merge the
    shards with ``store.merge_stores``).
    """
    if config is None:
        config = RecordConfig(**config_fields)
    elif config_fields:
        raise TypeError(f"pass either config or its fields, not both ({sorted(config_fields)})")
    rank, world = shard or (0, 1)
    out = check_writable(shard_path(out, rank, world) if shard else out, resume=resume, overwrite=overwrite)
    subject = subject_from(model, tokenizer, mask_token_id, prediction_offset, causal, config.chat)
    if batch_size < 1:
        raise UsageError("batch size must be at least 1")
    if subject.causal and config.masks != (1,):
        raise UsageError("a causal model takes no masks (its answer is the next token); drop --masks")
    if subject.causal and config.decode is not None:
        raise UsageError("a causal model cannot be decoded by unmasking (it reads no masks); drop --decode")
    if subject.d_vocab is not None and config.top_k > subject.d_vocab:
        raise UsageError(f"top-k {config.top_k} is larger than the vocabulary ({subject.d_vocab} tokens)")
    config = with_routing(with_family_blocks(config, subject), subject)
    if config.block_length and subject.causal:
        raise UsageError("a causal model reads no masks: block attention changes nothing; drop --block-length")
    plan = config.rows(config.conditions(subject.causal))
    check_context(subject, config)
    prompts = plan_prompts(subject, config, plan)

    facts = subject.facts()
    # batch_size is a setting: rows are padded to their batch's longest prompt, which moves floats a little
    settings = run_settings(subject, config, facts, batch_size=batch_size, **({"shard": [rank, world]} if shard else {}))
    dims = {"k": config.top_k, "relevant": max(config.n_relevant, 1), "layers": subject.n_layers,
            "heads": subject.n_heads, **({"steps": config.decode_steps()} if config.decode is not None else {}),
            **({"experts": n_experts(subject.module)} if "routing" in config.record else {})}
    groups = ("examples", "tokens", *config.record, *(("decode",) if config.decode is not None else ()),
              *(("attention_rows",) if config.keep_examples else ()), *(("blocks",) if config.block_length else ()))
    first, stop = len(plan) * rank // world, len(plan) * (rank + 1) // world
    with open_writer(out, settings=settings, provenance=provenance(subject, config, facts, command_line),
                     groups=groups, dims=dims, n_planned=stop - first, resume=resume, overwrite=overwrite) as writer:
        bar = tqdm_or_none(progress, total=stop - first, initial=writer.n_rows_done)
        done = first + writer.n_rows_done
        # batches always start at first + a multiple of batch_size, wherever a run was interrupted, so
        # every row has the same batch neighbours (and padding) as in an uninterrupted run
        resume_at = first + (writer.n_rows_done // batch_size) * batch_size if done < stop else stop
        for begin in range(resume_at, stop, batch_size):
            rows = range(begin, min(begin + batch_size, stop))
            batch = record_batch(subject, [prompts[r] for r in rows], config,
                                 recorder_factories(config, kept=[config.kept(plan[r]) for r in rows]))
            batch.update(plan_columns(config, subject.causal, [plan[r] for r in rows], rows))
            skip = max(0, done - begin)  # rows of this batch that the interrupted run committed
            writer.append({path: values[skip:] for path, values in batch.items()})
            if bar is not None:
                bar.update(len(rows) - skip)
        writer.finish()
        if bar is not None:
            bar.close()
    return out


def with_routing(config: RecordConfig, subject: Subject) -> RecordConfig:
    """Return ``config`` recording routing on a mixture-of-experts model (``hooks.routing``) whatever it
    asked; ``UsageError`` if it asks for routing on a dense model."""
    from dataclasses import replace

    if not n_experts(subject.module):
        if "routing" in config.record:
            raise UsageError("--record routing needs a mixture-of-experts model (LLaDA-MoE, LLaDA2); this one is "
                             "dense")
        return config
    return config if "routing" in config.record else replace(config, record=config.record + ("routing",))


def with_family_blocks(config: RecordConfig, subject: Subject) -> RecordConfig:
    """Return ``config`` with its block length resolved: a given one stays (0: full attention, stored as
    None); None becomes the family's block length (``FamilySpec.block_length``: LLaDA2's sampler's 32)."""
    from dataclasses import replace

    from mdlm_interp.models.families import FAMILIES

    length = config.block_length
    if length is None:
        spec = FAMILIES.get(subject.family)
        length = spec.block_length if spec is not None else None
    return replace(config, block_length=length or None)


def block_columns(prompts: list, block_length: int, mask_token_id: int) -> dict:
    """Return the /blocks columns: per row the first position of the answer slot's block of ``block_length``
    positions and how many of the n masks (the answer slot's mask and the masks after it) lie in it."""
    starts, counts = [], []
    for tp in prompts:
        start = tp.answer_position // block_length * block_length
        block = tp.input_ids[start:start + block_length]
        starts.append(start)
        counts.append(sum(1 for i, token in enumerate(block, start) if token == mask_token_id
                          and i >= tp.answer_position))
    return {"blocks/block_start": starts, "blocks/masks_in_block": counts}


def plan_columns(config: RecordConfig, causal: bool, planned: list, rows) -> dict:
    """Return the /examples columns that say which row this is: row, example, task, masks, filler, placement
    (``planned``: the rows' ``plan.PlanRow``s)."""
    return {
        "examples/row": list(rows),
        "examples/example": [config.example(row) for row in planned],
        "examples/task": [config.tasks[row.task] for row in planned],
        "examples/masks": [0 if causal else row.condition.masks for row in planned],
        "examples/filler": [row.condition.filler for row in planned],
        "examples/placement": [row.condition.placement for row in planned],
    }


def shard_path(out, rank: int, world: int) -> Path:
    """Return the store path of shard ``rank`` of ``world`` for the merged store ``out``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.shard{rank}-of-{world}{out.suffix}")


def tqdm_or_none(enabled: bool, **kwargs):
    """Return a tqdm progress bar (over rows, "recording", unless ``kwargs`` say otherwise), or None when
    progress is off."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(**{"unit": "row", "desc": "recording", **kwargs})


def recorder_factories(config: RecordConfig, kept: list | None = None) -> dict:
    """Return store group -> recorder factory ``(module, layout) -> Recorder`` for ``config``: the
    prediction (group "examples"), every recorder of ``config.record`` and, with ``config.keep_examples``,
    the attention rows of the batch rows flagged in ``kept`` (one bool per row; default none)."""
    kept_rows = {"attention_rows": partial(AttentionRowRecorder, kept=kept or [])} if config.keep_examples else {}
    return {"examples": partial(PredictionRecorder, top_k=config.top_k),
            **{name: RECORDERS[name] for name in config.record}, **kept_rows}


def record_batch(subject: Subject, prompts: list, config: RecordConfig, factories: dict | None = None) -> dict:
    """Run one forward pass (and a backward pass when a recorder needs one) over a batch; return its
    store columns: dataset path -> one value per row, without the plan columns (``plan_columns``).

    ``factories`` (default ``recorder_factories(config)``) maps store groups to recorder factories;
    pass your own to record differently (e.g. attention from patterns instead of probes).
    """
    device = next(subject.module.parameters()).device
    batch = collate(prompts, subject.prediction_offset, last_k=LAST_NONMASK, device=device)
    recorders = {group: make(subject.module, batch.layout) for group, make in (factories or recorder_factories(config)).items()}
    hooks = [hook for recorder in recorders.values() for hook in recorder.fwd_hooks()]
    kwargs = {k: v for recorder in recorders.values() for k, v in recorder.forward_kwargs().items()}
    blocks = subject.module.block_attention(config.block_length) if config.block_length else nullcontext()
    with torch.set_grad_enabled(any(recorder.needs_grad for recorder in recorders.values())), blocks:
        # recorders read the logits at the readout only
        logits = run_reading(subject.module, batch.input_ids, batch.layout.readout[:, None], hooks,
                             attention_mask=batch.attention_mask, **kwargs)
        results = {f"{group}/{name}": value.detach().cpu() if isinstance(value, torch.Tensor) else value
                   for group, recorder in recorders.items() for name, value in recorder.results(logits).items()}
    if config.decode is not None:
        decoded = decode_batch(subject, batch, config, [Condition.of(tp) for tp in prompts])
        results.update({f"decode/{name}": value.cpu() for name, value in decoded.items()})
    valid = batch.layout.valid.cpu()
    columns = {path: value if isinstance(value, list)  # per-row arrays a recorder trimmed itself
               else [row[keep].numpy() for row, keep in zip(value, valid)] if FIELDS[path].vlen else value.numpy()
               for path, value in results.items()}
    columns.update(prompt_columns(prompts, max(config.n_relevant, 1)))
    if config.block_length:
        columns.update(block_columns(prompts, config.block_length, subject.mask_token_id))
    return columns


def prompt_columns(prompts: list, max_relevant: int) -> dict:
    """Return the /examples and /tokens columns that come from the prompts themselves (lengths, spans,
    answer, input ids); relevant_spans is [rows, max_relevant, 2], padded with -1."""
    relevant = torch.full((len(prompts), max_relevant, 2), -1, dtype=torch.int32)
    for row, tp in enumerate(prompts):
        spans = [tp.example_spans[i] for i in tp.relevant_examples][:max_relevant]
        if spans:
            relevant[row, :len(spans)] = torch.tensor(spans, dtype=torch.int32)
    return {
        "examples/input_length": [len(tp.input_ids) for tp in prompts],
        "examples/relevant_spans": relevant.numpy(),
        "examples/query_start": [tp.spans["query"][0] for tp in prompts],
        "examples/query_end": [tp.spans["query"][1] for tp in prompts],
        "examples/answer_position": [tp.answer_position for tp in prompts],
        "examples/masks_start": [tp.spans["masks"][0] for tp in prompts],
        "examples/masks_end": [tp.spans["masks"][1] for tp in prompts],
        "examples/answer_id": [tp.answer_id for tp in prompts],
        "tokens/input_ids": [torch.tensor(tp.input_ids).numpy() for tp in prompts],
    }


def decode_batch(subject: Subject, batch, config: RecordConfig, conditions: list) -> dict[str, torch.Tensor]:
    """Decode every row's answer slot and the tokens after it with ``config.decode``; return the
    ``AnswerSlotTrace`` results (plain names -> one value per row; per-step arrays padded to
    ``config.decode_steps()`` steps). ``conditions``: each row's ``plan.Condition``.

    Rows of one condition (the same number of tokens to decode, and of masks among them) decode
    together, so that the samplers' batch-wide schedules are each row's own.
    """
    layout = batch.layout
    mask_id = subject.mask_token_id
    slot = layout.answer.float().argmax(-1)  # the answer slot: where decoding starts
    keys = [(c.masks, 1 if c.filler else c.masks) for c in conditions]  # (tokens decoded, masks among them)
    parts = []
    for key in sorted(set(keys)):
        rows = torch.tensor([row for row, k in enumerate(keys) if k == key], device=slot.device)
        width = int(layout.valid[rows].any(0).nonzero().max()) + 1  # drop padding columns no row of the group needs
        group = BatchLayout(**{name: value[rows][:, :width] if value.dim() == 2 else value[rows]
                               for name, value in vars(layout).items()})
        trace = AnswerSlotTrace(subject.module, group, slot[rows], mask_token_id=mask_id,
                                steps=config.decode.steps_for(key[0]), max_steps=config.decode_steps())
        attention_mask = batch.attention_mask[rows, :width]
        with subject.module.hooks(fwd_hooks=trace.fwd_hooks()):
            decoded = config.decode.run(subject.module, batch.input_ids[rows, :width], mask_token_id=mask_id,
                                        prediction_offset=subject.prediction_offset, gen_start=slot[rows],
                                        gen_length=key[0], on_step=trace.on_step, forward_kwargs=trace.forward_kwargs,
                                        attention_mask=None if bool(attention_mask.all()) else attention_mask,
                                        keep_logits=group.readout[:, None])
        parts.append((rows, trace.results(decoded)))
    out = {}
    for name, value in parts[0][1].items():
        out[name] = torch.empty((len(keys), *value.shape[1:]), dtype=value.dtype, device=value.device)
        for rows, results in parts:
            out[name][rows] = results[name]
    return out
