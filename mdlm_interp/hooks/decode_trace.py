"""What ``record --decode`` keeps while a sampler decodes the answer slot and the masks after it.

An ``AnswerSlotTrace`` rides along one decode of a batch of task prompts (``mdlm_interp.decoding``):
its ``on_step`` callback reads, at every step, the distribution predicting the answer slot and the
masks left, and its hooks (attach them with ``module.hooks``) keep the attention mass the answer
readout position puts on the masks after the answer slot that are still masked, per layer and head.
That mass needs one row of each layer's attention pattern, which the hooks rebuild from the rotated
query of the readout position and the rotated keys (``attn.hook_rot_q``, ``attn.hook_rot_k``): a
matrix-vector product per layer, while the forward pass keeps its fused attention kernel. Modules
without those hooks are reduced from ``hook_pattern`` instead (same numbers, slower). ``results``
gives plain names -> per-row tensors, like a recorder's.
"""

import torch
from einops import einsum, repeat

from mdlm_interp.batching import BatchLayout
from mdlm_interp.hooks.recorders import supports_probes
from mdlm_interp.models.hook_names import hook_name
from mdlm_interp.models.readout import logits_at_index


def supports_query_rows(module) -> bool:
    """Whether ``module`` computes attention as the toolkit's decoder does (it exposes attention probes and
    the rotated queries and keys), so that one query's attention row can be rebuilt from
    ``attn.hook_rot_q`` and ``attn.hook_rot_k``."""
    names = getattr(module, "hook_dict", {})
    return supports_probes(module) and hook_name("rot_q", 0) in names and hook_name("rot_k", 0) in names


class AnswerSlotTrace:
    """Per-step record of the answer slot over a decode of ``max_steps`` steps at most (rows with fewer
    steps are padded: -1 for integers, NaN for floats). ``answer_position`` [rows]: each row's answer
    slot in the batch (padded coordinates)."""

    def __init__(self, module, layout: BatchLayout, answer_position: torch.Tensor, *, mask_token_id: int, steps: int,
                 max_steps: int, from_queries: bool | None = None):
        self.layout = layout
        self.mask_token_id = mask_token_id
        self.steps = steps
        cfg = module.cfg
        self.n_layers = len(module.blocks)
        self.from_queries = supports_query_rows(module) if from_queries is None else from_queries
        self.scale = cfg.d_head**-0.5 if self.from_queries else None
        rows, device = len(layout.readout), layout.readout.device
        self.answer_position = answer_position
        self.masks_left = torch.full((rows, max_steps), -1, dtype=torch.long, device=device)
        self.predicted = torch.full((rows, max_steps), -1, dtype=torch.long, device=device)
        self.p_answer = torch.full((rows, max_steps), float("nan"), device=device)
        self.mass = torch.full((rows, max_steps, self.n_layers, int(cfg.n_heads)), float("nan"), device=device)
        self.unmask_step = torch.full((rows,), -1, dtype=torch.long, device=device)
        self.confidence = torch.full((rows,), float("nan"), device=device)
        self.per_layer: dict[int, torch.Tensor] = {}
        self.query: torch.Tensor | None = None
        self.masks_left_after: torch.Tensor | None = None

    def forward_kwargs(self, model_input: torch.Tensor) -> dict:
        """Note which positions after the answer slot are still masks in this step's input (with
        classifier-free guidance the input holds the batch twice; the first copy is the canvas).
        Returns no extra forward arguments."""
        canvas = model_input[: len(self.layout.readout)]
        self.masks_left_after = ((canvas == self.mask_token_id) & self.layout.masks).float()
        return {}

    def fwd_hooks(self) -> list:
        """Return [(hook name, fn)]: every layer's ``attn.hook_rot_q`` and ``attn.hook_rot_k`` (or
        ``attn.hook_pattern``)."""
        if not self.from_queries:
            return [(hook_name("pattern", layer), self._pattern_hook(layer)) for layer in range(self.n_layers)]
        hooks = []
        for layer in range(self.n_layers):
            hooks += [(hook_name("rot_q", layer), self._keep_query), (hook_name("rot_k", layer), self._key_hook(layer))]
        return hooks

    def _keep_query(self, q: torch.Tensor, hook) -> None:
        lay = self.layout
        self.query = q.detach()[: len(lay.readout)][lay.rows, lay.readout].float()  # [rows, head, d_head]

    def _key_hook(self, layer: int):
        def reduce(k: torch.Tensor, hook) -> None:
            k = k.detach()[: len(self.layout.readout)].float()  # [rows, key, kv_head, d_head]
            k = repeat(k, "b t kv d -> b (kv g) t d", g=self.query.shape[1] // k.shape[2])
            scores = einsum(self.query, k, "b h d, b h t d -> b h t") * self.scale
            pattern = scores.masked_fill(~self.layout.valid[:, None], float("-inf")).softmax(-1)
            self.per_layer[layer] = einsum(pattern, self.masks_left_after, "b h t, b t -> b h")

        return reduce

    def _pattern_hook(self, layer: int):
        def reduce(pattern: torch.Tensor, hook) -> None:
            lay = self.layout
            row = pattern.detach()[: len(lay.readout)][lay.rows, :, lay.readout].float()  # [rows, head, key]
            self.per_layer[layer] = einsum(row, self.masks_left_after, "b h t, b t -> b h")

        return reduce

    def on_step(self, step: int, state) -> None:
        """The decode's callback: keep the step's masks left, prediction and attention mass at the answer slot."""
        lay = self.layout
        slot = self.answer_position
        masked_slot = state.input_ids[lay.rows, slot] == self.mask_token_id
        log_probs = logits_at_index(state.logits, lay.readout).float().log_softmax(-1)
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
