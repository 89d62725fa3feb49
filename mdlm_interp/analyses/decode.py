"""Token ids -> text for reports, through the tokenizer of the store's model, loaded lazily and offline.

A checkpoint directory or ``organism-NAME`` is read from disk; a hub id only from the local Hugging Face
cache (the hub is never asked). When no tokenizer can be loaded, ids are shown as "id 778" and the
caller gets a note saying why.
"""

import re
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=8)
def tokenizer_for(model_id: str):
    """Return (tokenizer or None, note or None) for a store's ``model_id``."""
    try:
        from mdlm_interp.models.checkpoint import read_config, resolve_checkpoint
        from mdlm_interp.models.families import family_for_config
        from mdlm_interp.models.tokenizer import load_tokenizer

        if Path(model_id).is_dir() or model_id.startswith("organism-"):
            path = resolve_checkpoint(model_id)
        elif re.fullmatch(r"[\w.-]+/[\w.-]+", model_id):
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(model_id, local_files_only=True,
                                          allow_patterns=["*.json", "*.txt", "*.model", "tokenizer*"]))
        else:
            raise FileNotFoundError(f"no checkpoint directory {model_id}")
        return load_tokenizer(path, family_for_config(read_config(path))), None
    except Exception as error:  # any failure only costs the text: fall back to ids
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return None, f"the tokenizer of {model_id} could not be loaded ({reason}); tokens are shown as ids"


def token_text(model_id: str, token_id: int) -> str:
    """Return how token ``token_id`` of ``model_id`` reads, quoted so that spaces show (e.g. '" dog"'), or
    "id N" when the tokenizer is unavailable."""
    tokenizer, _ = tokenizer_for(model_id)
    if tokenizer is None:
        return f"id {int(token_id)}"
    text = tokenizer.decode([int(token_id)], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return '"' + text.replace("\n", "\\n") + '"'
