"""Patching between two denoising trajectories, step by step: exact sweeps and attribution per step.

Trajectory A (the donor) and B (the receiver) are aligned by step (``trajectory.check_aligned``) and by
position at their answer slots. A variant patches one site (a head, a layer's attention or MLP output,
the residual) at one position group with A's activation at step t, into B at step t (or at every step),
and lets B's sampler run on unchanged: the generator is reset to the same seed before every step of every
run (``trajectory.step_seed``), so B's random draws are the same as without the patch. Each run reports
the final answer, logit(answer) - logit(wrong) at the readout position at every step, the step the answer
slot is unmasked and the step its prediction settles (``trajectory.settle_step``). The wrong token is B's
unpatched top token other than the answer at step 0 (as ``patch`` takes the corrupt run's).

The exact sweep decodes B once per variant, but a step whose input canvas is the unpatched B's and that
is not patched is replayed from B's own decode (``Replay``: the same canvas and draws give the same
step), so a variant patched at step t costs one forward pass at t plus one per later step whose canvas
the patch changed; a variant patched at every step costs one per step. Attribution patching estimates
the logit difference at step t of every (site, t) variant from B's own decode with gradients: one forward
and one backward pass per step give d(logit difference)/d(activation); the estimate is B's logit
difference plus (A - B activation) . gradient summed over the patched positions.
"""

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from mdlm_interp.errors import UsageError
from mdlm_interp.models.hook_names import hook_name
from mdlm_interp.steps.trajectory import (
    POSITION_GROUPS,
    Site,
    StepClock,
    Trajectory,
    aligned_positions,
    answer_readout,
    check_aligned,
    decode,
    settle_step,
)

EVERY_STEP = -1  # patched_step of a variant that patches every step (and of the unpatched run)


@dataclass
class AnswerWatch:
    """An ``on_step`` callback following the answer slot of one decode: the logit difference at the readout
    position per step, the prediction while the slot is masked (-1 after), the step it is unmasked.
    ``wrong_id`` None: taken at step 0 as the top token other than the answer."""

    trajectory: Trajectory
    mask_token_id: int
    prediction_offset: int
    wrong_id: int | None = None
    logit_diff: list = field(default_factory=list)
    predicted: list = field(default_factory=list)
    unmask_step: int = -1

    def choose_wrong(self, readout: torch.Tensor) -> None:
        """Set ``wrong_id`` (if unset) to the top token of ``readout`` [vocab] other than the answer."""
        if self.wrong_id is None:
            ranked = readout.topk(2).indices.tolist()
            self.wrong_id = ranked[1] if ranked[0] == self.trajectory.answer_id else ranked[0]

    def difference(self, readout: torch.Tensor) -> torch.Tensor:
        """Return logit(answer) - logit(wrong) of ``readout`` [vocab] (a 0-d tensor, differentiable)."""
        return readout[self.trajectory.answer_id] - readout[self.wrong_id]

    def __call__(self, step: int, state) -> None:
        slot = self.trajectory.answer_position
        readout = answer_readout(state.logits, self.trajectory, self.prediction_offset)
        self.choose_wrong(readout)
        self.logit_diff.append(float(self.difference(readout)))
        masked = bool(state.input_ids[0, slot] == self.mask_token_id)
        self.predicted.append(int(readout.argmax()) if masked else -1)
        if masked and bool(state.unmasked[0, slot]):
            self.unmask_step = step

    def outcome(self, final_ids: torch.Tensor) -> dict:
        """Return the run's outcome: final_id, unmask_step, settle_step, step_logit_diff [steps],
        step_predicted_id [steps], final_logit_diff (at the step the slot is unmasked; the last step if never)."""
        final_id = int(final_ids[self.trajectory.answer_position])
        decisive = self.unmask_step if self.unmask_step >= 0 else len(self.logit_diff) - 1
        return {"final_id": final_id, "unmask_step": self.unmask_step,
                "settle_step": settle_step(self.predicted, final_id, self.unmask_step),
                "step_logit_diff": np.array(self.logit_diff, dtype=np.float32),
                "step_predicted_id": np.array(self.predicted, dtype=np.int32),
                "final_logit_diff": self.logit_diff[decisive]}


def caching_hooks(hooks: list, clock: StepClock, store: dict) -> list:
    """Return hooks that keep each of ``hooks``' activation (batch row 0, detached) at every step in
    ``store[(hook name, step)]``."""
    def keep(activation, hook):
        store[(hook.name, clock.step)] = activation[0].detach().clone()

    return [(name, keep) for name in dict.fromkeys(hooks)]


def patch_hook(site: Site, receiver_positions: torch.Tensor, donor_positions: torch.Tensor, step: int,
               donor: dict, clock: StepClock):
    """Return a hook that writes the donor's activation of ``site`` (``donor[(hook, step)]``) at
    ``donor_positions`` over the receiver's at ``receiver_positions``, at ``step`` (``EVERY_STEP``: at each)."""
    def patch(activation, hook):
        if step != EVERY_STEP and clock.step != step:
            return activation
        source = donor[(hook.name, clock.step)]
        patched = activation.clone()
        if site.head is None:
            patched[0, receiver_positions] = source[donor_positions].to(patched.dtype)
        else:
            patched[0, receiver_positions, site.head] = source[donor_positions, site.head].to(patched.dtype)
        return patched

    return patch


class GradientStep:
    """The forward pass of a decode with gradients: called by the sampler as the model is, it runs the model
    with the sites' activations kept in an autograd graph (starting at the embeddings), takes the gradient of
    the answer's logit difference at the readout position with respect to them, keeps both per step
    (``activations``, ``gradients``: {step: {hook: [pos, ...]}}) and returns the logits detached."""

    def __init__(self, model, hooks: list, watch: AnswerWatch, clock: StepClock):
        self.hooked = model
        self.names = list(dict.fromkeys(hooks))
        self.watch = watch
        self.clock = clock
        self.kept: dict = {}
        self.activations: dict = {}
        self.gradients: dict = {}

    def fwd_hooks(self) -> list:
        """Return the hooks that keep the sites' activations and make the embeddings the graph's leaf."""
        def keep(activation, hook):
            self.kept[hook.name] = activation

        def leaf(embeddings, hook):
            return embeddings.detach().requires_grad_(True)

        return [(name, keep) for name in self.names] + [(hook_name("embed"), leaf)]

    def __call__(self, model_input: torch.Tensor, attention_mask=None, **kwargs) -> torch.Tensor:
        with torch.enable_grad():
            logits = self.hooked(model_input, attention_mask=attention_mask, **kwargs)
            readout = answer_readout(logits, self.watch.trajectory, self.watch.prediction_offset)
            self.watch.choose_wrong(readout.detach())
            grads = torch.autograd.grad(self.watch.difference(readout), [self.kept[n] for n in self.names])
        step = self.clock.step
        self.activations[step] = {n: self.kept[n].detach()[0] for n in self.names}
        self.gradients[step] = {n: g[0] for n, g in zip(self.names, grads)}
        self.kept = {}
        return logits.detach()


class Replay:
    """The receiver's forward passes, kept to be replayed: ``keep`` (an ``on_step`` callback of the unpatched
    receiver's decode) keeps each step's input canvas and the logits the sampler and the readout read there
    (the rows predicting the masked positions and the answer slot). Called as the model by a patched decode, it
    returns those logits, without a forward pass, at every step whose input is the unpatched one's and that
    is not ``patched_step`` (``EVERY_STEP``: none): the same canvas and the same draws give the same step."""

    def __init__(self, model, trajectory: Trajectory, mask_token_id: int, prediction_offset: int, clock: StepClock):
        self.hooked = model
        self.trajectory, self.mask_token_id, self.offset = trajectory, mask_token_id, prediction_offset
        self.clock = clock
        self.inputs: dict = {}
        self.rows: dict = {}
        self.patched_step = EVERY_STEP
        self.forward_passes = 0

    def keep(self, step: int, state) -> None:
        """Keep the unpatched step's input and logit rows (an ``on_step`` callback)."""
        width = state.input_ids.shape[1]
        masked = (state.input_ids[0] == self.mask_token_id).nonzero()[:, 0]
        rows = torch.cat([masked + self.offset, torch.tensor([self.trajectory.readout(self.offset)],
                                                             device=masked.device)]).clamp(0, width - 1).unique()
        self.inputs[step] = state.input_ids.clone()
        self.rows[step] = (rows, state.logits[0, rows].clone(), state.logits.shape)

    def __call__(self, model_input: torch.Tensor, attention_mask=None, **kwargs) -> torch.Tensor:
        """Return the step's logits [1, pos, vocab]: replayed where nothing differs, computed otherwise."""
        step = self.clock.step
        replayable = step != self.patched_step and self.patched_step != EVERY_STEP
        if replayable and torch.equal(model_input, self.inputs[step]):
            rows, values, shape = self.rows[step]
            logits = values.new_zeros(shape)
            logits[0, rows] = values
            return logits
        self.forward_passes += 1
        return self.hooked(model_input, attention_mask=attention_mask, **kwargs)


def attribution_estimate(site: Site, step: int, receiver_positions, donor_positions, gradient_step: GradientStep,
                         donor: dict, logit_diff: list) -> float:
    """Return attribution patching's estimate of the receiver's logit difference at ``step`` with ``site``
    patched there: its own logit difference + sum over the positions of (donor - receiver) . gradient."""
    receiver = gradient_step.activations[step][site.hook][receiver_positions]
    gradient = gradient_step.gradients[step][site.hook][receiver_positions]
    change = donor[(site.hook, step)][donor_positions].to(receiver.dtype) - receiver
    if site.head is not None:
        change, gradient = change[:, site.head], gradient[:, site.head]
    return float(logit_diff[step] + (change.double() * gradient.double()).sum())


def patch_trajectories(model, receiver: Trajectory, donor: Trajectory, sites: list, *, mask_token_id: int,
                       prediction_offset: int, position_group: str = "answer", patch_steps=None, seed: int = 0,
                       attribution: bool = True, every_step: bool = True) -> list[dict]:
    """Patch ``donor``'s activations into ``receiver`` step by step; return one dict per run.

    The first run is the receiver unpatched (site "none"); then, for every site of ``sites`` and every step
    of ``patch_steps`` (default all; plus, with ``every_step``, all steps at once as ``EVERY_STEP``), the
    receiver with that site patched at ``position_group``. Each dict: site (label), patched_step,
    wrong_id, logit_diff (at the patched step; at step 0 for the unpatched and every-step runs),
    attribution_logit_diff (its estimate, NaN where not estimated), and ``AnswerWatch.outcome``'s keys.
    ``UsageError`` for trajectories that cannot be aligned or a step beyond the sampler's steps.
    """
    check_aligned(receiver, donor)
    steps = list(range(receiver.steps)) if patch_steps is None else [int(s) for s in patch_steps]
    for step in steps:
        if not 0 <= step < receiver.steps:
            raise UsageError(f"step {step} is beyond the sampler's {receiver.steps} steps (0 .. {receiver.steps - 1})")
    if getattr(receiver.config, "cfg_scale", 0) or getattr(donor.config, "cfg_scale", 0):
        raise UsageError("classifier-free guidance doubles each step's forward pass; patching across steps "
                         "decodes without it (--cfg-scale 0)")
    common = dict(mask_token_id=mask_token_id, prediction_offset=prediction_offset, seed=seed)
    hooks = [site.hook for site in sites]
    clock = StepClock()
    donor_cache: dict = {}
    decode(model, donor, clock=clock, fwd_hooks=caching_hooks(hooks, clock, donor_cache), **common)

    watch = AnswerWatch(receiver, mask_token_id, prediction_offset)
    replay = Replay(model, receiver, mask_token_id, prediction_offset, clock)

    def unpatched_step(step, state):
        watch(step, state)
        replay.keep(step, state)

    if attribution:
        gradient_step = GradientStep(model, hooks, watch, clock)
        final = decode(gradient_step, receiver, clock=clock, fwd_hooks=gradient_step.fwd_hooks(),
                       on_step=unpatched_step, **common)
    else:
        final = decode(model, receiver, clock=clock, on_step=unpatched_step, **common)
    base = watch.outcome(final)
    wrong_id = watch.wrong_id
    runs = [{"site": "none", "patched_step": EVERY_STEP, "wrong_id": wrong_id, "logit_diff": watch.logit_diff[0],
             "attribution_logit_diff": float("nan"), **base}]
    for site in sites:
        receiver_positions, donor_positions = aligned_positions(receiver, donor, position_group, prediction_offset)
        for step in steps + ([EVERY_STEP] if every_step else []):
            patched = AnswerWatch(receiver, mask_token_id, prediction_offset, wrong_id=wrong_id)
            hook = patch_hook(site, receiver_positions, donor_positions, step, donor_cache, clock)
            replay.patched_step = step
            final = decode(replay, receiver, clock=clock, fwd_hooks=[(site.hook, hook)], on_step=patched,
                           **common)
            estimate = float("nan")
            if attribution and step != EVERY_STEP:
                estimate = attribution_estimate(site, step, receiver_positions, donor_positions, gradient_step,
                                                donor_cache, watch.logit_diff)
            runs.append({"site": site.label, "patched_step": step, "wrong_id": wrong_id,
                         "logit_diff": patched.logit_diff[max(step, 0)], "attribution_logit_diff": estimate,
                         **patched.outcome(final)})
    return runs


def run_step_patching(lm, plan, receiver_condition, donor_condition, *, out, sampler: str, options: dict, sites,
                      position_group: str = "answer", patch_steps=None, donor_shift: int = 0, attribution: bool = True,
                      every_step: bool = True, overwrite: bool = False, progress: bool = True,
                      command_line: str | None = None):
    """Patch every prompt of ``plan`` between two trajectories and write a step patching store to ``out``;
    return its path.

    The receiver is prompt i under ``receiver_condition`` (a ``plan.Condition``), the donor prompt
    (i + ``donor_shift``) mod n of the same task under ``donor_condition``, both decoded by ``sampler`` with
    ``options`` (its config fields; the steps must agree). ``sites``: site labels ("L0.H1", "attn_out:L0",
    ...). Bad input (a site the model lacks, a step beyond the steps, trajectories that cannot be aligned)
    raises ``UsageError`` before any output is written.
    """
    from mdlm_interp.plan import plan_prompts
    from mdlm_interp.record import tqdm_or_none
    from mdlm_interp.steps.schemas import STEP_PATCHING
    from mdlm_interp.steps.trajectory import trajectory_of
    from mdlm_interp.store.results import write_results
    from mdlm_interp.store.writer import check_writable
    from mdlm_interp.subject import provenance, run_settings, subject_from

    out = check_writable(out, overwrite=overwrite)
    subject = subject_from(lm)
    if subject.causal or lm.mask_token_id is None:
        raise UsageError("steps patch decodes by unmasking: it needs a diffusion model")
    parsed = [Site.parse(text, subject.n_layers, subject.n_heads) for text in sites]
    receiver_rows = plan.rows([receiver_condition])
    donor_rows = [row._replace(condition=donor_condition, prompt=(row.prompt + donor_shift) % plan.n)
                  for row in receiver_rows]
    receivers = [trajectory_of(p, sampler, options) for p in plan_prompts(subject, plan, receiver_rows)]
    donors = [trajectory_of(p, sampler, options) for p in plan_prompts(subject, plan, donor_rows)]
    for receiver, donor in zip(receivers, donors):
        check_aligned(receiver, donor)
    if position_group not in POSITION_GROUPS:
        raise UsageError(f"unknown position group {position_group!r}; choose from {', '.join(POSITION_GROUPS)}")
    for step in patch_steps or ():
        if not 0 <= int(step) < receivers[0].steps:
            raise UsageError(f"step {step} is beyond the sampler's {receivers[0].steps} steps "
                             f"(0 .. {receivers[0].steps - 1})")
    device = next(lm.model.parameters()).device
    columns: dict = {}
    bar = tqdm_or_none(progress, total=len(receivers), desc="steps patch", unit="prompt")
    for receiver_row, donor_row, receiver, donor in zip(receiver_rows, donor_rows, receivers, donors):
        runs = patch_trajectories(lm.model, replace(receiver, ids=receiver.ids.to(device)),
                                  replace(donor, ids=donor.ids.to(device)), parsed, mask_token_id=lm.mask_token_id,
                                  prediction_offset=subject.prediction_offset, position_group=position_group,
                                  patch_steps=patch_steps, seed=plan.seed, attribution=attribution,
                                  every_step=every_step)
        base_final = runs[0]["final_id"]
        for run in runs:
            run.update(example=plan.example(receiver_row), donor_example=plan.example(donor_row),
                       task=plan.tasks[receiver_row.task], answer_id=receiver.answer_id,
                       correct=run["final_id"] == receiver.answer_id, changed=run["final_id"] != base_final)
            for name in (f.name for f in STEP_PATCHING.data):
                columns.setdefault(f"runs/{name}", []).append(run[name])
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    columns = {name: values if name in ("runs/task", "runs/site") else np.asarray(values)
               for name, values in columns.items()}
    facts = subject.facts()
    settings = run_settings(subject, plan, facts, sampler=sampler, sampler_config=dict(vars(receivers[0].config)),
                            patch_steps=patch_steps, attribution=attribution, donor_shift=donor_shift)
    attrs = {"receiver": vars(receiver_condition), "donor": {**vars(donor_condition), "shift": donor_shift},
             "sites": [site.label for site in parsed], "position_group": position_group}
    return write_results(out, STEP_PATCHING, columns, dims={"steps": receivers[0].steps},
                         provenance=provenance(subject, plan, facts, command_line), settings=settings, attrs=attrs,
                         overwrite=overwrite)
