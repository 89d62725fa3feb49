"""LoRA adapters in peft's own format on the hooked decoder: load, check, fingerprint, merge.

An adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` as
``peft.PeftModel.save_pretrained`` writes them, keyed by the decoder's module names
(``blocks.{l}.attn.q_proj`` ...), so ``peft.PeftModel.from_pretrained(lm.model, DIR)`` reads it too.
The adapters shipped in data/adapters can be named without their folder ("organism-llada-ma").

An adapter's identity (``adapter_fingerprint``) covers every file that changes the computation: the
weights and adapter_config.json (``lora_alpha``, ``init_lora_weights``, the targets ...), less the
fields that do not (``IDENTITY_IGNORED``). An adapter records the base weights it was trained on in
adapter_config.json's ``base_model_name_or_path`` as ``MODEL@sha256:<hex>`` (``base_reference``; peft
keeps the field), or, in adapters from before that, in training_config.json; an adapter that records
neither, or other weights, is refused. Before peft sees an adapter, ``check_adapter_dir`` checks its
files against what the toolkit supports (``check_adapter_config``, the safetensors header,
training_config.json): anything else is a one-line ``UsageError`` naming the file.

Unmerged, the LoRA layers stay in the decoder (``lora.Linear`` around each adapted projection): every
hook point and attention probe works as before. Merged (``merge=True``), the low-rank update is
folded into the weights and the decoder is plain again.
"""

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from mdlm_interp.errors import UsageError
from mdlm_interp.paths import data_dir

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TRAINING_CONFIG = "training_config.json"  # written by train-ma: {"config": ..., "provenance": {...}}
IDENTITY_IGNORED = ("base_model_name_or_path", "revision", "inference_mode", "peft_version", "auto_mapping")
BASE_MARK = "@sha256:"  # base_model_name_or_path = MODEL@sha256:<hex of the base weights>
SUPPORTED_INIT = (True, False, "gaussian")  # the others (pissa, olora, loftq, eva, corda ...) change the base
# weights when peft loads the adapter
UNSUPPORTED = ("megatron_config", "layer_replication", "use_dora", "use_qalora", "use_bdlora", "loftq_config",
               "eva_config", "corda_config", "lora_ga_config", "arrow_config", "trainable_token_indices",
               "alora_invocation_tokens", "target_parameters", "modules_to_save")  # must be unset (null, false,
# empty): features of peft the hooked decoder does not take (a megatron config makes peft import a module)


@dataclass(frozen=True)
class AdapterInfo:
    """Which adapter a model carries: its directory, the sha256 of its weights file, whether merged."""

    path: str
    fingerprint: str  # adapter_fingerprint: weights and the config's computing fields
    merged: bool

    def facts(self) -> dict:
        """Return {"path", "fingerprint", "merged"} (for a store's settings and provenance)."""
        return {"path": self.path, "fingerprint": self.fingerprint, "merged": self.merged}


def file_sha256(file) -> str:
    """Return the hex sha256 of ``file``'s bytes."""
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json_object(file: Path, what: str) -> dict:
    """Return the JSON object in ``file``; one-line UsageError naming ``what`` if it is not one."""
    try:
        value = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"adapter {what}: {file.name} is not valid JSON ({str(error).splitlines()[0]})") from None
    if not isinstance(value, dict):
        raise UsageError(f"adapter {what}: {file.name} holds a JSON {type(value).__name__}, not an object")
    return value


def adapter_fingerprint(path) -> str:
    """Return "sha256:<hex>" over the sha256 of ``adapter_model.safetensors`` and the canonical JSON (sorted
    keys) of ``adapter_config.json`` without ``IDENTITY_IGNORED``: equal exactly for the same computation."""
    path = Path(path)
    config = read_json_object(path / ADAPTER_CONFIG, str(path))
    computing = {key: value for key, value in config.items() if key not in IDENTITY_IGNORED}
    text = json.dumps({"weights": file_sha256(path / ADAPTER_WEIGHTS), "config": computing}, sort_keys=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def base_reference(model_id: str, weights_fingerprint: str) -> str:
    """Return what an adapter's ``base_model_name_or_path`` holds: "MODEL@sha256:<hex>" (the model as named,
    and the fingerprint of the weights it was trained on)."""
    return f"{model_id}{BASE_MARK}{weights_fingerprint.removeprefix('sha256:')}"


def check_adapter_config(config: dict, where: str) -> None:
    """Raise a one-line UsageError (naming ``where``, the config file) unless ``config`` (adapter_config.json)
    is a LoRA adapter the hooked decoder takes: peft_type LORA, no task_type, r a positive integer,
    lora_alpha a finite number, ``init_lora_weights`` in ``SUPPORTED_INIT``, nothing of ``UNSUPPORTED`` set."""
    def need(ok: bool, message: str):
        if not ok:
            raise UsageError(f"{where}: {message}")

    need(config.get("peft_type") == "LORA", f"peft_type {config.get('peft_type')!r}; mdlm-interp takes LORA adapters")
    need(config.get("task_type") is None, f"task_type {config.get('task_type')!r}; adapters of the hooked decoder "
         "have none (peft would wrap it as a Hugging Face model)")
    rank, alpha = config.get("r"), config.get("lora_alpha")
    need(isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1, f"r {rank!r} is not a positive integer")
    need(isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and math.isfinite(alpha),
         f"lora_alpha {alpha!r} is not a finite number")
    init = config.get("init_lora_weights", True)
    need(isinstance(init, bool) or (isinstance(init, str) and init in SUPPORTED_INIT),
         f"init_lora_weights {init!r} is not supported (it changes the base weights when loaded); mdlm-interp "
         "takes true, false or \"gaussian\"")
    for key in UNSUPPORTED:
        need(not config.get(key), f"{key} is set ({json.dumps(config.get(key))[:60]}); mdlm-interp does not "
             "take it")
    core = config.get("megatron_core")
    need(core in (None, "megatron.core"), f"megatron_core {core!r}: peft would import that module")


def check_adapter_dir(path) -> Path:
    """Return the adapter directory ``path`` names: a directory, or the name of an adapter shipped in
    data/adapters (e.g. "organism-llada-ma"), after checking its files (before peft reads them): both
    peft files present, adapter_config.json a supported LoRA config (``check_adapter_config``),
    adapter_model.safetensors a safetensors file (header and size), training_config.json (if any) a JSON
    object. One-line ``UsageError`` naming the file otherwise."""
    from safetensors import safe_open

    from mdlm_interp.models.checkpoint import open_safetensors

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
    check_adapter_config(read_json_object(path / ADAPTER_CONFIG, str(path)), str(path / ADAPTER_CONFIG))
    with open_safetensors(path / ADAPTER_WEIGHTS, safe_open) as handle:
        handle.keys()
    if (path / TRAINING_CONFIG).exists():
        provenance = read_json_object(path / TRAINING_CONFIG, str(path)).get("provenance", {})
        if not isinstance(provenance, dict):
            raise UsageError(f"adapter {path}: {TRAINING_CONFIG}'s provenance is not an object")
    return path


def trained_on(path: Path) -> str | None:
    """Return the base weights fingerprint an adapter records: from adapter_config.json's
    ``base_model_name_or_path`` ("MODEL@sha256:<hex>"), else from training_config.json (adapters written
    before that); None if it records none."""
    reference = read_json_object(path / ADAPTER_CONFIG, str(path)).get("base_model_name_or_path")
    if isinstance(reference, str) and BASE_MARK in reference:
        return "sha256:" + reference.rsplit(BASE_MARK, 1)[1]
    if not (path / TRAINING_CONFIG).is_file():
        return None
    recorded = read_json_object(path / TRAINING_CONFIG, str(path)).get("provenance", {}).get("base_weights_fingerprint")
    return recorded if isinstance(recorded, str) else None


def apply_adapter(model: nn.Module, path: Path, merge: bool = False, base_fingerprint: str | None = None):
    """Load the LoRA adapter at ``path`` (a directory ``check_adapter_dir`` returned) onto ``model`` (a
    ``HookedDecoder``, modified in place).

    Returns (the model to use, ``AdapterInfo``): the same decoder with LoRA layers inside, or with
    ``merge`` the decoder with the update folded into its weights. Every tensor of the adapter must
    fit a module of the model (names and shapes), and, when ``base_fingerprint`` is given, the adapter
    must record (``trained_on``) that it was trained on those weights; otherwise a one-line ``UsageError``. Parameters
    keep ``requires_grad`` off; the model is in eval mode.
    """
    recorded = trained_on(path)
    if recorded is None and base_fingerprint is not None:
        raise UsageError(f"adapter {path} records no base weights (adapter_config.json's base_model_name_or_path "
                         f"holds no \"MODEL{BASE_MARK}<hex>\" and there is no {TRAINING_CONFIG}); add it to use it")
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
