"""Step caches: decode the plan's prompts and keep chosen hook sites at chosen steps and positions in a steps store.

Each prompt (its answer slot and the n - 1 masks after it) is decoded by a sampler, one prompt at a
time; at every step one row is made (``steps.schemas.STEPS``): the canvas before and after the step,
which positions were masks and which were unmasked, the prediction for the answer slot, the attention
mass every key position receives (for attention sinks; from ``attn.hook_pattern``) and the cached
activations. Rows are committed every min(steps, ``MAX_ROWS_PER_COMMIT``) steps (the file is an HDF5 SWMR
file, readable while written, with ``n_rows_done`` rows whole), so memory holds at most that many steps.
``resume`` continues a killed run with the same settings: the prompts whose every step was written are
kept, the rest decoded again.
"""

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mdlm_interp.errors import UsageError
from mdlm_interp.models.hook_names import hook_name
from mdlm_interp.steps.schemas import STEPS
from mdlm_interp.steps.trajectory import SITE_KINDS, StepClock, decode, trajectory_of

MAX_ROWS_PER_COMMIT = 16  # steps written together (one HDF5 write per dataset): at most this many wait in memory


def punctuation_ids(tokenizer, ids) -> set:
    """Return the ids among ``ids`` whose token text is only punctuation or whitespace (not empty)."""
    import string

    marks = set(string.punctuation) | set(string.whitespace)
    out = set()
    for token in set(int(i) for i in ids):
        text = tokenizer.decode([token])
        if text and all(c in marks for c in text):
            out.add(token)
    return out


class StepRowHooks:
    """Hooks that fill one step's row while the step's forward pass runs: the cached activations
    ``[sites, cached_layers, positions, d]`` (at steps in ``cache_steps``) and the attention each key
    receives ``[layers, heads, pos]`` (with ``attention``)."""

    def __init__(self, sites, layers, positions, n_layers: int, clock: StepClock, cache_steps: set, attention: bool):
        self.sites, self.layers, self.positions = list(sites), list(layers), positions
        self.n_layers, self.clock, self.cache_steps, self.attention = n_layers, clock, cache_steps, attention
        self.activations: dict = {}
        self.received: dict = {}

    def fwd_hooks(self) -> list:
        """Return [(hook name, fn)] for every cached (site, layer) and, with attention, every layer's pattern."""
        hooks = [(hook_name(site, layer), self._keep(s, i)) for s, site in enumerate(self.sites)
                 for i, layer in enumerate(self.layers)]
        if self.attention:
            hooks += [(hook_name("pattern", layer), self._pattern(layer)) for layer in range(self.n_layers)]
        return hooks

    def _keep(self, s: int, i: int):
        def keep(activation, hook):
            if self.clock.step in self.cache_steps:
                self.activations[(s, i)] = activation[0, self.positions].detach().float().flatten(1).cpu()
        return keep

    def _pattern(self, layer: int):
        def reduce(pattern, hook):  # [batch, head, query, key] -> [head, key]
            self.received[layer] = pattern[0].detach().float().mean(1).cpu()
        return reduce


class StepsWriter:
    """Writes a steps store row by row (see the module docstring); ``open_steps_writer`` returns one. Rows
    wait in memory until ``rows_per_commit`` of them are written together (``commit``), so memory holds at
    most that many steps."""

    def __init__(self, file, path: Path, lock, publish_to: Path | None, rows_per_commit: int = 1):
        self.file, self.path, self.lock, self.publish_to = file, path, lock, publish_to
        self.n_done = int(file.attrs["n_rows_done"])
        self.n_planned = int(file.attrs["n_rows"])
        self.datasets = {field.path: file[field.path] for field in STEPS.data}
        self.rows_per_commit = max(1, int(rows_per_commit))
        self.pending: list[tuple[int, dict]] = []

    def write(self, row: int, values: dict) -> None:
        """Add ``values`` (dataset path -> one row) as row ``row`` (rows come in order from ``n_done``); commit
        once ``rows_per_commit`` rows wait."""
        self.pending.append((row, values))
        if len(self.pending) >= self.rows_per_commit:
            self.commit()

    def commit(self) -> None:
        """Write the waiting rows (consecutive), flush, then move ``n_rows_done`` past them and flush again."""
        if not self.pending:
            return
        start, stop = self.pending[0][0], self.pending[-1][0] + 1
        for name in self.pending[0][1]:
            rows = [values[name] for _, values in self.pending]
            self.datasets[name][start:stop] = np.array(rows, dtype=object) if isinstance(rows[0], str) else np.stack(
                [np.asarray(r) for r in rows])
        self.file.flush()
        self.n_done = stop
        self.file.attrs.modify("n_rows_done", np.int64(self.n_done))
        self.file.flush()
        self.pending = []

    def finish(self) -> Path:
        """Commit the waiting rows, mark the store complete, close it (an overwrite run's store then replaces the
        old); return its path."""
        self.commit()
        self.file.attrs.modify("status", "complete")
        self.file.close()
        if self.publish_to is not None:
            os.replace(self.path, self.publish_to)
            self.path = self.publish_to
        self.close()
        return self.path

    def close(self) -> None:
        """Close the file and release the lock."""
        if self.file.id.valid:
            self.file.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def open_steps_writer(path, *, attrs: dict, dims: dict, n_planned: int, rows_per_prompt: int, resume: bool,
                      overwrite: bool, rows_per_commit: int = 1) -> StepsWriter:
    """Return a ``StepsWriter`` for a new steps store at ``path`` (root ``attrs``: provenance and the kind's
    own, JSON ones as Python values), or the existing one when ``resume`` finds one written with the same
    settings, dims and plan (its rows of whole prompts kept). ``UsageError`` for anything the output policy
    refuses or a store that cannot be resumed."""
    import h5py

    from mdlm_interp.outputs import OutputLock
    from mdlm_interp.store.writer import LIBVER, build_swmr_file, check_writable, first_difference, pending_path

    path = check_writable(path, resume=resume, overwrite=overwrite)
    lock = OutputLock(path).acquire()
    try:
        pending = pending_path(path)
        target = pending if pending.exists() or (path.exists() and not resume) else path
        if resume and target.exists():
            file = h5py.File(target, "r+", libver=LIBVER, locking=False)
            stored = {name: json.loads(file.attrs[name]) for name in ("settings", "dims")}
            stored["n_rows"] = int(file.attrs["n_rows"])
            difference = first_difference(stored, json.loads(json.dumps(
                {"settings": attrs["settings"], "dims": dims, "n_rows": n_planned})))
            if difference or str(file.attrs.get("store_kind")) != STEPS.name:
                file.close()
                raise UsageError(f"cannot resume {path}: {difference or 'it is not a steps store'} "
                                 "(use --overwrite or another output)")
            kept = int(file.attrs["n_rows_done"]) // rows_per_prompt * rows_per_prompt
            file.attrs.modify("n_rows_done", np.int64(kept))
            file.swmr_mode = True
        else:
            if target == pending:
                pending.unlink(missing_ok=True)
            file = build_swmr_file(target, lambda f: _fill(f, attrs, dims, n_planned))
        return StepsWriter(file, target, lock, path if target == pending else None, rows_per_commit)
    except BaseException:
        lock.release()
        raise


def _fill(file, attrs: dict, dims: dict, n_planned: int) -> None:
    from mdlm_interp.store.results import provenance_values, write_root_attributes

    provenance = attrs.pop("provenance")
    values = {**provenance_values(STEPS, provenance), "dims": dims, "n_rows": n_planned, "status": "running",
              "n_rows_done": 0, **attrs}
    write_root_attributes(file.attrs, STEPS, values, provenance.identity)
    for field in STEPS.data:
        shape = (n_planned, *field.row_shape(dims))
        floating = field.dtype == "float32"
        fill = np.nan if floating else (-1 if field.dtype.startswith("int") else None)
        big = int(np.prod(shape[1:])) > 1
        rows_per_chunk = 1 if big else max(1, min(64, n_planned))
        file.create_dataset(field.path, shape=shape, dtype=field.h5_dtype, chunks=(rows_per_chunk, *shape[1:]),
                            fillvalue=fill, compression="gzip" if big else None)


def record_steps(lm, plan, *, out, masks: int, sampler: str, options: dict, sites=("resid_post",), layers=None,
                 position_group: str = "answer", cache_steps=None, attention: bool = True, resume: bool = False,
                 overwrite: bool = False, progress: bool = True, command_line: str | None = None) -> Path:
    """Decode every prompt of ``plan`` (placement: its first) at ``masks`` masks with ``sampler`` (``options``:
    its config fields, e.g. steps, block_length, alg) and write a steps store to ``out``; return its path.

    ``sites``: hook kinds cached (``SITE_KINDS``; "z" flattened over heads); ``layers``: which (default
    all); ``position_group``: where (``trajectory.POSITION_GROUPS``); ``cache_steps``: which steps (default
    all); ``attention``: record the attention each position receives (for sinks). Bad input raises
    ``UsageError`` before any work (a step beyond the sampler's steps, a site or layer the model lacks).
    """
    from mdlm_interp.plan import Condition, plan_prompts
    from mdlm_interp.record import tqdm_or_none
    from mdlm_interp.subject import provenance, run_settings, subject_from

    subject = subject_from(lm)
    if subject.causal or lm.mask_token_id is None:
        raise UsageError("steps record decodes by unmasking: it needs a diffusion model")
    n_layers, n_heads = subject.n_layers, subject.n_heads
    sites = list(dict.fromkeys(sites))
    for site in sites:
        if site not in SITE_KINDS:
            raise UsageError(f"site {site!r} does not exist; cache one of {', '.join(SITE_KINDS)}")
    layers = list(range(n_layers)) if layers is None else [int(layer) for layer in layers]
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise UsageError(f"layer {layer} does not exist: the model has layers 0 .. {n_layers - 1}")
    if options.get("cfg_scale"):
        raise UsageError("classifier-free guidance doubles each step's forward pass; steps record decodes without it")
    condition = Condition(masks, False, plan.placements[0])
    rows = plan.rows([condition])
    prompts = plan_prompts(subject, plan, rows)
    trajectories = [trajectory_of(p, sampler, options) for p in prompts]
    steps = trajectories[0].steps
    cache_steps = set(range(steps)) if cache_steps is None else {int(s) for s in cache_steps}
    for step in sorted(cache_steps):
        if not 0 <= step < steps:
            raise UsageError(f"step {step} is beyond the sampler's {steps} steps (0 .. {steps - 1})")
    offset = subject.prediction_offset
    width = max(len(t.ids) for t in trajectories)
    n_positions = max(len(t.positions(position_group, offset)) for t in trajectories)
    d_model = int(lm.config.d_model)
    dims = {"layers": n_layers, "heads": n_heads, "width": width, "sites": len(sites), "cached_layers": len(layers),
            "positions": n_positions, "d": d_model}
    facts = subject.facts()
    settings = run_settings(subject, plan, facts, masks=masks, sampler=sampler,
                            sampler_config=dict(vars(trajectories[0].config)), cache_steps=sorted(cache_steps),
                            attention=attention)
    attrs = {"provenance": provenance(subject, plan, facts, command_line), "settings": settings, "sites": sites,
             "cached_layers": layers, "position_group": position_group}
    writer = open_steps_writer(out, attrs=attrs, dims=dims, n_planned=len(trajectories) * steps,
                               rows_per_prompt=steps, resume=resume, overwrite=overwrite,
                               rows_per_commit=min(steps, MAX_ROWS_PER_COMMIT))
    try:
        if writer.n_done == writer.n_planned and resume:
            return writer.finish()
        punctuation = punctuation_ids(lm.tokenizer, np.concatenate([t.ids.numpy() for t in trajectories]))
        device = next(lm.model.parameters()).device
        first = writer.n_done // steps
        bar = tqdm_or_none(progress, total=len(trajectories) - first, desc="steps record", unit="prompt")
        for index in range(first, len(trajectories)):
            trajectory = trajectories[index]
            record_prompt(lm, replace(trajectory, ids=trajectory.ids.to(device)),
                          writer, index * steps, width=width, n_positions=n_positions, sites=sites, layers=layers,
                          position_group=position_group, cache_steps=cache_steps, attention=attention,
                          punctuation=punctuation, example=plan.example(rows[index]), task=plan.tasks[rows[index].task],
                          seed=plan.seed)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return writer.finish()
    finally:
        writer.close()


def record_prompt(lm, trajectory, writer: StepsWriter, first_row: int, *, width: int, n_positions: int, sites, layers,
                  position_group: str, cache_steps: set, attention: bool, punctuation: set, example: int, task: str,
                  seed: int) -> None:
    """Decode one trajectory and write its rows ``first_row`` .. ``first_row + steps - 1``, one per step."""
    offset = lm.spec.prediction_offset
    positions = trajectory.positions(position_group, offset).to(trajectory.ids.device)
    length = len(trajectory.ids)
    clock = StepClock()
    hooks = StepRowHooks(sites, layers, positions, len(lm.model.blocks), clock, cache_steps, attention)
    readout = trajectory.readout(offset)
    is_punctuation = np.array([int(t) in punctuation for t in trajectory.ids.tolist()])
    padded_positions = np.full(n_positions, -1, dtype=np.int32)
    padded_positions[:len(positions)] = positions.cpu().numpy()

    def padded(values, fill):
        out = np.full(width, fill, dtype=np.asarray(values).dtype)
        out[:length] = values
        return out

    def on_step(step: int, state) -> None:
        log_probs = state.logits[0, readout].float().log_softmax(-1)
        values = {
            "rows/example": example, "rows/task": task, "rows/masks": trajectory.masks, "rows/step": step,
            "rows/block": state.block, "rows/steps": trajectory.steps, "rows/input_length": length,
            "rows/answer_position": trajectory.answer_position, "rows/readout": readout,
            "rows/answer_id": trajectory.answer_id, "rows/predicted_id": int(log_probs.argmax()),
            "rows/p_answer": float(log_probs[trajectory.answer_id].exp()),
            "rows/slot_masked": bool(state.input_ids[0, trajectory.answer_position] == lm.mask_token_id),
            "rows/cached": step in cache_steps,
            "canvas/ids": padded(state.input_ids[0].cpu().numpy().astype(np.int32), -1),
            "canvas/decoded": padded(state.ids[0].cpu().numpy().astype(np.int32), -1),
            "canvas/masked": padded((state.input_ids[0] == lm.mask_token_id).cpu().numpy(), False),
            "canvas/unmasked": padded(state.unmasked[0].cpu().numpy(), False),
            "canvas/punctuation": padded(is_punctuation, False),
            "cache/positions": padded_positions,
        }
        if attention:
            received = np.full((len(hooks.received), hooks.received[0].shape[0], width), np.nan, dtype=np.float32)
            received[:, :, :length] = torch.stack([hooks.received[i] for i in range(len(hooks.received))]).numpy()
            values["attention/received"] = received
        cached = np.full(writer.datasets["cache/activations"].shape[1:], np.nan, dtype=np.float32)
        for (s, i), activation in hooks.activations.items():  # none at a step not cached
            cached[s, i, :activation.shape[0], :activation.shape[1]] = activation.numpy()
        values["cache/activations"] = cached
        writer.write(first_row + step, values)
        hooks.activations, hooks.received = {}, {}

    decode(lm.model, trajectory, mask_token_id=lm.mask_token_id, prediction_offset=offset, seed=seed, clock=clock,
           fwd_hooks=hooks.fwd_hooks(), on_step=on_step)
