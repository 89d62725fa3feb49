"""The 16 tasks: 8 relevant rules ("select the word of category C") x 2 distractor rules on digits.

A relevant example is a triple of words from three different categories whose answer is the
one word of the task's category, so the rule can only be known from the examples. A distractor
example is a triple of three different digits whose answer is the largest or smallest.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mdlm_interp.errors import UsageError
from mdlm_interp.tasks.words import WordLists, load_word_lists

CATEGORY_NAMES = {  # file name (data/words/<name>.txt) -> what the rule selects, in words
    "adjective": "adjective",
    "verb": "verb",
    "animal": "animal",
    "object": "object (a man-made thing)",
    "profession": "profession",
    "body": "body part",
    "place": "place",
    "food": "food",
}
CATEGORIES = tuple(CATEGORY_NAMES)
DIGITS_LIST = "digits"
DISTRACTOR_RULES = {"largest": max, "smallest": min}
TASK_NAMES = tuple(f"{category}+{rule}" for category in CATEGORIES for rule in DISTRACTOR_RULES)


@dataclass(frozen=True)
class Task:
    """One task of the suite: relevant examples pick the ``category`` word, distractors the ``rule`` digit."""

    name: str
    category: str
    distractor: str

    @property
    def description(self) -> str:
        """Return a one-line description of both rules of the task."""
        return (
            f"relevant examples select the {CATEGORY_NAMES[self.category]} among three words of different categories; "
            f"distractor examples select the {self.distractor} of three digits"
        )


@dataclass(frozen=True)
class Example:
    """One example (or the query): three ``inputs`` and the ``output`` the rule selects among them.

    ``relevant`` is True for the task's word rule and False for the digit (distractor) rule.
    """

    inputs: tuple[str, str, str]
    output: str
    relevant: bool


def get_task(name: str) -> Task:
    """Return the ``Task`` called ``name`` (e.g. "adjective+largest"); ``UsageError`` if unknown."""
    if name not in TASK_NAMES:
        raise UsageError(f"unknown task {name!r}; tasks are <category>+<largest|smallest> with category one of "
                         f"{', '.join(CATEGORIES)} (see `mdlm-interp tasks list`)")
    category, distractor = name.split("+")
    return Task(name, category, distractor)


def word_lists() -> WordLists:
    """Return the bundled word lists of the 8 categories (``data/words/<category>.txt``)."""
    return load_word_lists(CATEGORIES)


def digits() -> tuple[str, ...]:
    """Return the digits of ``data/words/digits.txt`` (single characters "0".."9")."""
    values = load_word_lists([DIGITS_LIST])[DIGITS_LIST]
    if len(values) < 3 or any(len(d) != 1 or not d.isdigit() for d in values):
        raise UsageError("data/words/digits.txt must hold at least three single digits, one per line")
    return values


def relevant_example(rng: random.Random, lists: WordLists, category: str, target: str,
                     exclude: frozenset[str] = frozenset()) -> Example:
    """Return a relevant ``Example``: ``target`` (a ``category`` word) with one word of each of two
    other categories drawn uniformly (words in ``exclude`` are never drawn), in a uniformly random order.
    """
    others = rng.sample([c for c in lists.categories if c != category], 2)
    inputs = [target] + [rng.choice([w for w in lists[c] if w not in exclude]) for c in others]
    rng.shuffle(inputs)
    return Example(tuple(inputs), target, relevant=True)


def distractor_example(rng: random.Random, rule: str, pool: tuple[str, ...]) -> Example:
    """Return a distractor ``Example``: three different digits from ``pool``, answer by ``rule``
    ("largest" or "smallest")."""
    inputs = rng.sample(pool, 3)
    return Example(tuple(inputs), DISTRACTOR_RULES[rule](inputs, key=int), relevant=False)
