"""The model as experiments see it, and what every output file says about it.

A ``Subject`` is a model reduced to what an experiment needs: the hooked module, its tokenizer and
mask id, the prediction offset, whether it is causal, its context length and its facts (family,
model id, dtype, weights fingerprint, adapter). ``subject_from`` makes one from a ``LoadedModel``
or from any ``HookedRootModule`` with the standard hook names plus its facts.

Every writer (record, patch, ablate, decode traces) describes the model the same way, through this
module: ``Subject.identity`` is the ``store.identity.ModelIdentity`` (model id, weights fingerprint,
adapter name and fingerprint) written as the four root attributes; ``run_settings`` builds a store's
``settings`` (the plan's settings, the model's facts, the run's own settings, the adapter's
{"path", "fingerprint", "merged"} when there is one and the interventions installed in the model when
there are some); ``provenance`` the ``Provenance`` root attributes, the identity among them.
"""

import hashlib
import shlex
import sys
from dataclasses import dataclass
from functools import partial

import torch

from mdlm_interp.errors import UsageError
from mdlm_interp.models.loader import LoadedModel
from mdlm_interp.store.identity import ModelIdentity, adapter_identity
from mdlm_interp.store.writer import Provenance


@dataclass(frozen=True)
class Subject:
    """The model an experiment runs, reduced to what experiments need."""

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
    fingerprint: object  # () -> the weights fingerprint (computed once per run)
    adapter: dict | None = None  # the LoRA adapter on the weights: {"path", "fingerprint", "merged"}
    interventions: list | None = None  # SAEs / steering installed in the module (their descriptions)

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

    def identity(self, facts: dict | None = None) -> ModelIdentity:
        """Return the model identity (model id, weights fingerprint, adapter name and fingerprint); pass
        ``facts()`` when already computed, so the weights are fingerprinted once."""
        facts = facts or self.facts()
        return adapter_identity(facts["model_id"], facts["weights_fingerprint"], self.adapter)


def subject_from(model, tokenizer=None, mask_token_id=None, prediction_offset=None, causal=False,
                 chat=False) -> Subject:
    """Return a ``Subject`` from a ``LoadedModel`` or a HookedRootModule plus its facts (``chat``: prompts
    are wrapped in the family's chat template, which needs a loaded model)."""
    from mdlm_interp.representations.interventions import installed_interventions

    if isinstance(model, LoadedModel):
        return Subject(model.model, model.tokenizer, model.mask_token_id, model.spec.prediction_offset,
                       model.spec.causal, model.spec.family, model.source, dtype_name(next(model.model.parameters()).dtype),
                       model.spec.chat_template if chat else None, model.config.max_seq_len, model.fingerprint,
                       model.adapter.facts() if model.adapter else None, installed_interventions(model.model) or None)
    if tokenizer is None or prediction_offset is None:
        raise UsageError("recording a bare module needs its tokenizer and prediction_offset")
    if not causal and mask_token_id is None:
        raise UsageError("the tokenizer has no mask token: a diffusion model needs mask_token_id")
    if chat:
        raise UsageError("chat mode needs a loaded model (its family gives the chat template)")
    cfg = getattr(model, "cfg", None)
    return Subject(model, tokenizer, mask_token_id, prediction_offset, causal, "custom", type(model).__name__,
                   dtype_name(next(model.parameters()).dtype), None, getattr(cfg, "n_ctx", None),
                   partial(module_fingerprint, model), None, installed_interventions(model) or None)


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


def run_settings(subject: Subject, plan, facts: dict, **own) -> dict:
    """Return a store's ``settings``: ``plan.settings()`` (a ``plan.PromptPlan`` or ``RecordConfig``), the
    model's ``facts`` (``subject.facts()``), the run's ``own`` settings, ``adapter`` ({"path",
    "fingerprint", "merged"}) only when the model has one and ``interventions`` (the SAEs and steering
    directions installed in it, ``representations.interventions``) only when it has some, so that stores
    without keep the settings they always had. A resume compares these settings, so it must have the
    same adapter and interventions."""
    return {**plan.settings(), **facts, **own, **({"adapter": subject.adapter} if subject.adapter else {}),
            **({"interventions": subject.interventions} if subject.interventions else {})}


def provenance(subject: Subject, plan, facts: dict, command_line: str | None = None) -> Provenance:
    """Return the ``Provenance`` root attributes of a run of ``plan`` on ``subject`` (``facts`` its
    ``facts()``): the command line (default this process's), the plan's task config and seed, the
    model's facts and its identity (``adapter``, ``adapter_fingerprint``; empty without an adapter)."""
    identity = subject.identity(facts)
    return Provenance(command_line=command_line or shlex.join(sys.argv), task_config=plan.task_config(),
                      seed=plan.seed, **facts, adapter=identity.adapter,
                      adapter_fingerprint=identity.adapter_fingerprint)
