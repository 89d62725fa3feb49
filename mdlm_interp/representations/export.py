"""Exporting activations: a prompt plan run through a model, its activations at chosen sites and
position groups streamed into an activation store (``activations``), batch by batch, resumable and
shardable over processes (the ``mdlm-interp activations`` command).

Items of the store are prompts (one plan row each: a prompt under a condition); a resumed run skips
the store's ``n_items_done`` rows of the plan. A sharded run (``shard=(rank, world)``) exports the
rank's contiguous block of plan rows into ``shard_path(out, rank, world)``; ``merge_activation_stores``
joins complete shards into one store of HDF5 virtual datasets (the shards stay next to it).

Each row carries the labels ``LABELS``: masks (n), mask_ratio (n / prompt length in tokens), filler
(1 for the filler control), prompt_length, correct (the readout's argmax is the answer, 0 / 1) and
answer_loss (cross-entropy of the answer at the readout, nats) of its prompt, and token_id (the token
at the row's position).
"""

import json
import os
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import h5py

from mdlm_interp.batching import collate
from mdlm_interp.errors import UsageError
from mdlm_interp.outputs import OutputLock
from mdlm_interp.plan import PromptPlan, check_context, plan_prompts, prompt_key
from mdlm_interp.record import shard_path
from mdlm_interp.representations.activations import FORMAT, STRING_COLUMNS, open_activation_writer
from mdlm_interp.representations.collect import POSITION_GROUPS, collect_activations, store_rows
from mdlm_interp.representations.splice import site_width
from mdlm_interp.store.writer import building_path, check_writable
from mdlm_interp.subject import provenance, run_settings, subject_from

LABELS = ("masks", "mask_ratio", "filler", "prompt_length", "correct", "answer_loss", "token_id")


def condition_label(condition) -> str:
    """Return the row label of a ``plan.Condition``: "masks=N" or "filler=N", then ",PLACEMENT" unless
    the placement is random."""
    text = f"{'filler' if condition.filler else 'masks'}={condition.masks}"
    return text if condition.placement == "random" else f"{text},{condition.placement}"


def check_groups(groups) -> tuple:
    """Return ``groups`` as a tuple; a one-line UsageError for an unknown or repeated group, or none."""
    groups = tuple(groups)
    unknown = [g for g in groups if g not in POSITION_GROUPS]
    if unknown or not groups or len(set(groups)) != len(groups):
        raise UsageError(f"unknown or repeated position group(s) {unknown or list(groups)}; choose from "
                         f"{', '.join(POSITION_GROUPS)}")
    return groups


def export_activations(model, *, out, plan: PromptPlan, sites, groups, dtype: str = "float16",
                       batch_size: int = 8, chunk_rows: int = 256, resume: bool = False, progress: bool = True,
                       command_line: str | None = None, shard: tuple[int, int] | None = None,
                       interventions: dict | None = None) -> Path:
    """Export the activations of ``plan``'s rows at ``sites`` (TransformerLens hook names) and position
    ``groups`` into the activation store ``out`` (a shard of it with ``shard``); return its path.

    ``model``: a ``LoadedModel``. Rows of the store: per prompt, its positions of the groups (a
    position in the first group that holds it), labelled by prompt key, condition, group, position and
    ``LABELS``. ``dtype``: the stored dtype (float32, float16, bfloat16). ``batch_size`` prompts per
    forward pass (a setting: a resume must use the same); ``chunk_rows``: rows per HDF5 chunk and per
    commit (``activations``). Bad input (an unknown site or group, a
    causal model given masks) is a one-line UsageError before anything is written. ``interventions``:
    the report of the SAEs / steering put into the model (``cli.common.apply_interventions``), kept in the
    provenance; what is installed in the model is in the settings (``subject.run_settings``: a resume must
    have the same).
    """
    groups = check_groups(groups)
    rank, world = shard or (0, 1)
    path = shard_path(out, rank, world) if shard else Path(out)
    check_writable(path, resume=resume)
    if batch_size < 1 or chunk_rows < 1:
        raise UsageError("batch size and chunk rows must be at least 1")
    subject = subject_from(model, chat=plan.chat)
    if subject.causal and plan.masks != (1,):
        raise UsageError("a causal model takes no masks (its answer is the next token); drop --masks")
    sites = list(dict.fromkeys(sites))
    widths = {site: site_width(subject.module, site) for site in sites}
    rows = plan.rows(plan.conditions(subject.causal))
    check_context(subject, plan)
    first, stop = len(rows) * rank // world, len(rows) * (rank + 1) // world
    facts = subject.facts()
    settings = run_settings(subject, plan, facts, sites=sites, positions=list(groups), batch_size=batch_size,
                            **({"shard": [rank, world]} if shard else {}))
    meta = {**asdict(provenance(subject, plan, facts, command_line)),
            **({"interventions": interventions} if interventions else {})}
    writer = open_activation_writer(path, sites=widths, dtype=dtype, labels=LABELS, settings=settings,
                                    provenance=json.loads(json.dumps(meta, default=str)), chunk_rows=chunk_rows,
                                    resume=resume)
    device = next(subject.module.parameters()).device
    with writer:
        begin_at = first + writer.n_items_done
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=stop - first, initial=begin_at - first, unit="prompt", desc="activations")
        for begin in range(begin_at, stop, batch_size):
            planned = rows[begin:min(begin + batch_size, stop)]
            prompts = plan_prompts(subject, plan, planned)
            batch = collate(prompts, subject.prediction_offset, device=device)
            collected = collect_activations(subject.module, batch, sites, groups)
            lengths = [len(tp.input_ids) for tp in prompts]
            masks = [0 if subject.causal else row.condition.masks for row in planned]
            labels = {"masks": masks, "mask_ratio": [m / n for m, n in zip(masks, lengths)],
                      "filler": [int(row.condition.filler) for row in planned], "prompt_length": lengths,
                      "correct": collected["correct"].float().tolist(), "answer_loss": collected["answer_loss"].tolist()}
            keys = [prompt_key(plan.seed, plan.tasks[row.task], plan.example(row), plan.n) for row in planned]
            appended = store_rows(collected, keys, [condition_label(row.condition) for row in planned], labels)
            appended["labels"]["token_id"] = [prompts[r].input_ids[p] for r, p in
                                              zip(collected["row"].tolist(), collected["position"].tolist())]
            writer.append(**appended)
            if bar is not None:
                bar.update(len(planned))
        writer.finish()
        if bar is not None:
            bar.close()
    return path


def merge_activation_stores(shards, out, *, overwrite: bool = False) -> Path:
    """Write an activation store at ``out`` whose rows are the rows of ``shards`` (complete activation
    stores that agree on everything but settings["shard"]) in order, as HDF5 virtual datasets; return
    its path. One-line UsageError for a missing, incomplete or disagreeing shard."""
    from mdlm_interp.representations.activation_reader import open_activations

    shards = [Path(s) for s in shards]
    if not shards:
        raise UsageError("no shard stores to merge")
    out = check_writable(out, overwrite=overwrite)
    counts, items, first, attrs, layouts = [], 0, None, None, {}
    for shard in shards:
        with open_activations(shard) as store:
            if store.status != "complete":
                raise UsageError(f"cannot merge {shard}: its status is {store.status!r}, not 'complete'")
            common = {"settings": {k: v for k, v in store.settings.items() if k != "shard"}, "sites": store.sites,
                      "dtype": store.dtype, "labels": store.labels}
            if first is None:
                first, attrs = common, dict(store.file.attrs)
                names = ([f"activations/{site}" for site in store.sites] + [f"rows/{c}" for c in STRING_COLUMNS]
                         + ["rows/position"] + [f"labels/{name}" for name in store.labels])
                layouts = {name: (store.file[name].dtype, store.file[name].shape[1:]) for name in names}
            elif common != first:
                raise UsageError(f"cannot merge {shard} with {shards[0]}: their settings, sites, dtype or labels differ")
            counts.append(store.n_rows)
            items += int(store.file.attrs["n_items_done"])
    total = sum(counts)
    sources = [os.path.relpath(shard.resolve(), out.resolve().parent) for shard in shards]
    with OutputLock(out):
        building = building_path(out)
        with h5py.File(building, "w") as file:
            for name, (h5_dtype, row_shape) in layouts.items():
                layout = h5py.VirtualLayout(shape=(total, *row_shape), dtype=h5_dtype)
                start = 0
                for source, n in zip(sources, counts):
                    if n:
                        layout[start:start + n] = h5py.VirtualSource(source, name, shape=(n, *row_shape))
                    start += n
                file.create_virtual_dataset(name, layout)
            attrs.update(format=FORMAT, settings=json.dumps(first["settings"], sort_keys=True), n_rows_done=total,
                         n_items_done=items,
                         status="complete", merged_from=json.dumps(sources),
                         created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
            for name, value in attrs.items():
                file.attrs[name] = value
        os.replace(building, out)
    return out
