"""One denoising trajectory of a task prompt: its canvas, its sampler, a replayable decode with step-aware hooks.

A ``Trajectory`` is a prompt of the plan (the answer slot and the n - 1 masks after it are the generated
region) with one sampler config (``decoding.config``). ``decode`` runs the sampler on it, one forward
pass per step, with hooks that know the step they fire in (a ``StepClock``), and with replayable
randomness: the generator is reseeded from (seed, step) before every step (``step_seed``), so two
trajectories, or a trajectory and its patched copy, draw the same numbers at step t whatever happened
at earlier steps. Sites name what is cached or patched (``Site``: a head ``L0.H1``, ``attn_out:L0``,
``mlp_out:L0``, ``resid_pre:L0``, ``resid_post:L0``); position groups name where (``POSITION_GROUPS``).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mdlm_interp.decoding.config import sampler_config
from mdlm_interp.decoding.samplers import DecodeStep, dream_unmask, llada_unmask
from mdlm_interp.errors import UsageError
from mdlm_interp.models.hook_names import hook_name
from mdlm_interp.models.readout import readout_position

SITE_KINDS = ("resid_pre", "resid_post", "attn_out", "mlp_out", "z")
POSITION_GROUPS = {
    "answer": "the answer slot",
    "readout": "the readout position (the answer slot for LLaDA, the position before it for Dream)",
    "generated": "the answer slot and the masks after it",
    "prompt": "every position before the answer slot",
    "all": "every position",
}
SEED_STRIDE = 1_000_003  # step_seed(seed, step) = seed * SEED_STRIDE + step


def step_seed(seed: int, step: int) -> int:
    """Return the seed the generator is reset to before step ``step`` of a decode seeded ``seed``."""
    return int(seed) * SEED_STRIDE + int(step)


@dataclass(frozen=True)
class Site:
    """One hook site: ``kind`` (one of ``SITE_KINDS``; "z" is one head's output before the output projection),
    ``layer``, and ``head`` for "z". ``label`` is how it is written: "L0.H1" or "attn_out:L0"."""

    kind: str
    layer: int
    head: int | None = None

    @property
    def label(self) -> str:
        """Return the site as the command line writes it."""
        return f"L{self.layer}.H{self.head}" if self.kind == "z" else f"{self.kind}:L{self.layer}"

    @property
    def hook(self) -> str:
        """Return the TransformerLens hook name of the site."""
        return hook_name(self.kind, self.layer)

    @classmethod
    def parse(cls, text: str, n_layers: int, n_heads: int) -> "Site":
        """Return the site written ``text`` ("L0.H1", "attn_out:L2", "resid_pre:L0", ...); ``UsageError`` (one
        line) for a kind, layer or head the model does not have."""
        text = text.strip()
        kind, colon, where = text.rpartition(":") if ":" in text else ("z", "", text)
        layer_text, dot, head_text = where.partition(".")
        try:
            if not layer_text.startswith("L") or (kind == "z") != bool(dot) or (dot and not head_text.startswith("H")):
                raise ValueError
            layer = int(layer_text[1:])
            head = int(head_text[1:]) if dot else None
        except ValueError:
            raise UsageError(f"site {text!r} does not exist: write a head as L<layer>.H<head> (e.g. L0.H1) or "
                             f"KIND:L<layer> with KIND one of {', '.join(k for k in SITE_KINDS if k != 'z')}") from None
        if kind not in SITE_KINDS:
            raise UsageError(f"site {text!r} does not exist: its kind must be one of {', '.join(SITE_KINDS)}")
        if not 0 <= layer < n_layers:
            raise UsageError(f"site {text!r} does not exist: the model has layers 0 .. {n_layers - 1}")
        if head is not None and not 0 <= head < n_heads:
            raise UsageError(f"site {text!r} does not exist: the model has heads 0 .. {n_heads - 1}")
        return cls(kind, layer, head)


@dataclass(frozen=True)
class Trajectory:
    """A prompt decoded by a sampler: ``ids`` long [pos] (the prompt with the answer slot and masks),
    ``answer_position`` (the slot, first position of the generated region), ``masks`` (the generated
    region's length), ``answer_id``, ``sampler`` ("llada" or "dream") and its ``config``."""

    ids: torch.Tensor
    answer_position: int
    masks: int
    answer_id: int
    sampler: str
    config: object

    @property
    def steps(self) -> int:
        """Return the number of denoising steps (forward passes) of the decode."""
        return int(self.config.steps)

    def readout(self, prediction_offset: int) -> int:
        """Return the position whose logits predict the answer slot."""
        return int(readout_position(self.answer_position, prediction_offset))

    def positions(self, group: str, prediction_offset: int) -> torch.Tensor:
        """Return the positions of ``group`` (a key of ``POSITION_GROUPS``) as a long tensor [k]."""
        slot, width = self.answer_position, len(self.ids)
        chosen = {"answer": [slot], "readout": [self.readout(prediction_offset)],
                  "generated": range(slot, slot + self.masks), "prompt": range(slot), "all": range(width)}
        if group not in chosen:
            raise UsageError(f"unknown position group {group!r}; choose from {', '.join(POSITION_GROUPS)}")
        return torch.as_tensor(list(chosen[group]), dtype=torch.long)


def trajectory_of(prompt, sampler: str, options: dict) -> Trajectory:
    """Return the trajectory of a ``TokenizedPrompt`` whose answer slot and masks after it are decoded by
    ``sampler`` with ``options`` (fields of its config, e.g. steps, block_length, alg); ``UsageError`` for a
    bad option (e.g. LLaDA's steps not a multiple of its blocks)."""
    from mdlm_interp.decoding.config import config_class

    masks = prompt.slot.masks
    config = sampler_config(sampler, **{config_class(sampler).LENGTH: masks, **options})
    return Trajectory(torch.as_tensor(prompt.input_ids, dtype=torch.long), int(prompt.answer_position), int(masks),
                      int(prompt.answer_id), sampler, config)


class StepClock:
    """The step a decode is at: hooks read ``step`` (the step whose forward pass is running)."""

    def __init__(self):
        self.step = 0


Hooks = list  # [(hook name, fn(activation, hook))]


def decode(module, trajectory: Trajectory, *, mask_token_id: int, prediction_offset: int, seed: int = 0,
           clock: StepClock | None = None, fwd_hooks: Hooks = (), on_step: Callable | None = None) -> torch.Tensor:
    """Decode ``trajectory`` with ``module`` (a ``HookedDecoder``, or a callable with its forward signature
    called under ``module``'s hooks); return the final ids [pos].

    ``fwd_hooks`` are attached for the whole decode; ``clock.step`` is the current step while they fire.
    ``on_step(step, DecodeStep)`` sees every step (batch of one). The generator is reset to
    ``step_seed(seed, t)`` before step t.
    """
    clock = clock if clock is not None else StepClock()
    clock.step = 0
    device = trajectory.ids.device
    generator = torch.Generator(device=device).manual_seed(step_seed(seed, 0))

    def step_done(step: int, state: DecodeStep) -> None:
        if on_step is not None:
            on_step(step, state)
        clock.step = step + 1
        generator.manual_seed(step_seed(seed, step + 1))

    hooked = getattr(module, "hooked", module)
    common = dict(mask_token_id=mask_token_id, generator=generator, prediction_offset=prediction_offset,
                  on_step=step_done)
    canvas = trajectory.ids[None]
    with hooked.hooks(fwd_hooks=list(fwd_hooks)):
        if trajectory.sampler == "llada":
            ids = llada_unmask(module, canvas, trajectory.config, gen_start=trajectory.answer_position, **common)
        else:
            ids = dream_unmask(module, canvas, trajectory.config, **common)
    return ids[0]


def check_aligned(receiver: Trajectory, donor: Trajectory) -> None:
    """Raise ``UsageError`` unless two trajectories can be aligned step by step: the same sampler and the
    same number of steps (LLaDA: also the same blocks, so that step t is in the same block in both)."""
    if receiver.sampler != donor.sampler:
        raise UsageError(f"the trajectories use different samplers ({donor.sampler} and {receiver.sampler}); "
                         "steps align only under one sampler")
    if receiver.steps != donor.steps:
        raise UsageError(f"the trajectories have {donor.steps} and {receiver.steps} steps, which cannot be aligned "
                         "step by step: give both the same --steps")
    if receiver.sampler == "llada":
        blocks = [t.masks // t.config.block_length for t in (donor, receiver)]
        if blocks[0] != blocks[1]:
            raise UsageError(f"the trajectories have {blocks[0]} and {blocks[1]} blocks; step t must fall in the same "
                             "block of both (give --block-length so that the block counts agree)")


def aligned_positions(receiver: Trajectory, donor: Trajectory, group: str,
                      prediction_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (receiver positions [k], donor positions [k]) of ``group`` that have a counterpart: the two
    canvases are aligned at their answer slots (the same prompt under two mask counts maps one to one)."""
    positions = receiver.positions(group, prediction_offset)
    shifted = positions + (donor.answer_position - receiver.answer_position)
    keep = (shifted >= 0) & (shifted < len(donor.ids))
    if group == "generated":
        keep &= shifted < donor.answer_position + donor.masks
    return positions[keep], shifted[keep]


def answer_readout(logits: torch.Tensor, trajectory: Trajectory, prediction_offset: int) -> torch.Tensor:
    """Return the float32 logits [vocab] that predict the answer slot, from one step's logits [1, pos, vocab]."""
    return logits[0, trajectory.readout(prediction_offset)].float()


def settle_step(predicted: list, final_id: int, unmask_step: int) -> int:
    """Return the first step from which the prediction for the answer slot (``predicted`` [steps], the argmax
    while the slot is masked) equals ``final_id`` at every step until the slot is unmasked (``unmask_step``);
    -1 when the slot was never unmasked."""
    if unmask_step < 0:
        return -1
    last_difference = -1
    for step in range(unmask_step + 1):
        if predicted[step] != final_id:
            last_difference = step
    return last_difference + 1
