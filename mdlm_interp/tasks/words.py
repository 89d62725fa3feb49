"""Word lists of the task suite: ``data/words/<category>.txt``, one lowercase word per line."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mdlm_interp.errors import UsageError
from mdlm_interp.paths import data_dir


@dataclass(frozen=True)
class WordLists:
    """Words per category, in file order; no word belongs to two categories.

    ``lists["animal"]`` is a tuple of words; ``lists.categories`` the category names in order.
    """

    by_category: Mapping[str, tuple[str, ...]]
    _owner: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        owner = {word: category for category, words in self.by_category.items() for word in words}
        object.__setattr__(self, "_owner", owner)

    @property
    def categories(self) -> tuple[str, ...]:
        """Return the category names, in the order the lists were given."""
        return tuple(self.by_category)

    def __getitem__(self, category: str) -> tuple[str, ...]:
        """Return the words of ``category`` (a tuple of str); KeyError if there is no such category."""
        return self.by_category[category]

    def category_of(self, word: str) -> str | None:
        """Return the category holding ``word``, or None if no list has it."""
        return self._owner.get(word)

    def counts(self) -> dict[str, int]:
        """Return the number of words of each category, e.g. ``{"animal": 79, ...}``."""
        return {category: len(words) for category, words in self.by_category.items()}

    def filtered(self, keep: Callable[[str], bool]) -> WordLists:
        """Return new lists holding only the words for which ``keep(word)`` is true (order kept)."""
        return WordLists({c: tuple(w for w in words if keep(w)) for c, words in self.by_category.items()})


def load_word_lists(categories: Iterable[str], directory: Path | None = None) -> WordLists:
    """Return the word lists of ``categories`` read from ``directory`` (default ``data_dir()/"words"``).

    Each file ``<category>.txt`` holds one lowercase word (letters or digits, no spaces) per line;
    blank lines are skipped. Raises ``UsageError`` naming the file for a missing file, an empty
    list, a malformed or repeated word, or a word that is in two categories.
    """
    directory = Path(directory) if directory is not None else data_dir() / "words"
    return _load(tuple(categories), str(directory))


@functools.lru_cache(maxsize=16)
def _load(categories: tuple[str, ...], directory: str) -> WordLists:
    by_category: dict[str, tuple[str, ...]] = {}
    owner: dict[str, str] = {}
    for category in categories:
        path = Path(directory) / f"{category}.txt"
        if not path.is_file():
            raise UsageError(f"word list {path} not found")
        words = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not words:
            raise UsageError(f"word list {path} is empty")
        for word in words:
            if not (word.isalnum() and word.isascii() and word == word.lower()):
                raise UsageError(f"word list {path}: {word!r} is not one lowercase word")
            if word in owner:
                where = "twice" if owner[word] == category else f"also in {owner[word]}.txt"
                raise UsageError(f"word list {path}: {word!r} appears {where}")
            owner[word] = category
        by_category[category] = tuple(words)
    return WordLists(by_category)


def all_words(directory: Path | None = None) -> list[str]:
    """Return every word (and digit) of ``directory``'s ``*.txt`` lists (default ``data_dir()/"words"``),
    files in name order, each word once."""
    directory = Path(directory) if directory is not None else data_dir() / "words"
    words = []
    for file in sorted(directory.glob("*.txt")):
        words += [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    return list(dict.fromkeys(words))
