"""Public entry for sparse autoencoders: ``mdlm_interp.saes.load(path, d_in=None)`` reads an SAE saved
in SAELens' format (cfg.json + sae_weights.safetensors) and returns (SparseAutoencoder, cfg dict).
The SAEs themselves live in ``mdlm_interp.representations`` (sae, sae_format, sae_train)."""

from mdlm_interp.representations.sae_format import load_sae as load
from mdlm_interp.representations.sae_format import save_sae as save

__all__ = ["load", "save"]
