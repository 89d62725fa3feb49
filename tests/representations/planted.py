"""Synthetic activations with planted structure, for the representation tests."""

import numpy as np
import torch

from mdlm_interp.representations.sae import SAEShape, SparseAutoencoder


def sparse_dictionary_data(n: int = 8192, d: int = 32, m: int = 64, k: int = 4, seed: int = 0):
    """Return (activations [n, d] float32, dictionary [m, d] unit rows): each row is a sum of k of the m
    directions with coefficients uniform in [0.5, 1.5] (positive, as ReLU latents are)."""
    g = np.random.default_rng(seed)
    dictionary = g.standard_normal((m, d))
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    chosen = np.argsort(g.random((n, m)), axis=1)[:, :k]
    coefficients = np.zeros((n, m))
    np.put_along_axis(coefficients, chosen, g.uniform(0.5, 1.5, (n, k)), axis=1)
    return (coefficients @ dictionary).astype(np.float32), dictionary


def mean_max_cosine(dictionary: np.ndarray, learned: np.ndarray) -> float:
    """Return the mean over the planted directions [m, d] of the largest |cosine| with a learned row
    [d_sae, d] (rows of both assumed unit norm)."""
    learned = learned / np.linalg.norm(learned, axis=1, keepdims=True)
    return float(np.abs(dictionary @ learned.T).max(axis=1).mean())


def lossless(d: int) -> SparseAutoencoder:
    """Return a standard SAE with 2d latents whose reconstruction relu(x) - relu(-x) is exactly x [..., d]."""
    sae = SparseAutoencoder(SAEShape("standard", d, 2 * d))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
    return sae
