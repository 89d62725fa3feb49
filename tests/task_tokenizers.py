"""Offline tokenizers for the task-suite tests: a word-level one and a small byte-level BPE."""

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from mdlm_interp.tasks import word_lists
from mdlm_interp.tasks.format import DEFAULT_FILLER, INPUT, LINE_END, OUTPUT, SEPARATOR

MASK = "<|mdm_mask|>"
SPECIALS = ["<unk>", MASK, "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = "<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"
FIXED = [INPUT, SEPARATOR, OUTPUT, LINE_END, DEFAULT_FILLER, "user", "assistant"]


def all_words() -> list[str]:
    """Return every word of the bundled lists."""
    lists = word_lists()
    return [w for c in lists.categories for w in lists[c]]


def held_out() -> set[str]:
    """Return the words the BPE never sees in training: every fourth word of each category."""
    lists = word_lists()
    return {w for c in lists.categories for i, w in enumerate(lists[c]) if i % 4 == 3}


def word_level() -> Tokenizer:
    """Return a raw word-level tokenizer: one token per word (with its leading space), per digit
    (with its space), per fixed piece of the format; decoding concatenates tokens exactly."""
    pieces = ["Input", ":", ",", "\n", "Output", " .", "user", "assistant"]
    pieces += [" " + w for w in all_words()] + [f" {d}" for d in range(10)]
    vocab = {token: i for i, token in enumerate(SPECIALS + pieces)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n| ?[A-Za-z0-9]+| ?[^\sA-Za-z0-9]+"), "isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens(SPECIALS)
    return tokenizer


def byte_bpe() -> Tokenizer:
    """Return a raw byte-level BPE (GPT-2 style) trained on the format and all words but ``held_out()``."""
    skip = held_out()
    corpus = [" " + w for w in all_words() if w not in skip] * 2 + [f" {d}" for d in range(10)] + FIXED * 2
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8000, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


def wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """Return ``tokenizer`` as a transformers fast tokenizer with its mask token set."""
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", mask_token=MASK,
                                   eos_token="<|endoftext|>")
