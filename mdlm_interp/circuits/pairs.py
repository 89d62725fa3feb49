"""Prompt pairs: the same prompt under two conditions, with a position map and the patching metrics.

A pair is a clean run and a corrupt run of the same prompt, e.g. 1 mask against 50 masks, or the
" ." filler control against masks at the same count. ``make_pair`` collates both runs and maps their
positions one to one: every prompt token and the answer slot have a counterpart; the k-th token
after the answer slot corresponds to the k-th token after the answer slot of the other run when both
have one, and is marked -1 (no counterpart) otherwise. Tokens after the masks (a query moved
forward by ``query-at:K``) are matched past the length difference.

Metrics read at the answer readout (the family's prediction offset applied): the logit difference
logit(answer) - logit(wrong), where the wrong token is by default the corrupt run's most probable
token other than the answer (at many masks, the end-of-text token that takes over); the normalised
recovery (patched - corrupt) / (clean - corrupt) of that difference (``analyses.stats.recovery``); and
p(answer).
"""

from dataclasses import dataclass

import torch

from mdlm_interp.batching import PromptBatch, collate, position_sets
from mdlm_interp.errors import UsageError
from mdlm_interp.models.readout import logits_at_index, run_reading
from mdlm_interp.plan import Condition, PromptPlan, plan_prompts
from mdlm_interp.subject import Subject

RUNS = ("clean", "corrupt")
FIXED_GROUPS = ("all", "relevant", "distractor", "query", "answer")


def pair_prompts(subject: Subject, plan: PromptPlan, clean: Condition, corrupt: Condition) -> dict:
    """Return the prompts of every pair: {"clean": [TokenizedPrompt], "corrupt": [...], "example": [int],
    "task": [str]}, in (task, example) order.

    ``plan`` (a ``plan.PromptPlan``) gives tasks, n, example counts, seed and the filler text
    (``plan.filler``, used by a condition whose ``filler`` is True); example i of a task is the same
    prompt in both runs (and in ``record`` stores made with the same seed). Raises ``UsageError`` for a
    causal model (it takes no masks), a filler condition without filler text, or prompts longer than
    the model's context.
    """
    if subject.causal:
        raise UsageError("prompt pairs compare mask configurations; a causal model takes no masks")
    for condition in (clean, corrupt):
        if condition.masks < 1:
            raise UsageError(f"masks must be at least 1 (the first mask is the answer slot), got {condition.masks}")
        if condition.filler and (plan.filler is None or condition.masks < 2):
            raise UsageError("a filler run needs filler text and masks of at least 2 (the answer slot and a filler)")
    rows = {run: plan.rows([condition]) for run, condition in zip(RUNS, (clean, corrupt))}
    return {
        "clean": plan_prompts(subject, plan, rows["clean"]),
        "corrupt": plan_prompts(subject, plan, rows["corrupt"]),
        "example": [plan.example(row) for row in rows["clean"]],
        "task": [plan.tasks[row.task] for row in rows["clean"]],
    }


def appended_count(tp) -> int:
    """Return the number of tokens after the answer slot (masks or fillers) of a ``TokenizedPrompt``."""
    start, end = tp.spans["masks"]
    return end - start


def position_map(source, target) -> list[int]:
    """Return, for each position of ``target`` (a ``TokenizedPrompt``), the matching position of
    ``source`` (the same prompt under another condition), or -1 where it has none.

    Raises ValueError when the two are not the same prompt (their tokens differ outside the tokens
    after the answer slot, or the answer slots differ).
    """
    answer = target.answer_position
    if source.answer_position != answer or source.answer_id != target.answer_id:
        raise ValueError("the two runs are not the same prompt (answer slots differ)")
    shared = min(appended_count(source), appended_count(target))
    shift = appended_count(source) - appended_count(target)
    after = target.spans["masks"][1]
    mapping = []
    for position in range(len(target.input_ids)):
        if position <= answer:
            mapping.append(position)
        elif position < after:
            mapping.append(position if position - answer <= shared else -1)
        else:
            mapping.append(position + shift)
    for t, s in enumerate(mapping):
        if s >= 0 and not (answer < t < after) and source.input_ids[s] != target.input_ids[t]:
            raise ValueError(f"the two runs are not the same prompt (token {t} differs)")
    return mapping


@dataclass
class PromptPair:
    """A batch of prompt pairs.

    batches: run name ("clean", "corrupt") -> ``PromptBatch``; prompts: run name -> the
    ``TokenizedPrompt`` list; maps: receiver run name -> long [batch, receiver pos], the donor run's
    position matching each receiver position (padded coordinates) or -1 (no counterpart, padding).
    """

    batches: dict
    prompts: dict
    maps: dict

    @property
    def size(self) -> int:
        """Number of pairs in the batch."""
        return len(self.prompts["clean"])

    def answer_ids(self) -> torch.Tensor:
        """Return the correct answers' token ids [batch]."""
        return self.batches["clean"].layout.answer_ids

    def position_groups(self, receiver: str, last_k: int, appended: bool) -> tuple[list, torch.Tensor]:
        """Return (names, where): the position groups of the receiving run, bool [group, batch, pos].

        Groups, restricted to positions that have a counterpart in the donor run: "all"; "relevant"
        (tokens of the relevant examples); "distractor" (tokens of the other in-context examples);
        "query"; "answer" (the answer slot); with ``appended``, "appended" (the tokens after the
        answer slot that have a counterpart); "last:j" for j = 1 .. ``last_k``, the j-th token
        before the answer slot; and, where the prediction is read elsewhere than at the slot (Dream:
        the position before it), "readout" (the readout position).
        """
        batch, prompts = self.batches[receiver], self.prompts[receiver]
        lay = batch.layout
        width = batch.input_ids.shape[1]
        mapped = self.maps[receiver] >= 0
        distractor = position_sets([[tp.example_spans[i] for i in range(len(tp.example_spans))
                                     if i not in set(tp.relevant_examples)] for tp in prompts], width, batch.starts)
        groups = {"all": lay.valid, "relevant": lay.relevant, "distractor": distractor.to(mapped.device),
                  "query": lay.query, "answer": lay.answer}
        if appended:
            groups["appended"] = lay.masks
        for j in range(1, last_k + 1):
            groups[f"last:{j}"] = position_sets([[(tp.answer_position - j, tp.answer_position - j + 1)]
                                                 if tp.answer_position >= j else [] for tp in prompts],
                                                width, batch.starts).to(mapped.device)
        readout = self.readout_set(receiver)
        if readout is not None:
            groups["readout"] = readout
        return list(groups), torch.stack([where & mapped for where in groups.values()])

    def readout_set(self, receiver: str) -> torch.Tensor | None:
        """Return the readout position of each row as a bool set [batch, pos], or None where it is the answer
        slot itself (LLaDA)."""
        lay = self.batches[receiver].layout
        readout = torch.zeros_like(lay.answer)
        readout[lay.rows, lay.readout] = True
        return None if torch.equal(readout, lay.answer) else readout

    def head_groups(self, receiver: str) -> tuple[list, torch.Tensor]:
        """Return (["answer", "all"], where bool [2, batch, pos]) for the head (hook_z) sites, plus "readout"
        (the readout position) where it is not the answer slot (Dream)."""
        lay = self.batches[receiver].layout
        mapped = self.maps[receiver] >= 0
        names, sets = ["answer", "all"], [lay.answer & mapped, lay.valid & mapped]
        readout = self.readout_set(receiver)
        if readout is not None:
            names.append("readout")
            sets.append(readout & mapped)
        return names, torch.stack(sets)

    def aligned(self, donor_activation: torch.Tensor, receiver: str) -> torch.Tensor:
        """Return the donor run's activation [batch, donor pos, ...] moved to the receiver's positions
        [batch, receiver pos, ...]; positions without a counterpart get zeros."""
        index = self.maps[receiver]
        gathered = donor_activation[torch.arange(index.shape[0], device=index.device)[:, None], index.clamp(min=0)]
        keep = (index >= 0).reshape(index.shape + (1,) * (gathered.dim() - 2))
        return torch.where(keep, gathered, torch.zeros((), dtype=gathered.dtype, device=gathered.device))


def make_pair(clean: list, corrupt: list, prediction_offset: int, *, padding_side: str = "right",
              device="cpu") -> PromptPair:
    """Return the ``PromptPair`` of matching ``TokenizedPrompt`` lists ``clean`` and ``corrupt``."""
    if len(clean) != len(corrupt) or not clean:
        raise ValueError("clean and corrupt need the same, non-zero number of prompts")
    batches = {run: collate(prompts, prediction_offset, padding_side=padding_side, device=device)
               for run, prompts in zip(RUNS, (clean, corrupt))}
    prompts = {"clean": clean, "corrupt": corrupt}
    maps = {}
    for receiver, donor in (("clean", "corrupt"), ("corrupt", "clean")):
        width = batches[receiver].input_ids.shape[1]
        index = torch.full((len(clean), width), -1, dtype=torch.long)
        for row, (source, target) in enumerate(zip(prompts[donor], prompts[receiver])):
            shift_in, shift_out = batches[receiver].starts[row], batches[donor].starts[row]
            for position, match in enumerate(position_map(source, target)):
                if match >= 0:
                    index[row, shift_in + position] = shift_out + match
        maps[receiver] = index.to(device)
    return PromptPair(batches, prompts, maps)


def run_to_readout(module, batch: PromptBatch, hooks=(), **kwargs):
    """Run ``batch`` through ``module`` with TransformerLens ``hooks`` (and forward ``kwargs``), unembedding
    only the readout positions where the module can; return its logits for ``readout_logits``
    (``models.readout.PartialLogits``, or the full [batch, pos, vocab])."""
    return run_reading(module, batch.input_ids, batch.layout.readout[:, None], hooks,
                       attention_mask=batch.attention_mask_if_padded, **kwargs)


def readout_logits(logits, batch: PromptBatch) -> torch.Tensor:
    """Return the logits that predict the answer slot [batch, vocab] from raw logits (the full [batch, pos,
    vocab] or ``run_to_readout``'s)."""
    return logits_at_index(logits, batch.layout.readout)


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Return ``tensor`` in float32, or float64 if it is float64 (metrics keep a float64 model's precision)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def top_wrong_ids(answer_logits: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
    """Return per row the most probable token other than the answer: long [batch]."""
    return answer_logits.float().scatter(-1, answer_ids[:, None], float("-inf")).argmax(-1)


def answer_metrics(answer_logits: torch.Tensor, answer_ids: torch.Tensor, wrong_ids: torch.Tensor) -> dict:
    """Return logit_diff, p_answer (float32), predicted_id (long), correct (bool), each [...] for
    ``answer_logits`` [..., vocab] and ids broadcastable to [...]."""
    logits = at_least_float32(answer_logits)
    answer = logits.gather(-1, answer_ids.expand(logits.shape[:-1])[..., None])[..., 0]
    wrong = logits.gather(-1, wrong_ids.expand(logits.shape[:-1])[..., None])[..., 0]
    predicted = logits.argmax(-1)
    return {"logit_diff": answer - wrong, "p_answer": (answer - logits.logsumexp(-1)).exp(),
            "predicted_id": predicted, "correct": predicted == answer_ids}
