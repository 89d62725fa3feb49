"""The word-level tokenizer shared by the three model organisms.

One vocabulary for LLaDA, Llama and Dream organisms: every word of data/words (digits included),
the words of the prompt format ("Input", "Output") and of the families' chat templates, every ASCII
punctuation character, the newline, and the union of all families' special tokens. A word's prompt
form (" cat") and its bare form ("cat") are the same single token: spaces and tabs only separate
tokens; a newline is a token of its own. Because the same ids serve every family, the Dream
organism is initialised from the Llama organism without remapping anything.
"""

import json
import string
from pathlib import Path

from mdlm_interp.models.families import FAMILIES, FamilySpec
from mdlm_interp.tasks.words import all_words

UNK = "<unk>"
# One token per word (letters/digits), per newline, per punctuation character; other spaces vanish.
TOKEN_PATTERN = r"[A-Za-z0-9_]+|\n|[^A-Za-z0-9_\s]"
VOCAB_MULTIPLE = 64  # the embedding matrix is padded to a multiple of this, like real vocabularies


def special_tokens() -> list[str]:
    """Return the union of every family's special tokens (first-seen order), then ``<unk>``."""
    tokens = [token for spec in FAMILIES.values() for token in spec.special_tokens.values()]
    return list(dict.fromkeys(tokens + [UNK]))


def pre_tokenizer():
    """Return the ``tokenizers`` pre-tokenizer: words, newlines and single punctuation characters."""
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Split(Regex(TOKEN_PATTERN), behavior="removed", invert=True)


def split_words(text: str) -> list[str]:
    """Return the pieces ``text`` pre-tokenizes into (the strings that must be in the vocabulary)."""
    return [piece for piece, _ in pre_tokenizer().pre_tokenize_str(text)]


def format_texts() -> list[str]:
    """Return every fixed text of the prompt format and of the families' chat templates."""
    from mdlm_interp.tasks import format as prompt_format

    texts = [prompt_format.INPUT, prompt_format.SEPARATOR, prompt_format.OUTPUT, prompt_format.LINE_END,
             prompt_format.DEFAULT_FILLER]
    for spec in FAMILIES.values():
        template = spec.chat_template
        for token in spec.special_tokens.values():
            template = template.replace(token, " ")
        texts += template.split(prompt_format.CONTENT)
    return texts


def vocabulary() -> list[str]:
    """Return the ordered regular tokens: punctuation, newline, format/template words, data/words."""
    pieces = list(string.punctuation) + ["\n"]
    for text in format_texts():
        pieces += split_words(text)
    return list(dict.fromkeys(pieces + all_words()))


def build_tokenizer():
    """Return the ``tokenizers.Tokenizer`` (word level): regular tokens first, special tokens after.

    Ids are fixed by the word lists and the format: the same files give the same ids.
    """
    from tokenizers import Tokenizer, models

    regular = vocabulary()
    specials = special_tokens()
    vocab = {token: i for i, token in enumerate(regular + specials)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizer()
    tokenizer.add_special_tokens(specials)
    return tokenizer


def padded_vocab_size(tokenizer) -> int:
    """Return the model's vocabulary size: the tokenizer's, rounded up to ``VOCAB_MULTIPLE``."""
    return -(-tokenizer.get_vocab_size() // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def write_tokenizer(out_dir: str | Path, spec: FamilySpec) -> dict[str, int]:
    """Write tokenizer.json and tokenizer_config.json for family ``spec`` into ``out_dir``.

    Returns token string -> id for the family's special tokens (for config.json).
    """
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    tokenizer.save(str(out_dir / "tokenizer.json"))
    special_ids = {token: tokenizer.token_to_id(token) for token in spec.special_tokens.values()}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": False,
        "add_eos_token": False,
        "unk_token": UNK,
        "model_max_length": 1 << 20,
        **{f"{role}_token": token for role, token in spec.special_tokens.items() if role in ("bos", "eos", "pad", "mask")},
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return special_ids


def load_fast_tokenizer(spec: FamilySpec):
    """Return the organism tokenizer as a transformers ``PreTrainedTokenizerFast`` set up for ``spec``.

    The same object ``load_model`` gives for an organism checkpoint (built in memory, no files).
    """
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(), unk_token=UNK)
    for role in ("bos", "eos", "pad", "mask"):
        if role in spec.special_tokens:
            setattr(tokenizer, f"{role}_token", spec.special_tokens[role])
    return tokenizer
