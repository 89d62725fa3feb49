"""Representations: sparse autoencoders, linear probes, steering directions and the activation store
they read (docs/representations.md).

``load_sae(path, d_in=None) -> (SparseAutoencoder, cfg dict)`` reads an SAE saved in SAELens' format.
"""


def __getattr__(name: str):
    if name == "load_sae":
        from mdlm_interp.representations.sae_format import load_sae

        return load_sae
    raise AttributeError(f"module 'mdlm_interp.representations' has no attribute {name!r}")


__all__ = ["load_sae"]
