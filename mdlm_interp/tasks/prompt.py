"""Text-level prompts: which examples, in which order, and where the query goes, from a seed."""

from __future__ import annotations

import random
from dataclasses import dataclass

from mdlm_interp.errors import UsageError
from mdlm_interp.tasks.format import LINE_END, example_pieces, query_pieces
from mdlm_interp.tasks.suite import Example, Task, digits, distractor_example, get_task, relevant_example, word_lists
from mdlm_interp.tasks.words import WordLists

MAX_EXAMPLES = 10_000  # in-context examples per prompt: some 50,000 tokens, beyond any model's context
RELEVANT_AT = "relevant-at:"
QUERY_AT = "query-at:"


@dataclass(frozen=True)
class Placement:
    """Parsed placement: the example slot where the relevant block starts (None: random mix), and
    the number of examples before the query (None: after all of them)."""

    relevant_at: int | None = None
    query_at: int | None = None


def parse_placement(placement: str, n_relevant: int, n_distractor: int) -> Placement:
    """Return the ``Placement`` of a placement string; ``UsageError`` if malformed or out of range.

    Forms: "random"; "relevant-at:K" (relevant examples as one block at example slots K..K+n_relevant-1,
    0 <= K <= n_distractor); "query-at:K" (the query and its answer slot after K examples, the others
    after it, 0 <= K <= n_relevant + n_distractor); or "relevant-at:K,query-at:J" for both.
    """
    if placement == "random":
        return Placement()
    n_examples = n_relevant + n_distractor
    found: dict[str, int] = {}
    for part in placement.split(","):
        for prefix, highest in ((RELEVANT_AT, n_distractor), (QUERY_AT, n_examples)):
            if part.startswith(prefix) and prefix not in found:
                value = part[len(prefix):]
                if not value.isdigit():
                    raise UsageError(f"placement {placement!r}: K in {prefix}K must be a non-negative integer")
                if int(value) > highest:
                    room = (f"the {n_relevant} relevant examples start at a slot from 0 to {highest} "
                            f"({n_examples} example slots)" if prefix == RELEVANT_AT else
                            f"the query goes after 0 to {highest} examples")
                    raise UsageError(f"placement {placement!r}: K={value} is out of range: {room}")
                found[prefix] = int(value)
                break
        else:
            raise UsageError(f"unknown placement {placement!r}; use random, relevant-at:K, query-at:K "
                             f"or relevant-at:K,query-at:J")
    return Placement(found.get(RELEVANT_AT), found.get(QUERY_AT))


@dataclass(frozen=True)
class PromptConfig:
    """What to sample: the task, how many relevant and distractor examples, and their placement.

    Raises ``UsageError`` on construction for an unknown task, a negative count or a bad placement.
    """

    task: str
    n_relevant: int = 10
    n_distractor: int = 40
    placement: str = "random"

    def __post_init__(self):
        get_task(self.task)
        for name in ("n_relevant", "n_distractor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(f"{name} must be a non-negative integer, got {value!r}")
        if self.n_relevant + self.n_distractor > MAX_EXAMPLES:
            raise UsageError(f"{self.n_relevant + self.n_distractor} examples per prompt, more than {MAX_EXAMPLES} "
                             "(no model reads a prompt that long)")
        parse_placement(self.placement, self.n_relevant, self.n_distractor)

    @property
    def n_examples(self) -> int:
        """Return the number of in-context examples (relevant + distractor)."""
        return self.n_relevant + self.n_distractor


@dataclass(frozen=True)
class Prompt:
    """A sampled prompt at text level.

    ``examples`` are the in-context examples in prompt order; the query comes after the first
    ``query_slot`` of them. Its text is ``text_before`` + answer slot + ``text_after``.
    """

    config: PromptConfig
    seed: int
    examples: tuple[Example, ...]
    query: Example
    query_slot: int

    @property
    def task(self) -> Task:
        """Return the ``Task`` of the prompt."""
        return get_task(self.config.task)

    @property
    def answer(self) -> str:
        """Return the correct answer word (its prompt form, the token, has a leading space)."""
        return self.query.output

    @property
    def relevant_slots(self) -> list[int]:
        """Return the indices into ``examples`` of the relevant examples, ascending."""
        return [slot for slot, example in enumerate(self.examples) if example.relevant]

    @property
    def text_before(self) -> str:
        """Return the prompt text up to the answer slot (ends with "Output:")."""
        pieces = [p for example in self.examples[:self.query_slot] for p in example_pieces(example)]
        return "".join(pieces + query_pieces(self.query))

    @property
    def text_after(self) -> str:
        """Return the prompt text after the answer slot: "" unless the query precedes some examples."""
        rest = self.examples[self.query_slot:]
        if not rest:
            return ""
        return LINE_END + "".join(p for example in rest for p in example_pieces(example))


def sample_prompt(config: PromptConfig, seed: int, words: WordLists | None = None) -> Prompt:
    """Return the ``Prompt`` for ``config``, deterministic for (config, seed, words).

    ``words`` restricts the vocabulary (e.g. ``single_token_words(tokenizer)``); default: the
    bundled lists. The query's answer and every relevant example's answer are distinct words; no
    word of the query appears anywhere in the examples. The same seed draws the same examples under
    every placement (only their order changes), so placements can be compared pairwise.
    Raises ``UsageError`` when the lists have too few words for ``n_relevant``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UsageError(f"seed must be an integer, got {seed!r}")
    task = get_task(config.task)
    lists = words if words is not None else word_lists()
    _check_lists(lists, task, config.n_relevant)
    rng = random.Random(f"{config.task}/{seed}")

    targets = rng.sample(lists[task.category], config.n_relevant + 1)
    query = relevant_example(rng, lists, task.category, targets[0])
    fresh = frozenset(query.inputs)
    relevant = [relevant_example(rng, lists, task.category, target, exclude=fresh) for target in targets[1:]]
    pool = digits()
    distractors = [distractor_example(rng, task.distractor, pool) for _ in range(config.n_distractor)]

    placement = parse_placement(config.placement, config.n_relevant, config.n_distractor)
    if placement.relevant_at is None:
        examples = relevant + distractors
        rng.shuffle(examples)
    else:
        k = placement.relevant_at
        examples = distractors[:k] + relevant + distractors[k:]
    query_slot = config.n_examples if placement.query_at is None else placement.query_at
    return Prompt(config, seed, tuple(examples), query, query_slot)


def _check_lists(lists: WordLists, task: Task, n_relevant: int) -> None:
    if task.category not in lists.categories:
        raise UsageError(f"the word lists have no {task.category!r} category")
    if len(lists.categories) < 3:
        raise UsageError("the word lists need at least 3 categories (a triple has words of three)")
    thin = [c for c, n in lists.counts().items() if n < 2]
    if thin:
        raise UsageError(f"categories with fewer than 2 words cannot give fresh query words: {', '.join(thin)}")
    available = len(lists[task.category])
    if n_relevant + 1 > available:
        raise UsageError(f"n_relevant={n_relevant} is too large for {task.name}: it needs {n_relevant + 1} "
                         f"distinct {task.category!r} words (one per relevant example plus the query) "
                         f"but only {available} are available")
