"""The prompt plan: which prompts an experiment asks, under which conditions, in which order.

A ``Condition`` is how a prompt is asked: n masks at the answer slot (the slot and n - 1 masks after
it), the filler control (the n - 1 masks after the slot replaced by a filler token) or not, and the
placement of the relevant examples or the query. A ``PromptPlan`` names the tasks, the conditions'
parts (mask counts, filler text, placements), ``n`` prompts per task, the example counts and the
seed; ``plan_rows`` lists its rows (condition, task, prompt) in recording order and ``plan_prompts``
builds their ``TokenizedPrompt``s. Every experiment plans through this module: ``record`` (whose
``RecordConfig`` is a ``PromptPlan`` plus what to record), ``patch`` (pairs of rows under two
conditions) and ``ablate`` (one row list per mask count).

The one prompt key: prompt i (0 <= i < n) of a task is the prompt sampled with seed
``record_seed(seed, i)``; it is the same prompt under every condition and in every experiment with
the same seed and example counts. Stores write it as the example index ``task index * n + i``
(``example_index``); ``prompt_key(seed, task, example, n)`` turns it back into the text key
"seed:task:i" that pairs rows across stores.
"""

from dataclasses import dataclass
from typing import NamedTuple

from mdlm_interp.errors import UsageError
from mdlm_interp.tasks import TASK_NAMES, PromptConfig, record_seed, sample_prompt, single_token_words, tokenize_prompt

MAX_PLANNED_ROWS = 2_000_000  # per run: every row's prompt is built before the work starts
# What patch and ablate stores' settings have always said about recording (they record nothing, at
# record's default top-k), since they once planned with record's config: kept, so that their settings
# stay equal to those of stores written before.
RECORDS_NOTHING = {"record": [], "top_k": 10}
PLAN_FIELDS = ("tasks", "masks", "filler", "placements", "n", "n_relevant", "n_distractor", "seed", "chat")
TASK_CONFIG = ("tasks", "masks", "filler", "placements", "n", "n_relevant", "n_distractor", "chat")  # prompt-building


def as_tuple(value) -> tuple:
    """Return "a,b" or a sequence as a tuple (a bare int or str is one element)."""
    if isinstance(value, str):
        return tuple(part for part in value.split(",") if part)
    if isinstance(value, (int, bool)):
        return (value,)
    return tuple(value)


@dataclass(frozen=True)
class Condition:
    """How the prompt is asked: mask count at the answer slot, filler control, placement."""

    masks: int
    filler: bool
    placement: str

    @classmethod
    def of(cls, prompt) -> "Condition":
        """Return the condition a ``TokenizedPrompt`` was built under, read from its answer slot and
        placement (masks 0 for a causal prompt, which takes none)."""
        slot = prompt.slot
        return cls(slot.masks, slot.filler is not None and slot.masks > 1, prompt.prompt.config.placement)


class PlanRow(NamedTuple):
    """One planned row: ``prompt`` (0 .. n - 1) of the plan's task number ``task`` under ``condition``."""

    condition: Condition
    task: int
    prompt: int


def example_index(task: int, prompt: int, n: int) -> int:
    """Return the example index a store writes for prompt ``prompt`` of task number ``task``: task * n + prompt."""
    return task * n + prompt


def prompt_key(seed: int, task: str, example: int, n: int) -> str:
    """Return the key "seed:task:i" of a stored row (``example`` its example index, ``n`` the plan's
    prompts per task): rows with equal keys asked the same prompt, in any store."""
    return f"{int(seed)}:{task}:{int(example) % int(n)}"


@dataclass(frozen=True)
class PromptPlan:
    """Which prompts a run asks: ``tasks`` ("all" or task names), ``masks`` (mask counts n at the answer
    slot: the slot and n - 1 masks after it; causal models take none), ``filler`` (e.g. " .": also the
    filler control for every mask count above 1), ``placements`` ("random", "relevant-at:K",
    "query-at:K"), ``n`` prompts per task of ``n_relevant`` relevant and ``n_distractor`` distractor
    examples, the prompts' ``seed``, and ``chat`` (wrap prompts in the family's chat template).

    Values are normalised on construction (tasks expanded, lists as tuples) and checked: a bad value
    raises ``UsageError`` naming it.
    """

    tasks: tuple = ("all",)
    masks: tuple = (1,)
    filler: str | None = None
    placements: tuple = ("random",)
    n: int = 20
    n_relevant: int = 10
    n_distractor: int = 40
    seed: int = 0
    chat: bool = False

    def __post_init__(self):
        tasks = as_tuple(self.tasks)
        tasks = TASK_NAMES if tasks == ("all",) else tasks
        if not tasks:
            raise UsageError("no task given: name tasks (see `mdlm-interp tasks list`) or all")
        for task in tasks:
            if task not in TASK_NAMES:
                raise UsageError(f"unknown task '{task}' (see `mdlm-interp tasks list`)")
        masks = tuple(int(m) for m in as_tuple(self.masks))
        if not masks or any(m < 1 for m in masks):
            raise UsageError(f"masks must be at least 1 (the first mask is the answer slot), got {list(masks)}")
        placements = as_tuple(self.placements)
        if not placements:
            raise UsageError("no placement given: use random, relevant-at:K or query-at:K")
        for placement in placements:
            PromptConfig(tasks[0], self.n_relevant, self.n_distractor, placement)
        if self.n < 1:
            raise UsageError("n must be at least 1")
        for name, value in (("tasks", tuple(tasks)), ("masks", masks), ("placements", placements)):
            object.__setattr__(self, name, value)

    def settings(self) -> dict:
        """Return the plan as a JSON-ready dict (tuples as lists): its part of a store's settings."""
        return {name: list(value) if isinstance(value, tuple) else value
                for name, value in ((name, getattr(self, name)) for name in PLAN_FIELDS)}

    def task_config(self) -> dict:
        """Return the prompt-building part of the settings (a store's ``task_config`` attribute)."""
        return {name: value for name, value in self.settings().items() if name in TASK_CONFIG}

    def conditions(self, causal: bool) -> list[Condition]:
        """Return the conditions in recording order: every (placement, masks); with a filler (not for a
        causal model), also the filler control for each mask count above 1."""
        conditions = [Condition(m, False, p) for p in self.placements for m in self.masks]
        if self.filler is not None and not causal:
            conditions += [Condition(m, True, p) for p in self.placements for m in self.masks if m > 1]
        return conditions

    def rows(self, conditions: list[Condition]) -> list[PlanRow]:
        """Return the rows of ``conditions``: for each condition in turn, every task, every prompt. Raises
        UsageError, before building them, for more than ``MAX_PLANNED_ROWS`` rows."""
        n_rows = len(conditions) * len(self.tasks) * self.n
        if n_rows > MAX_PLANNED_ROWS:
            raise UsageError(f"{n_rows:,} rows planned, more than {MAX_PLANNED_ROWS:,} (prompts are prepared up "
                             "front): record fewer prompts or conditions per store")
        return [PlanRow(c, t, i) for c in conditions for t in range(len(self.tasks)) for i in range(self.n)]

    def example(self, row: PlanRow) -> int:
        """Return the example index a store writes for ``row`` (``example_index``)."""
        return example_index(row.task, row.prompt, self.n)


def check_context(subject, plan: PromptPlan) -> None:
    """Raise UsageError, before the plan's prompts are built, if prompts cannot fit ``subject``'s context
    (a ``subject.Subject``): one prompt per task and placement (prompt 0, the most masks) is built and
    measured."""
    if subject.max_length is None:
        return
    most = 0 if subject.causal else max(plan.masks)
    floor = most + plan.n_relevant + plan.n_distractor  # every example takes at least one token
    if floor > subject.max_length:
        raise UsageError(f"prompts reach at least {floor} tokens, longer than the model's context of "
                         f"{subject.max_length}")
    words = single_token_words(subject.tokenizer)
    for task in plan.tasks:
        for placement in dict.fromkeys(plan.placements):
            prompt = sample_prompt(PromptConfig(task, plan.n_relevant, plan.n_distractor, placement),
                                   record_seed(plan.seed, 0), words)
            length = len(tokenize_prompt(prompt, subject.tokenizer, mask_token_id=subject.mask_token_id,
                                         causal=subject.causal, masks=most, filler=plan.filler,
                                         chat_template=subject.chat_template).input_ids)
            check_length(subject, length)


def check_length(subject, longest: int) -> None:
    """Raise UsageError if prompts of ``longest`` tokens do not fit ``subject``'s context."""
    if subject.max_length is not None and longest > subject.max_length:
        raise UsageError(f"prompts reach {longest} tokens, longer than the model's context of {subject.max_length}")


def plan_prompts(subject, plan: PromptPlan, rows: list) -> list:
    """Return the ``TokenizedPrompt`` of every row (``PlanRow`` or (condition, task number, prompt)) for
    ``subject``, then check that the longest fits its context.

    Prompt i of a task is the same prompt (seed ``record_seed(plan.seed, i)``) under every condition of a
    placement, and the same examples under every placement. ``plan.filler`` is the filler text of the
    rows whose condition has ``filler`` True.
    """
    words = single_token_words(subject.tokenizer)
    sampled = {}
    built = []
    for c, t, i in rows:
        key = (plan.tasks[t], c.placement, i)
        if key not in sampled:
            sampled[key] = sample_prompt(PromptConfig(key[0], plan.n_relevant, plan.n_distractor, c.placement),
                                         record_seed(plan.seed, i), words)
        built.append(tokenize_prompt(sampled[key], subject.tokenizer, mask_token_id=subject.mask_token_id,
                                     causal=subject.causal, masks=0 if subject.causal else c.masks,
                                     filler=plan.filler if c.filler else None, chat_template=subject.chat_template))
    if built:
        check_length(subject, max(len(tp.input_ids) for tp in built))
    return built
