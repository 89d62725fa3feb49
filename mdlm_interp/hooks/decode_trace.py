"""What ``record --decode`` keeps while a sampler decodes the answer slot and the masks after it.

An ``AnswerSlotTrace`` rides along one decode of a batch of task prompts (``mdlm_interp.decoding``):
its ``on_step`` callback reads, at every step, the distribution predicting the answer slot and the
masks left, its ``forward_kwargs`` hand each step's forward pass an attention probe on the masks
after the answer slot that are still masked, and its hooks (attach them with ``module.hooks``) keep
the attention mass the answer readout position puts on them, per layer and head. Modules without
attention probes are reduced from ``hook_pattern`` instead (same numbers, slower). ``results`` gives
plain names -> per-row tensors, like a recorder's.
"""

import torch
from einops import einsum

from mdlm_interp.batching import BatchLayout
from mdlm_interp.hooks.recorders import supports_probes


class AnswerSlotTrace:
    """Per-step record of the answer slot over a decode of ``max_steps`` steps at most (rows with fewer
    steps are padded: -1 for integers, NaN for floats)."""

    def __init__(self, module, layout: BatchLayout, *, mask_token_id: int, steps: int, max_steps: int,
                 use_probes: bool | None = None):
        self.layout = layout
        self.mask_token_id = mask_token_id
        self.steps = steps
        self.n_layers = len(module.blocks)
        self.use_probes = supports_probes(module) if use_probes is None else use_probes
        rows, device = len(layout.readout), layout.readout.device
        self.answer_position = layout.answer.float().argmax(-1)  # the slot: first (only) position of layout.answer
        self.masks_left = torch.full((rows, max_steps), -1, dtype=torch.long, device=device)
        self.predicted = torch.full((rows, max_steps), -1, dtype=torch.long, device=device)
        self.p_answer = torch.full((rows, max_steps), float("nan"), device=device)
        self.mass = torch.full((rows, max_steps, self.n_layers, int(module.cfg.n_heads)), float("nan"), device=device)
        self.unmask_step = torch.full((rows,), -1, dtype=torch.long, device=device)
        self.confidence = torch.full((rows,), float("nan"), device=device)
        self.per_layer: dict[int, torch.Tensor] = {}
        self.probe: torch.Tensor | None = None

    def forward_kwargs(self, model_input: torch.Tensor) -> dict:
        """Return the step's extra forward arguments: an attention probe [rows, pos, 1] on the masks after
        the answer slot that are still masked (with classifier-free guidance the input holds the batch twice)."""
        copies = model_input.shape[0] // len(self.layout.readout)
        self.probe = ((model_input == self.mask_token_id) & self.layout.masks.repeat(copies, 1)).float()[..., None]
        return {"attention_probes": self.probe} if self.use_probes else {}

    def fwd_hooks(self) -> list:
        """Return [(hook name, fn)]: every layer's ``attn.hook_probe_mass`` (or ``attn.hook_pattern``)."""
        name = "hook_probe_mass" if self.use_probes else "hook_pattern"
        return [(f"blocks.{layer}.attn.{name}", self._hook(layer)) for layer in range(self.n_layers)]

    def _hook(self, layer: int):
        def reduce(activation: torch.Tensor, hook) -> None:
            lay = self.layout
            picked = activation.detach()[: len(lay.readout)][lay.rows, :, lay.readout].float()  # [rows, head, ...]
            if self.use_probes:  # [rows, head, probe]
                self.per_layer[layer] = picked[..., 0]
            else:  # the pattern row [rows, head, key] against the probe
                self.per_layer[layer] = einsum(picked, self.probe[: len(lay.readout), :, 0], "b h k, b k -> b h")

        return reduce

    def on_step(self, step: int, state) -> None:
        """The decode's callback: keep the step's masks left, prediction and attention mass at the answer slot."""
        lay = self.layout
        slot = self.answer_position
        masked_slot = state.input_ids[lay.rows, slot] == self.mask_token_id
        log_probs = state.logits[lay.rows, lay.readout].float().log_softmax(-1)
        self.masks_left[:, step] = ((state.input_ids == self.mask_token_id) & lay.appended).sum(-1)
        self.predicted[:, step] = torch.where(masked_slot, log_probs.argmax(-1), -1)
        p_answer = log_probs.gather(-1, lay.answer_ids[:, None])[:, 0].exp()
        self.p_answer[:, step] = torch.where(masked_slot, p_answer, float("nan"))
        self.mass[:, step] = torch.stack([self.per_layer[layer] for layer in range(self.n_layers)], dim=1)
        revealed = state.unmasked[lay.rows, slot] & (state.ids[lay.rows, slot] != self.mask_token_id)
        first = revealed & (self.unmask_step < 0)
        self.unmask_step = torch.where(first, step, self.unmask_step)
        self.confidence = torch.where(first, state.confidence[lay.rows, slot].float(), self.confidence)

    def results(self, final_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return, from the decoded ids [rows, pos]: predicted_id, correct, steps, unmask_step, confidence,
        settle_step [rows]; masks_left, step_predicted_id, step_p_answer [rows, max_steps];
        mask_mass_from_answer [rows, max_steps, layer, head]."""
        lay = self.layout
        decoded = final_ids[lay.rows, self.answer_position]
        steps = torch.arange(self.predicted.shape[1], device=decoded.device)
        until_unmasked = steps[None] <= self.unmask_step[:, None]
        differs = until_unmasked & (self.predicted != decoded[:, None])
        last_difference = torch.where(differs, steps[None], -1).amax(-1)
        settle = torch.where(self.unmask_step >= 0, last_difference + 1, -1)
        return {
            "predicted_id": decoded,
            "correct": decoded == lay.answer_ids,
            "steps": torch.full_like(decoded, self.steps),
            "unmask_step": self.unmask_step,
            "confidence": self.confidence,
            "settle_step": settle,
            "masks_left": self.masks_left,
            "step_predicted_id": self.predicted,
            "step_p_answer": self.p_answer,
            "mask_mass_from_answer": self.mass,
        }
