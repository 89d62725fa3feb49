"""Greedy one-step accuracy of a model on held-out task-suite prompts, batched.

Prompt i of an evaluation uses task ``TASK_NAMES[i % 16]`` and seed ``seed_base + i``; training
draws its prompts from seeds >= ``mdlm_interp.training.data.TRAIN_SEED_BASE``, so any
``seed_base + n_prompts`` below that is held out.
"""

from dataclasses import dataclass

import torch

from mdlm_interp.batching import collate
from mdlm_interp.models.families import FamilySpec

NEXT_TO_QUERY = "next-to-query"  # shorthand: the relevant block in the slots just before the query


@dataclass(frozen=True)
class EvalSetting:
    """One evaluation condition: example counts, placement, number of masks n (the answer slot and n - 1 after it)."""

    n_relevant: int = 10
    n_distractor: int = 40
    placement: str = NEXT_TO_QUERY
    masks: int = 1

    def placement_string(self) -> str:
        """Return the tasks-module placement ("relevant-at:K" for ``NEXT_TO_QUERY``)."""
        if self.placement == NEXT_TO_QUERY:
            return f"relevant-at:{self.n_distractor}"
        return self.placement


def eval_inputs(setting: EvalSetting, tokenizer, spec: FamilySpec, mask_token_id: int | None, n_prompts: int,
                seed_base: int) -> list:
    """Return the ``TokenizedPrompt`` of each of the ``n_prompts`` evaluation prompts of ``setting``.

    Causal families get the plain prompt (the answer is the next token); diffusion families get
    ``setting.masks`` masks at the answer slot.
    """
    from mdlm_interp.tasks import TASK_NAMES, PromptConfig, sample_prompt, tokenize_prompt

    out = []
    for i in range(n_prompts):
        config = PromptConfig(TASK_NAMES[i % len(TASK_NAMES)], setting.n_relevant, setting.n_distractor,
                              setting.placement_string())
        prompt = sample_prompt(config, seed_base + i)
        if spec.causal:
            out.append(tokenize_prompt(prompt, tokenizer, causal=True))
        else:
            out.append(tokenize_prompt(prompt, tokenizer, mask_token_id=mask_token_id, masks=setting.masks))
    return out


@torch.no_grad()
def predict(model, spec: FamilySpec, prompts: list, pad_id: int, batch_size: int = 64) -> torch.Tensor:
    """Return the greedy prediction [n] (token ids) at the answer slot of each tokenized prompt.

    Prompts are right-padded with ``pad_id`` and an attention mask; the answer logits are read with
    the family's prediction offset (for causal families the answer slot is the next token).
    """
    predictions = []
    for start in range(0, len(prompts), batch_size):
        batch = collate(prompts[start:start + batch_size], spec.prediction_offset, pad_id=pad_id)
        logits = model(batch.input_ids, attention_mask=batch.attention_mask_if_padded)
        predictions.append(logits[batch.layout.rows, batch.layout.readout].argmax(-1))
    return torch.cat(predictions)


def accuracy(model, spec: FamilySpec, tokenizer, mask_token_id: int | None, setting: EvalSetting, n_prompts: int,
             seed_base: int, batch_size: int = 64) -> float:
    """Return the fraction of ``n_prompts`` held-out prompts of ``setting`` answered correctly (greedy)."""
    prompts = eval_inputs(setting, tokenizer, spec, mask_token_id, n_prompts, seed_base)
    pad_id = tokenizer.convert_tokens_to_ids(spec.special_tokens["eos"])
    predicted = predict(model, spec, prompts, pad_id, batch_size)
    answers = torch.tensor([tp.answer_id for tp in prompts])
    return (predicted == answers).float().mean().item()


def loaded_accuracy(lm, setting: EvalSetting, n_prompts: int, seed_base: int, batch_size: int = 64) -> float:
    """``accuracy`` for a ``LoadedModel`` (what ``load_model`` returns)."""
    return accuracy(lm.model, lm.spec, lm.tokenizer, lm.mask_token_id, setting, n_prompts, seed_base, batch_size)
