"""Tokenizers from a checkpoint's own files, and the small BPE tokenizer of tiny random checkpoints."""

import json
from dataclasses import replace
from pathlib import Path

from mdlm_interp.errors import UsageError
from mdlm_interp.models.families import TOKENIZER_FORMATS, FamilySpec


def load_tokenizer(path: Path, spec: FamilySpec):
    """Return a transformers fast tokenizer for the checkpoint directory ``path``.

    tokenizer.json is read with ``PreTrainedTokenizerFast`` for every family (LLaDA ships it);
    without it, Dream/Qwen2 directories are read from vocab.json + merges.txt with transformers'
    own Qwen2 tokenizer. No remote code. The family's special tokens must all be in the
    vocabulary; they are set as the tokenizer's bos/eos/pad/mask tokens.
    """
    from transformers import PreTrainedTokenizerFast, Qwen2Tokenizer

    path = Path(path)
    try:
        if (path / "tokenizer.json").exists():
            tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
        elif (path / "vocab.json").exists() and (path / "merges.txt").exists():
            tokenizer = Qwen2Tokenizer.from_pretrained(str(path))
        else:
            raise UsageError(f"{path}: no tokenizer.json (or vocab.json + merges.txt) in the checkpoint")
    except UsageError:
        raise
    except Exception as error:  # a corrupt tokenizer file: one line naming it
        raise UsageError(f"{path}: cannot read the tokenizer: {str(error).splitlines()[0]}") from error
    vocab = tokenizer.get_vocab()
    for role, token in spec.special_tokens.items():
        if token not in vocab:
            raise UsageError(f"{path}: the tokenizer has no {role} token {token!r} ({spec.family})")
    for role in ("bos", "eos", "pad", "mask"):
        if role in spec.special_tokens:
            setattr(tokenizer, f"{role}_token", spec.special_tokens[role])
    return tokenizer


def check_special_ids(tokenizer, spec: FamilySpec, config: dict, where: str) -> FamilySpec:
    """Return ``spec`` with the special tokens config.json's ids name; raise ``UsageError`` where an id in
    config.json is neither the tokenizer's id of the family's token nor of one of its
    ``alternative_tokens`` (e.g. Dream-Coder's BOS <|beginoftext|>). A chosen alternative also becomes
    the tokenizer's token of that role."""
    chosen = {}
    for role, key in spec.special_id_keys.items():
        if config.get(key) is None:
            continue
        token = spec.special_tokens[role]
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id == config[key]:
            continue
        vocab = tokenizer.get_vocab()
        alternative = next((t for t in spec.alternative_tokens.get(role, ()) if vocab.get(t) == config[key]), None)
        if alternative is None:
            raise UsageError(
                f"{where}: config.json {key}={config[key]} but the tokenizer's {token!r} is id {token_id}"
            )
        chosen[role] = alternative
        if role in ("bos", "eos", "pad", "mask"):
            setattr(tokenizer, f"{role}_token", alternative)
    return replace(spec, special_tokens={**spec.special_tokens, **chosen}) if chosen else spec


def write_tiny_tokenizer(out_dir: Path, spec: FamilySpec, corpus: list[str], vocab_size: int) -> dict[str, int]:
    """Train a byte-level BPE on the texts ``corpus`` and write it in the family's tokenizer format
    (``spec.tokenizer_format``: tokenizer.json, or vocab.json + merges.txt) into ``out_dir``.

    The family's special tokens are appended after the learned vocabulary. Returns the special
    tokens' ids (token string -> id).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(corpus, trainer)
    specials = list(dict.fromkeys(spec.special_tokens.values()))
    tokenizer.add_special_tokens(specials)
    special_ids = {token: tokenizer.token_to_id(token) for token in specials}
    config = {
        "tokenizer_class": TOKENIZER_FORMATS[spec.tokenizer_format],
        "add_bos_token": False,
        "added_tokens_decoder": {
            str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False, "normalized": False}
            for t, i in special_ids.items()
        },
        **{f"{role}_token": token for role, token in spec.special_tokens.items() if role in ("bos", "eos", "pad", "mask")},
    }
    out_dir = Path(out_dir)
    if spec.tokenizer_format == "tokenizer.json":
        tokenizer.save(str(out_dir / "tokenizer.json"))
    else:  # vocab.json + merges.txt
        tokenizer.model.save(str(out_dir))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return special_ids
