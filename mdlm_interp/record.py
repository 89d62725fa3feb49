"""Recording: task prompts -> batches -> one forward pass with recorder hooks -> rows of a store.

``record`` takes a loaded model (``load_model``) or any ``HookedRootModule`` with the standard hook
names plus its tokenizer, mask id and prediction offset, and a ``RecordConfig`` (what to record).
It plans one row per (example, condition), where a condition is (masks, filler, placement), writes
them batch by batch to an HDF5 store, and can resume a killed run. This module alone decides where
a recorder's results go in the store: recorder ``R`` of ``RECORDERS`` fills the group named by its
key, the always-on prediction fills ``examples``.

With ``RecordConfig.decode`` each batch is also decoded iteratively (``decode_batch``, group
``decode``). That is a step of its own, not a recorder: a recorder reduces the batch's one forward
pass from its layout, while decoding needs the token ids and runs a forward pass per denoising step,
with its own per-step hooks (``hooks.decode_trace``).
"""

import hashlib
import shlex
import sys
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

from mdlm_interp.batching import BatchLayout, collate
from mdlm_interp.decoding import DecodeConfig
from mdlm_interp.errors import UsageError
from mdlm_interp.hooks.decode_trace import AnswerSlotTrace
from mdlm_interp.hooks.recorders import AttentionRecorder, GradientRecorder, LensRecorder, PredictionRecorder
from mdlm_interp.models.loader import LoadedModel
from mdlm_interp.store import schema
from mdlm_interp.store.writer import Provenance, check_writable, open_writer
from mdlm_interp.tasks import TASK_NAMES, PromptConfig, record_seed, sample_prompt, single_token_words, tokenize_prompt

# --record item (and the store group its results fill) -> recorder class
RECORDERS = {
    "attention": AttentionRecorder,
    "gradients": GradientRecorder,
    "lens": LensRecorder,
}
RECORDABLE = tuple(RECORDERS)
LAST_NONMASK = 50  # the attribution table's "last 50 non-mask tokens"
MAX_PLANNED_ROWS = 2_000_000  # per store: every row's prompt is built before recording starts
FIELDS = {f.path: f for f in schema.DATA}


def as_tuple(value) -> tuple:
    """Return "a,b" or a sequence as a tuple (a bare int or str is one element)."""
    if isinstance(value, str):
        return tuple(part for part in value.split(",") if part)
    if isinstance(value, (int, bool)):
        return (value,)
    return tuple(value)


@dataclass(frozen=True)
class RecordConfig:
    """What a recording computes: everything that determines its rows.

    ``tasks``: "all" or task names; ``masks``: mask counts at the answer slot (n masks: the answer
    slot and n - 1 masks after it; causal models take none); ``filler`` (e.g. " ."): also record the
    filler control for every mask count above 1; ``placements``: "random", "relevant-at:K",
    "query-at:K"; ``n`` prompts per task; ``record``: any of attention, gradients, lens (the one-step
    prediction is always recorded); ``top_k`` token ids kept per row; ``chat``: wrap prompts in the
    family's chat template; ``decode``: also decode the answer slot and the masks after it
    iteratively (a ``decoding.DecodeConfig`` or its command-line form, e.g. "llada:steps=10"; None:
    no decoding). Values are normalised on construction (tasks expanded, lists as sorted or ordered
    tuples) and checked: a bad value raises ``UsageError`` naming it. The config as a dict is the
    store's ``settings`` (with the model's facts; ``decode`` only when set), compared field by field
    on resume.
    """

    tasks: tuple = ("all",)
    masks: tuple = (1,)
    filler: str | None = None
    placements: tuple = ("random",)
    n: int = 20
    n_relevant: int = 10
    n_distractor: int = 40
    record: tuple = RECORDABLE
    seed: int = 0
    top_k: int = 10
    chat: bool = False
    decode: DecodeConfig | None = None

    def __post_init__(self):
        tasks = as_tuple(self.tasks)
        tasks = TASK_NAMES if tasks == ("all",) else tasks
        if not tasks:
            raise UsageError("no task given: name tasks (see `mdlm-interp tasks list`) or all")
        for task in tasks:
            if task not in TASK_NAMES:
                raise UsageError(f"unknown task '{task}' (see `mdlm-interp tasks list`)")
        masks = tuple(int(m) for m in as_tuple(self.masks))
        if not masks or any(m < 1 for m in masks):
            raise UsageError(f"masks must be at least 1 (the first mask is the answer slot), got {list(masks)}")
        placements = as_tuple(self.placements)
        if not placements:
            raise UsageError("no placement given: use random, relevant-at:K or query-at:K")
        for placement in placements:
            PromptConfig(tasks[0], self.n_relevant, self.n_distractor, placement)
        record = tuple(sorted(as_tuple(self.record)))
        unknown = set(record) - set(RECORDABLE)
        if unknown:
            raise UsageError(f"unknown --record item(s) {sorted(unknown)}; choose from {', '.join(RECORDABLE)}")
        if self.n < 1 or self.top_k < 1:
            raise UsageError("n and top-k must be at least 1")
        decode = DecodeConfig.parse(self.decode) if isinstance(self.decode, str) else self.decode
        if decode is not None:
            decode.check(masks)
        for name, value in (("tasks", tuple(tasks)), ("masks", masks), ("placements", placements), ("record", record),
                            ("decode", decode)):
            object.__setattr__(self, name, value)

    def settings(self) -> dict:
        """Return the config as the JSON-ready dict written to a store's settings (``decode`` only when set,
        so stores recorded without it keep the settings they always had)."""
        settings = {name: list(value) if isinstance(value, tuple) else value
                    for name, value in asdict(self).items() if name != "decode"}
        if self.decode is not None:
            settings["decode"] = self.decode.settings()
        return settings

    def decode_steps(self) -> int:
        """Return the most denoising steps any condition takes (the store's ``steps`` dimension); 0 without decode."""
        return max(self.decode.steps_for(m) for m in self.masks) if self.decode is not None else 0

    def task_config(self) -> dict:
        """Return the prompt-building part of the settings (the store's ``task_config`` attribute)."""
        keep = ("tasks", "masks", "filler", "placements", "n", "n_relevant", "n_distractor", "chat")
        return {name: value for name, value in self.settings().items() if name in keep}

    def conditions(self, causal: bool) -> list["Condition"]:
        """Return the conditions in recording order: every (placement, masks); with a filler (not for a
        causal model), also the filler control for each mask count above 1."""
        conditions = [Condition(m, False, p) for p in self.placements for m in self.masks]
        if self.filler is not None and not causal:
            conditions += [Condition(m, True, p) for p in self.placements for m in self.masks if m > 1]
        return conditions


@dataclass(frozen=True)
class Condition:
    """How the prompt is asked: mask count at the answer slot, filler control, placement."""

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
    fingerprint: object  # () -> the weights fingerprint (computed once per recording)
    adapter: dict | None = None  # the LoRA adapter on the weights: {"path", "fingerprint", "merged"}

    @property
    def n_layers(self) -> int:
        """Number of transformer blocks."""
        return len(self.module.blocks)

    @property
    def d_vocab(self) -> int | None:
        """Vocabulary size of the model's output (None if its config does not say)."""
        vocab = getattr(getattr(self.module, "cfg", None), "d_vocab", None)
        return int(vocab) if vocab is not None else None

    @property
    def n_heads(self) -> int:
        """Number of attention (query) heads per block."""
        return int(self.module.cfg.n_heads)

    def facts(self) -> dict:
        """Return model_id, family, dtype and weights_fingerprint: the model's part of settings and provenance."""
        return {"model_id": self.model_id, "family": self.family, "dtype": self.dtype,
                "weights_fingerprint": self.fingerprint()}


def subject_from(model, tokenizer=None, mask_token_id=None, prediction_offset=None, causal=False,
                 chat=False) -> Subject:
    """Return a ``Subject`` from a ``LoadedModel`` or a HookedRootModule plus its facts."""
    if isinstance(model, LoadedModel):
        return Subject(model.model, model.tokenizer, model.mask_token_id, model.spec.prediction_offset,
                       model.spec.causal, model.spec.family, model.source, dtype_name(next(model.model.parameters()).dtype),
                       model.spec.chat_template if chat else None, model.config.max_seq_len, model.fingerprint,
                       model.adapter.facts() if model.adapter else None)
    if tokenizer is None or prediction_offset is None:
        raise UsageError("recording a bare module needs its tokenizer and prediction_offset")
    if not causal and mask_token_id is None:
        raise UsageError("the tokenizer has no mask token: a diffusion model needs mask_token_id")
    if chat:
        raise UsageError("chat mode needs a loaded model (its family gives the chat template)")
    cfg = getattr(model, "cfg", None)
    return Subject(model, tokenizer, mask_token_id, prediction_offset, causal, "custom", type(model).__name__,
                   dtype_name(next(model.parameters()).dtype), None, getattr(cfg, "n_ctx", None),
                   partial(module_fingerprint, model))


def dtype_name(dtype: torch.dtype) -> str:
    """Return a torch dtype's name as the store writes it: "float32", not "torch.float32"."""
    return str(dtype).removeprefix("torch.")


def module_fingerprint(module: torch.nn.Module) -> str:
    """Return a sha256 over a module's parameter names and values (for modules without a checkpoint)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


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
    conditions = config.conditions(subject.causal)
    n_rows = len(conditions) * len(config.tasks) * config.n
    if n_rows > MAX_PLANNED_ROWS:
        raise UsageError(f"{n_rows:,} rows planned, more than {MAX_PLANNED_ROWS:,} (prompts are prepared up "
                         "front): record fewer prompts or conditions per store")
    check_fits(subject, config)
    plan = [(c, t, i) for c in conditions for t in range(len(config.tasks)) for i in range(config.n)]
    prompts = plan_prompts(subject, config, plan)
    longest = max(len(tp.input_ids) for tp in prompts)
    if subject.max_length is not None and longest > subject.max_length:
        raise UsageError(f"prompts reach {longest} tokens, longer than the model's context of {subject.max_length}")

    facts = subject.facts()
    # batch_size is a setting: rows are padded to their batch's longest prompt, which moves floats a little
    settings = {**config.settings(), **facts, "batch_size": batch_size,
                **({"adapter": subject.adapter} if subject.adapter else {}), **({"shard": [rank, world]} if shard else {})}
    provenance = Provenance(command_line=command_line or shlex.join(sys.argv), task_config=config.task_config(),
                            seed=config.seed, **facts)
    dims = {"k": config.top_k, "relevant": max(config.n_relevant, 1), "layers": subject.n_layers,
            "heads": subject.n_heads, **({"steps": config.decode_steps()} if config.decode is not None else {})}
    groups = ("examples", "tokens", *config.record, *(("decode",) if config.decode is not None else ()))
    first, stop = len(plan) * rank // world, len(plan) * (rank + 1) // world
    with open_writer(out, settings=settings, provenance=provenance, groups=groups,
                     dims=dims, n_planned=stop - first, resume=resume, overwrite=overwrite) as writer:
        bar = tqdm_or_none(progress, total=stop - first, initial=writer.n_rows_done)
        done = first + writer.n_rows_done
        # batches always start at first + a multiple of batch_size, wherever a run was interrupted, so
        # every row has the same batch neighbours (and padding) as in an uninterrupted run
        resume_at = first + (writer.n_rows_done // batch_size) * batch_size if done < stop else stop
        for begin in range(resume_at, stop, batch_size):
            rows = range(begin, min(begin + batch_size, stop))
            batch = record_batch(subject, [prompts[r] for r in rows], config)
            batch.update(plan_columns(config, subject.causal, [plan[r] for r in rows], rows))
            skip = max(0, done - begin)  # rows of this batch that the interrupted run committed
            writer.append({path: values[skip:] for path, values in batch.items()})
            if bar is not None:
                bar.update(len(rows) - skip)
        writer.finish()
        if bar is not None:
            bar.close()
    return out


def check_fits(subject: Subject, config: RecordConfig) -> None:
    """Raise UsageError, before the plan's prompts are built, if prompts cannot fit the model's context:
    one prompt per task and placement (example 0, the most masks) is built and measured."""
    if subject.max_length is None:
        return
    most = 0 if subject.causal else max(config.masks)
    floor = most + config.n_relevant + config.n_distractor  # every example takes at least one token
    if floor > subject.max_length:
        raise UsageError(f"prompts reach at least {floor} tokens, longer than the model's context of "
                         f"{subject.max_length}")
    words = single_token_words(subject.tokenizer)
    for task in config.tasks:
        for placement in dict.fromkeys(config.placements):
            prompt = sample_prompt(PromptConfig(task, config.n_relevant, config.n_distractor, placement),
                                   record_seed(config.seed, 0), words)
            length = len(tokenize_prompt(prompt, subject.tokenizer, mask_token_id=subject.mask_token_id,
                                         causal=subject.causal, masks=most, filler=config.filler,
                                         chat_template=subject.chat_template).input_ids)
            if length > subject.max_length:
                raise UsageError(f"prompts reach {length} tokens, longer than the model's context of "
                                 f"{subject.max_length}")


def plan_prompts(subject: Subject, config: RecordConfig, plan: list) -> list:
    """Return the ``TokenizedPrompt`` of every planned (condition, task index, example index) row.

    Example i of a task is the same prompt (seed ``record_seed(config.seed, i)``) under every
    condition of a placement, and the same examples under every placement.
    """
    words = single_token_words(subject.tokenizer)
    sampled = {(task, p): [sample_prompt(PromptConfig(task, config.n_relevant, config.n_distractor, p),
                                         record_seed(config.seed, i), words) for i in range(config.n)]
               for p in dict.fromkeys(config.placements) for task in config.tasks}
    return [tokenize_prompt(sampled[(config.tasks[t], c.placement)][i], subject.tokenizer,
                            mask_token_id=subject.mask_token_id, causal=subject.causal,
                            masks=0 if subject.causal else c.masks, filler=config.filler if c.filler else None,
                            chat_template=subject.chat_template)
            for c, t, i in plan]


def plan_columns(config: RecordConfig, causal: bool, planned: list, rows) -> dict:
    """Return the /examples columns that say which row this is: row, example, task, masks, filler, placement."""
    return {
        "examples/row": list(rows),
        "examples/example": [t * config.n + i for _, t, i in planned],
        "examples/task": [config.tasks[t] for _, t, _ in planned],
        "examples/masks": [0 if causal else c.masks for c, _, _ in planned],
        "examples/filler": [c.filler for c, _, _ in planned],
        "examples/placement": [c.placement for c, _, _ in planned],
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


def recorder_factories(config: RecordConfig) -> dict:
    """Return store group -> recorder factory ``(module, layout) -> Recorder`` for ``config``: the
    prediction (group "examples") and every recorder of ``config.record``."""
    return {"examples": partial(PredictionRecorder, top_k=config.top_k),
            **{name: RECORDERS[name] for name in config.record}}


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
    with torch.set_grad_enabled(any(recorder.needs_grad for recorder in recorders.values())):
        logits = subject.module.run_with_hooks(batch.input_ids, attention_mask=batch.attention_mask, fwd_hooks=hooks,
                                               **kwargs)
        results = {f"{group}/{name}": value.detach().cpu() for group, recorder in recorders.items()
                   for name, value in recorder.results(logits).items()}
    if config.decode is not None:
        results.update({f"decode/{name}": value.cpu() for name, value in decode_batch(subject, batch, config).items()})
    valid = batch.layout.valid.cpu()
    columns = {path: [row[keep].numpy() for row, keep in zip(value, valid)] if FIELDS[path].vlen else value.numpy()
               for path, value in results.items()}
    columns.update(prompt_columns(prompts, max(config.n_relevant, 1)))
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


def decode_batch(subject: Subject, batch, config: RecordConfig) -> dict[str, torch.Tensor]:
    """Decode every row's answer slot and the tokens after it with ``config.decode``; return the
    ``AnswerSlotTrace`` results (plain names -> one value per row; per-step arrays padded to
    ``config.decode_steps()`` steps).

    Rows with the same number of appended tokens and of masks among them (one condition) decode
    together, so that the samplers' batch-wide schedules are each row's own.
    """
    layout = batch.layout
    mask_id = subject.mask_token_id
    appended = layout.appended
    length = appended.sum(-1)
    masks = ((batch.input_ids == mask_id) & appended).sum(-1)
    start = appended.float().argmax(-1)
    parts = []
    for key in torch.unique(torch.stack([length, masks], -1), dim=0):
        rows = ((length == key[0]) & (masks == key[1])).nonzero()[:, 0]
        width = int(layout.valid[rows].any(0).nonzero().max()) + 1  # drop padding columns no row of the group needs
        group = BatchLayout(**{name: value[rows][:, :width] if value.dim() == 2 else value[rows]
                               for name, value in vars(layout).items()})
        steps = config.decode.steps_for(int(key[0]))
        trace = AnswerSlotTrace(subject.module, group, mask_token_id=mask_id, steps=steps,
                                max_steps=config.decode_steps())
        attention_mask = batch.attention_mask[rows, :width]
        with subject.module.hooks(fwd_hooks=trace.fwd_hooks()):
            decoded = config.decode.run(subject.module, batch.input_ids[rows, :width], mask_token_id=mask_id,
                                        prediction_offset=subject.prediction_offset, gen_start=start[rows],
                                        gen_length=int(key[0]), on_step=trace.on_step, forward_kwargs=trace.forward_kwargs,
                                        attention_mask=None if bool(attention_mask.all()) else attention_mask)
        parts.append((rows, trace.results(decoded)))
    out = {}
    for name, value in parts[0][1].items():
        out[name] = torch.empty((len(length), *value.shape[1:]), dtype=value.dtype, device=value.device)
        for rows, results in parts:
            out[name][rows] = results[name]
    return out
