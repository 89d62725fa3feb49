"""Recorders: hook functions that reduce activations on the fly, layer by layer.

Every recorder follows one protocol. It is built for one batch as ``Recorder(module, layout)``
(``layout``: the batch's ``batching.BatchLayout``) and offers

- ``needs_grad``: whether the forward pass must build a graph (the gradient recorder's does);
- ``fwd_hooks()``: TransformerLens ``(hook name, function)`` pairs for ``run_with_hooks``;
- ``forward_kwargs()``: extra keyword arguments of the forward pass (attention probes);
- ``results(logits)``: after the forward pass, a dict of plain names -> tensors, one row per batch row.
  ``logits`` are the full [batch, pos, vocab] or, when the caller asked the forward pass for the readout
  positions only (``layout.readout[:, None]``, see ``models.readout.logit_request``), ``PartialLogits``;
  recorders read them through ``models.readout``.

Where the results go (store paths) is the caller's business (``record.py``). Recorders need only
the standard hook names, so they work with the toolkit's ``HookedDecoder`` and with any
``HookedRootModule`` exposing them (e.g. a TransformerLens ``TransformerBridge``). Nothing holds
more than one layer's attention pattern at a time.
"""

import torch
from einops import einsum

from mdlm_interp.batching import BatchLayout
from mdlm_interp.models.hook_names import hook_name
from mdlm_interp.models.readout import logits_at_index


def supports_probes(module) -> bool:
    """Whether ``module`` exposes attention probes (the toolkit's own decoder does)."""
    return hook_name("probe_mass", 0) in getattr(module, "hook_dict", {})


class Recorder:
    """The recorder protocol, with its defaults: no graph, no hooks, no extra forward arguments."""

    needs_grad = False

    def __init__(self, module, layout: BatchLayout):
        self.layout = layout

    def fwd_hooks(self) -> list:
        """Return the (hook name, function) pairs to attach for the forward pass."""
        return []

    def forward_kwargs(self) -> dict:
        """Return extra keyword arguments of the forward pass."""
        return {}

    def results(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return plain names -> tensors with one row per batch row, after the forward pass gave ``logits``."""
        raise NotImplementedError


class PredictionRecorder(Recorder):
    """The one-step prediction for the answer slot: argmax, p(answer), entropy, correctness, top-k."""

    def __init__(self, module, layout: BatchLayout, top_k: int = 10):
        self.layout = layout
        self.top_k = top_k

    @torch.no_grad()
    def results(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return predicted_id, p_answer, entropy, correct [batch] and topk_ids, topk_probs [batch, k]."""
        lay = self.layout
        answer_logits = logits_at_index(logits, lay.readout).detach().float()
        stats = distribution_stats(answer_logits, lay.answer_ids)
        top = answer_logits.softmax(-1).topk(self.top_k, dim=-1)
        predicted = answer_logits.argmax(-1)
        return {"predicted_id": predicted, "p_answer": stats["p_answer"], "entropy": stats["entropy"],
                "correct": predicted == lay.answer_ids, "topk_ids": top.indices, "topk_probs": top.values}


class AttentionRecorder(Recorder):
    """Attention mass on the masks after the answer slot and on the relevant examples, per layer and head.

    With ``use_probes`` (default: when the module supports them, as the toolkit's ``HookedDecoder``
    does) the masses ride along the fast attention kernel as attention probes
    (``blocks.{l}.attn.hook_probe_mass``); otherwise each layer's ``hook_pattern`` is reduced as it
    passes. Both give the same numbers.
    """

    def __init__(self, module, layout: BatchLayout, use_probes: bool | None = None):
        self.layout = layout
        self.n_layers = len(module.blocks)
        self.use_probes = supports_probes(module) if use_probes is None else use_probes
        self.probes = torch.stack([layout.masks, layout.relevant], dim=-1).float()  # [batch, key, 2]
        self.per_layer: dict[int, dict[str, torch.Tensor]] = {}

    def forward_kwargs(self) -> dict:
        """Return the extra keyword arguments of the forward pass (the probes, in probe mode)."""
        return {"attention_probes": self.probes} if self.use_probes else {}

    def fwd_hooks(self) -> list:
        """Return [(hook name, fn)]: every layer's ``attn.hook_probe_mass`` or ``attn.hook_pattern``."""
        kind = "probe_mass" if self.use_probes else "pattern"
        return [(hook_name(kind, layer), self._hook(layer)) for layer in range(self.n_layers)]

    def _hook(self, layer: int):
        def reduce(activation: torch.Tensor, hook) -> None:
            if self.use_probes:
                mass = activation.detach().float()  # [batch, head, query, 2]
            else:
                mass = einsum(activation.detach().float(), self.probes, "b h q k, b k p -> b h q p")
            lay = self.layout
            from_answer = mass[lay.rows, :, lay.readout]  # [batch, head, 2]
            context = lay.context.float()
            self.per_layer[layer] = {
                "mask_mass_from_answer": from_answer[..., 0],
                "relevant_mass_from_answer": from_answer[..., 1],
                "mask_mass_from_context": einsum(mass[..., 0], context, "b h q, b q -> b h")
                / context.sum(-1, keepdim=True).clamp(min=1),
            }

        return reduce

    def results(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return mask_mass_from_answer, relevant_mass_from_answer, mask_mass_from_context, each
        [batch, layer, head]."""
        names = self.per_layer[0].keys()
        return {name: torch.stack([self.per_layer[l][name] for l in range(self.n_layers)], dim=1) for name in names}


def distribution_stats(logits: torch.Tensor, answer_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Return p(answer), rank of the answer (tokens with a strictly higher logit) and entropy in nats.

    ``logits`` [batch, vocab]; each result is [batch].
    """
    logits = logits.float()
    log_probs = logits.log_softmax(-1)
    answer_logit = logits.gather(-1, answer_ids[:, None])
    return {
        "p_answer": log_probs.gather(-1, answer_ids[:, None])[:, 0].exp(),
        "rank": (logits > answer_logit).sum(-1),
        "entropy": -(log_probs.exp() * log_probs).sum(-1),
    }


class LensRecorder(Recorder):
    """Logit lens at the readout position: the residual stream entering block 0 and after each block,
    through the model's final norm and unembedding."""

    def __init__(self, module, layout: BatchLayout):
        self.model = module
        self.layout = layout
        self.n_layers = len(module.blocks)
        self.per_stage: dict[int, dict[str, torch.Tensor]] = {}

    def fwd_hooks(self) -> list:
        """Return hooks on blocks.0.hook_resid_pre (stage 0) and blocks.{l}.hook_resid_post (stage l+1)."""
        hooks = [(hook_name("resid_pre", 0), self._hook(0))]
        return hooks + [(hook_name("resid_post", l), self._hook(l + 1)) for l in range(self.n_layers)]

    def _hook(self, stage: int):
        def reduce(resid: torch.Tensor, hook) -> None:
            lay = self.layout
            with torch.no_grad():
                picked = resid.detach()[lay.rows, lay.readout][:, None]  # [batch, 1, d_model]
                logits = self.model.unembed(self.model.ln_final(picked))[:, 0]
                self.per_stage[stage] = distribution_stats(logits, lay.answer_ids)

        return reduce

    def results(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return p_answer, rank, entropy, each [batch, layer + 1]."""
        stages = range(self.n_layers + 1)
        return {name: torch.stack([self.per_stage[s][name] for s in stages], dim=1)
                for name in ("p_answer", "rank", "entropy")}


class GradientRecorder(Recorder):
    """Per-token L2 norm of d(answer logit at the readout) / d(input embedding), and its normalised means."""

    needs_grad = True

    def __init__(self, module, layout: BatchLayout):
        self.layout = layout
        self.embeddings: torch.Tensor | None = None

    def fwd_hooks(self) -> list:
        """Return a hook on ``hook_embed`` that makes the embeddings a leaf to differentiate against."""

        def capture(embeddings: torch.Tensor, hook) -> torch.Tensor:
            self.embeddings = embeddings.detach().requires_grad_(True)
            return self.embeddings

        return [(hook_name("embed"), capture)]

    def results(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return norms [batch, pos] (0 on padding) and mask_mean, last50_mean, nonmask_mean [batch].

        ``logits`` is the raw output of the forward pass that ran this recorder's hook (full or at the
        readout positions). Rows are independent, so one backward pass of the summed answer logits serves
        them all.
        """
        lay = self.layout
        target = logits_at_index(logits, lay.readout).gather(-1, lay.answer_ids[:, None]).sum()
        (grad,) = torch.autograd.grad(target, self.embeddings)
        norms = grad.float().norm(dim=-1) * lay.valid  # [batch, pos]
        share = norms / norms.sum(-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)

        def mean_over(selection: torch.Tensor) -> torch.Tensor:
            count = selection.sum(-1)
            total = (share * selection).sum(-1)
            return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))

        return {
            "norms": norms.detach(),
            "mask_mean": mean_over(lay.appended).detach(),
            "last50_mean": mean_over(lay.last_context).detach(),
            "nonmask_mean": mean_over(lay.context).detach(),
        }


class AttentionRowRecorder(Recorder):
    """Full attention rows from the readout position, every layer and head, for the batch rows in ``kept``.

    Hooks each layer's ``hook_pattern`` only when some row is kept (the pattern path is slower than the
    fused kernel, so batches without a kept row run as before). ``results`` gives per row a 1-D array,
    ``[valid pos, layer, head]`` flattened, for kept rows and an empty one for the others.
    """

    def __init__(self, module, layout: BatchLayout, kept):
        self.layout = layout
        self.n_layers = len(module.blocks)
        self.kept = torch.as_tensor(kept, dtype=torch.bool)
        self.per_layer: dict[int, torch.Tensor] = {}

    def fwd_hooks(self) -> list:
        """Return [(hook name, fn)] on every layer's ``attn.hook_pattern``; none when no row is kept."""
        if not bool(self.kept.any()):
            return []
        return [(hook_name("pattern", layer), self._hook(layer)) for layer in range(self.n_layers)]

    def _hook(self, layer: int):
        def keep_row(pattern: torch.Tensor, hook) -> None:
            lay = self.layout
            self.per_layer[layer] = pattern.detach()[lay.rows, :, lay.readout].float().cpu()  # [batch, head, key]

        return keep_row

    def results(self, logits: torch.Tensor) -> dict[str, list]:
        """Return from_readout: one float32 numpy array per row, [valid pos, layer, head] flattened for kept
        rows, empty for the others."""
        import numpy as np
        from einops import rearrange

        valid = self.layout.valid.cpu()
        out = []
        for row, kept in enumerate(self.kept.tolist()):
            if not kept:
                out.append(np.zeros(0, dtype=np.float32))
                continue
            stacked = torch.stack([self.per_layer[l][row] for l in range(self.n_layers)])  # [layer, head, key]
            out.append(rearrange(stacked[..., valid[row]], "l h k -> (k l h)").numpy())
        return {"from_readout": out}
