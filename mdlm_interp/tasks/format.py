"""The fixed text format of a prompt, and the layout of its answer slot.

Every example is two lines, every word (and digit) written with one leading space::

    Input: cat, happy, river
    Output: happy

The query is the same without its answer: ``Input: dog, sad, bread\\nOutput:``; the answer slot
(the token `` sad``) follows "Output:". A prompt is the concatenation of its items' pieces, so the
text, and the token ids built piece by piece (tasks/tokenize.py), agree by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdlm_interp.errors import UsageError
from mdlm_interp.tasks.suite import Example

INPUT = "Input:"
SEPARATOR = ","
OUTPUT = "\nOutput:"
LINE_END = "\n"
CONTENT = "{content}"
MASK_TEXT = "<mask>"
DEFAULT_FILLER = " ."


def word_piece(word: str) -> str:
    """Return the prompt form of a word or digit: the word with one leading space."""
    return " " + word


def tokenizer_corpus() -> list[str]:
    """Return training texts for a small BPE tokenizer that writes every prompt of the suite with one
    token per word: each word of data/words with and without its leading space, the digits, and the
    format's fixed pieces (repeated so that they merge into single tokens)."""
    from mdlm_interp.tasks.words import all_words

    words = all_words()
    symbols = [INPUT, OUTPUT, SEPARATOR, LINE_END, DEFAULT_FILLER, ":"]
    digits = [str(d) for d in range(10)] + [f" {d}" for d in range(10)]
    return [word_piece(w) for w in words] * 4 + words + digits * 4 + symbols * 64


def query_pieces(example: Example) -> list[str]:
    """Return the text pieces of a query (the example without its answer), in order."""
    a, b, c = (word_piece(w) for w in example.inputs)
    return [INPUT, a, SEPARATOR, b, SEPARATOR, c, OUTPUT]


def example_pieces(example: Example) -> list[str]:
    """Return the text pieces of an in-context example (query pieces, answer, line end), in order."""
    return query_pieces(example) + [word_piece(example.output), LINE_END]


MAX_MASKS = 1_000_000  # masks at the answer slot


@dataclass(frozen=True)
class AnswerSlot:
    """How the answer is asked for: ``masks`` tokens at the answer slot, or the next token (causal).

    Diffusion (``causal=False``): ``masks >= 1`` tokens are appended after the query; the first is
    the answer slot; with a ``filler`` the other ``masks - 1`` are that filler token instead of masks.
    Causal: nothing is appended (``masks`` 0 or 1), the answer is the token after the prompt.
    Raises ``UsageError`` for a mask count the model kind cannot take.
    """

    masks: int = 1
    causal: bool = False
    filler: str | None = None

    def __post_init__(self):
        if isinstance(self.masks, bool) or not isinstance(self.masks, int):
            raise UsageError(f"masks must be an integer, got {self.masks!r}")
        if self.causal and self.masks not in (0, 1):
            raise UsageError(f"a causal model takes no masks (its answer is the next token): "
                             f"masks must be 0 or 1, got {self.masks}")
        if self.masks > MAX_MASKS:
            raise UsageError(f"masks must be at most {MAX_MASKS:,} (no model reads a prompt that long), got {self.masks}")
        if not self.causal and self.masks < 1:
            raise UsageError(f"masks must be at least 1 for a diffusion model (the first mask is the answer "
                             f"slot), got {self.masks}")
        if self.filler is not None and not self.filler:
            raise UsageError("the filler must be a non-empty string (default ' .')")

    @property
    def kinds(self) -> list[str]:
        """Return the appended tokens in order: "mask" for the answer slot, then "mask" or "filler"
        for each extra one; empty for a causal model."""
        if self.causal:
            return []
        return ["mask"] + ["filler" if self.filler else "mask"] * (self.masks - 1)


def split_chat_template(template: str) -> tuple[str, str]:
    """Return (text before, text after) the user message of a chat template holding ``{content}`` once."""
    if template.count(CONTENT) != 1:
        raise UsageError(f"a chat template must contain {CONTENT} exactly once, got {template!r}")
    before, after = template.split(CONTENT)
    return before, after


def check_layout(query_last: bool, slot: AnswerSlot, chat_template: str | None) -> None:
    """Raise ``UsageError`` if a query placed before some examples cannot be asked this way."""
    if query_last:
        return
    if slot.causal:
        raise UsageError("query-at:K before the last slot needs a diffusion model: a causal model "
                         "cannot see the examples after its answer")
    if chat_template is not None:
        raise UsageError("query-at:K before the last slot cannot be used with a chat template "
                         "(the answer slot comes after the templated text)")
