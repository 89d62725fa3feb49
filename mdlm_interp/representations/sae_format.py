"""SAEs on disk in SAELens' format (SAELens 6.x, checked against sae_lens 6.18.0's ``SAE.save_model``
and ``SAE.load_from_disk``): a folder with

- ``sae_weights.safetensors``: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in]
  (float32), exactly the state dict SAELens' StandardSAE / TopKSAE load strictly;
- ``cfg.json``: ``architecture`` ("standard" or "topk"), ``d_in``, ``d_sae``, ``dtype``, ``device``,
  ``apply_b_dec_to_input`` (true), ``normalize_activations`` ("none"), ``reshape_activations``
  ("hook_z" for a ``hook_z`` site, else "none"), ``k`` and ``rescale_acts_by_decoder_norm`` (false)
  for top-k, and ``metadata``: ``hook_name`` (TransformerLens form, e.g. "blocks.3.hook_resid_post"),
  ``model_name``, ``sae_lens_version`` / ``sae_lens_training_version`` (the SAELens format version
  this file follows, "6.18.0": SAELens reads files without them as its older pre-6 format), and this
  toolkit's own keys (``mdlm_interp_version``, ``weights_fingerprint``, ``training``), which SAELens
  keeps as metadata attributes.
"""

import json
from pathlib import Path

import torch

from mdlm_interp.errors import UsageError
from mdlm_interp.representations.sae import SAEShape, SparseAutoencoder
from mdlm_interp.version import __version__

WEIGHTS_FILE = "sae_weights.safetensors"
CONFIG_FILE = "cfg.json"
SAE_LENS_FORMAT = "6.18.0"
TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec")


def sae_config(sae: SparseAutoencoder, hook_name: str, metadata: dict | None = None) -> dict:
    """Return the cfg.json dict of ``sae`` at ``hook_name`` (TransformerLens form); ``metadata`` adds
    keys to its ``metadata`` (e.g. model_name, weights_fingerprint, training)."""
    shape = sae.shape
    config = {
        "architecture": shape.architecture, "d_in": shape.d_in, "d_sae": shape.d_sae,
        "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
        "reshape_activations": "hook_z" if hook_name.endswith("hook_z") else "none",
    }
    if shape.architecture == "topk":
        config.update(k=shape.k, rescale_acts_by_decoder_norm=False)
    config["metadata"] = {"hook_name": hook_name, "sae_lens_version": SAE_LENS_FORMAT,
                          "sae_lens_training_version": SAE_LENS_FORMAT, "mdlm_interp_version": __version__,
                          **(metadata or {})}
    return config


def save_sae(sae: SparseAutoencoder, out, hook_name: str, metadata: dict | None = None) -> Path:
    """Write ``sae`` to folder ``out`` (created if missing) in SAELens' format; return the folder.
    The weights are written first and cfg.json last, so a folder with a cfg.json is complete."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: getattr(sae, name).detach().float().contiguous().clone() for name in TENSORS}
    save_file(tensors, str(out / WEIGHTS_FILE))
    (out / CONFIG_FILE).write_text(json.dumps(sae_config(sae, hook_name, metadata), indent=2) + "\n")
    return out


def read_sae_config(path) -> dict:
    """Return the cfg.json dict of the SAE folder ``path``; a one-line UsageError if it is missing or
    not an SAE this toolkit can run (architecture standard/topk, no activation normalisation)."""
    file = Path(path) / CONFIG_FILE
    try:
        config = json.loads(file.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path} is not an SAE folder: it has no {CONFIG_FILE}") from None
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read {file}: {error}") from None
    if config.get("architecture", "standard") not in ("standard", "topk"):
        raise UsageError(f"{path}: SAE architecture {config.get('architecture')!r} is not supported (standard, topk)")
    if config.get("normalize_activations", "none") not in ("none", None, False):
        raise UsageError(f"{path}: SAEs with normalize_activations={config['normalize_activations']!r} are not supported")
    return config


def load_sae(path, d_in: int | None = None) -> tuple[SparseAutoencoder, dict]:
    """Return (the SAE in folder ``path``, its cfg.json dict); ``d_in``, when given, is the width of
    the site it will read, and a different SAE width is a one-line UsageError."""
    from safetensors.torch import load_file

    config = read_sae_config(path)
    shape = SAEShape(config.get("architecture", "standard"), int(config["d_in"]), int(config["d_sae"]),
                     config.get("k"))
    sae = SparseAutoencoder(shape)
    try:
        tensors = load_file(str(Path(path) / WEIGHTS_FILE))
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read {Path(path) / WEIGHTS_FILE}: {error}") from None
    if set(tensors) != set(TENSORS):
        raise UsageError(f"{path}: {WEIGHTS_FILE} holds {sorted(tensors)}, expected {list(TENSORS)}")
    for name in TENSORS:
        wanted = getattr(sae, name).shape
        if tensors[name].shape != wanted:
            raise UsageError(f"{path}: {name} has shape {list(tensors[name].shape)}, cfg.json implies {list(wanted)}")
    with torch.no_grad():
        for name in TENSORS:
            getattr(sae, name).copy_(tensors[name].float())
    if d_in is not None:
        sae.check_width(d_in, where="the site's activations")
    return sae, config
