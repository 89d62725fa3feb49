"""LoRA adapters in peft's own format on the hooked decoder: load, check, fingerprint, merge.

An adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` as
``peft.PeftModel.save_pretrained`` writes them, keyed by the decoder's module names
(``blocks.{l}.attn.q_proj`` ...), so ``peft.PeftModel.from_pretrained(lm.model, DIR)`` reads it too.
The adapters shipped in data/adapters can be named without their folder ("organism-llada-ma").
Adapters trained by ``mdlm-interp train-ma`` also carry ``training_config.json`` naming the base
model's weights fingerprint; such an adapter is refused on other weights.

Unmerged, the LoRA layers stay in the decoder (``lora.Linear`` around each adapted projection): every
hook point and attention probe works as before. Merged (``merge=True``), the low-rank update is
folded into the weights and the decoder is plain again.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from mdlm_interp.errors import UsageError
from mdlm_interp.paths import data_dir

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TRAINING_CONFIG = "training_config.json"  # written by train-ma: {"config": ..., "provenance": {...}}


@dataclass(frozen=True)
class AdapterInfo:
    """Which adapter a model carries: its directory, the sha256 of its weights file, whether merged."""

    path: str
    fingerprint: str
    merged: bool

    def facts(self) -> dict:
        """Return {"path", "fingerprint", "merged"} (for a store's settings and provenance)."""
        return {"path": self.path, "fingerprint": self.fingerprint, "merged": self.merged}


def adapter_fingerprint(path) -> str:
    """Return "sha256:<hex>" of the adapter's ``adapter_model.safetensors``."""
    digest = hashlib.sha256()
    with open(Path(path) / ADAPTER_WEIGHTS, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def check_adapter_dir(path) -> Path:
    """Return the adapter directory ``path`` names: a directory, or the name of an adapter shipped in
    data/adapters (e.g. "organism-llada-ma"); one-line ``UsageError`` if it is neither or lacks files."""
    path = Path(path).expanduser()
    shipped = data_dir() / "adapters" / str(path)
    if not path.is_dir() and len(path.parts) == 1 and shipped.is_dir():
        path = shipped
    if not path.is_dir():
        raise UsageError(f"adapter {path}: no such directory (nor an adapter in {shipped.parent})")
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (path / name).is_file():
            raise UsageError(f"adapter {path}: no {name} (a peft adapter directory holds {ADAPTER_CONFIG} "
                             f"and {ADAPTER_WEIGHTS})")
    return path


def trained_on(path: Path) -> str | None:
    """Return the base weights fingerprint an adapter records in training_config.json (None: not recorded)."""
    file = path / TRAINING_CONFIG
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text()).get("provenance", {}).get("base_weights_fingerprint")
    except json.JSONDecodeError as error:
        raise UsageError(f"adapter {path}: {TRAINING_CONFIG} is not valid JSON ({error})") from None


def apply_adapter(model: nn.Module, path, merge: bool = False, base_fingerprint: str | None = None):
    """Load the LoRA adapter at ``path`` onto ``model`` (a ``HookedDecoder``, modified in place).

    Returns (the model to use, ``AdapterInfo``): the same decoder with LoRA layers inside, or with
    ``merge`` the decoder with the update folded into its weights. Every tensor of the adapter must
    fit a module of the model (names and shapes), and, when both are known, the adapter must have been
    trained on weights with ``base_fingerprint``; otherwise a one-line ``UsageError``. Parameters
    keep ``requires_grad`` off; the model is in eval mode.
    """
    path = check_adapter_dir(path)
    recorded = trained_on(path)
    if recorded is not None and base_fingerprint is not None and recorded != base_fingerprint:
        raise UsageError(f"adapter {path} was trained on weights {recorded}, not on these ({base_fingerprint})")
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open

    with safe_open(str(path / ADAPTER_WEIGHTS), "pt") as handle:
        stored = set(handle.keys())
    try:
        peft_model = PeftModel.from_pretrained(model, str(path), is_trainable=False)
    except (ValueError, RuntimeError, KeyError, TypeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"adapter {path} does not fit this model: {reason}") from None
    expected = set(get_peft_model_state_dict(peft_model, save_embedding_layers=False))  # never asks the hub
    if stored != expected:
        missing, unexpected = sorted(expected - stored), sorted(stored - expected)
        raise UsageError(f"adapter {path} does not fit this model: "
                         + (f"missing {missing[0]} ({len(missing)} missing)" if missing else
                            f"unexpected {unexpected[0]} ({len(unexpected)} unexpected)"))
    adapted = peft_model.merge_and_unload() if merge else peft_model.base_model.model
    adapted.requires_grad_(False)
    adapted.eval()
    return adapted, AdapterInfo(str(path), adapter_fingerprint(path), merge)
