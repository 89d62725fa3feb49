"""Sparse autoencoders on activations [n, d_in]: a top-k SAE and a ReLU + L1 ("standard") SAE.

The arithmetic is SAELens' (so a saved SAE reconstructs the same there, ``sae_format``):

    encode(x) = act((x - b_dec) @ W_enc + b_enc)      act = top-k then ReLU ("topk") or ReLU ("standard")
    decode(f) = f @ W_dec + b_dec

with W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in]. The decoder's rows (the
dictionary directions, "decoder columns" in the usual matrix notation) are kept at unit norm:
``constrain_decoder`` projects the gradient onto the rows' tangent space and ``normalize_decoder``
rescales after each step.

Losses (``losses``) are normalised so that a coefficient means the same at every activation scale:
nmse = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the batch (= 1 - explained variance); the
top-k SAE adds ``aux_coefficient`` times the auxiliary loss of Gao et al. (2024): the ``aux_k`` dead
latents with the largest pre-activations reconstruct the residual x - x_hat (normalised the same
way); the standard SAE adds ``l1_coefficient * mean_rows(sum_i f_i ||W_dec_i||) / rms`` with
rms = sqrt(mean_rows ||x - mean(x)||^2).
"""

from dataclasses import dataclass

import torch
from torch import nn

from mdlm_interp.errors import UsageError

ARCHITECTURES = ("topk", "standard")


@dataclass(frozen=True)
class SAEShape:
    """What defines an SAE's function: architecture ("topk" or "standard"), widths, k (top-k only)."""

    architecture: str
    d_in: int
    d_sae: int
    k: int | None = None

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise UsageError(f"unknown SAE architecture {self.architecture!r}; choose from {', '.join(ARCHITECTURES)}")
        if self.d_in < 1 or self.d_sae < 1:
            raise UsageError(f"SAE widths must be positive (d_in {self.d_in}, d_sae {self.d_sae})")
        if self.architecture == "topk":
            if self.k is None or self.k < 1:
                raise UsageError("a top-k SAE needs k of at least 1")
            if self.k > self.d_sae:
                raise UsageError(f"k = {self.k} is larger than the dictionary (d_sae = {self.d_sae})")


class SparseAutoencoder(nn.Module):
    """An SAE with SAELens' parameter names and arithmetic (see the module docstring)."""

    def __init__(self, shape: SAEShape):
        super().__init__()
        self.shape = shape
        self.W_enc = nn.Parameter(torch.zeros(shape.d_in, shape.d_sae))
        self.b_enc = nn.Parameter(torch.zeros(shape.d_sae))
        self.W_dec = nn.Parameter(torch.zeros(shape.d_sae, shape.d_in))
        self.b_dec = nn.Parameter(torch.zeros(shape.d_in))

    def initialize(self, seed: int, b_dec: torch.Tensor | None = None) -> "SparseAutoencoder":
        """Draw unit-norm decoder rows (seeded), set W_enc = W_dec^T, b_enc = 0 and b_dec to
        ``b_dec`` [d_in] (e.g. the data's mean) or 0; return self."""
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            directions = torch.randn(self.shape.d_sae, self.shape.d_in, generator=generator)
            self.W_dec.copy_(directions / directions.norm(dim=1, keepdim=True))
            self.W_enc.copy_(self.W_dec.T)
            self.b_enc.zero_()
            self.b_dec.copy_(b_dec if b_dec is not None else torch.zeros(self.shape.d_in))
        return self

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """Return the encoder's pre-activations [..., d_sae] of activations ``x`` [..., d_in]."""
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """Return the latents [..., d_sae] of pre-activations [..., d_sae] (top-k then ReLU, or ReLU)."""
        if self.shape.architecture == "standard":
            return torch.relu(pre)
        values, indices = pre.topk(self.shape.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Return the latents [..., d_sae] of activations ``x`` [..., d_in]."""
        return self.activate(self.pre_activations(x))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Return the reconstruction [..., d_in] of latents [..., d_sae]."""
        return latents @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the reconstruction [..., d_in] of activations ``x`` [..., d_in]."""
        return self.decode(self.encode(x))

    def check_width(self, d_in: int, where: str = "the activations") -> None:
        """Raise a one-line UsageError unless ``d_in`` is the SAE's input width."""
        if int(d_in) != self.shape.d_in:
            raise UsageError(f"the SAE's input width is {self.shape.d_in} but {where} have width {d_in}")

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale every decoder row to unit norm (in place)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp(min=1e-12))

    def constrain_decoder(self):
        """Register a gradient hook that removes each decoder row's gradient component along the row
        (so a step moves on the unit sphere to first order); return the hook handle."""

        def project(grad: torch.Tensor) -> torch.Tensor:
            rows = self.W_dec.detach()
            return grad - (grad * rows).sum(dim=1, keepdim=True) * rows

        return self.W_dec.register_hook(project)


def total_variance(x: torch.Tensor) -> torch.Tensor:
    """Return sum ||x - mean(x)||^2 over the rows of ``x`` [n, d] (a scalar), at least 1e-12."""
    return ((x - x.mean(dim=0)) ** 2).sum().clamp(min=1e-12)


def reconstruction_metrics(x: torch.Tensor, reconstruction: torch.Tensor, latents: torch.Tensor) -> dict:
    """Return floats for activations ``x`` [n, d], their reconstruction [n, d] and latents [n, d_sae]:
    mse (mean squared error per element), explained_variance (1 - sum ||x - x_hat||^2 /
    sum ||x - mean(x)||^2), l0 (mean number of active latents per row) and dead_fraction (share of
    latents active on no row)."""
    error = ((x - reconstruction) ** 2).sum()
    active = latents > 0
    return {
        "mse": float(error / x.numel()),
        "explained_variance": float(1 - error / total_variance(x)),
        "l0": float(active.sum(dim=1).float().mean()),
        "dead_fraction": float((~active.any(dim=0)).float().mean()),
    }


@torch.no_grad()
def evaluate(sae: SparseAutoencoder, x: torch.Tensor, batch_size: int = 4096) -> dict:
    """Return ``reconstruction_metrics`` of ``sae`` on activations ``x`` [n, d_in], computed in
    batches of ``batch_size`` rows (error sums and activity pooled over all rows)."""
    sae.check_width(x.shape[-1])
    x = x.float()
    error, l0, alive = 0.0, 0.0, torch.zeros(sae.shape.d_sae, dtype=torch.bool)
    for start in range(0, len(x), batch_size):
        rows = x[start:start + batch_size]
        latents = sae.encode(rows)
        error += float(((rows - sae.decode(latents)) ** 2).sum())
        l0 += float((latents > 0).sum())
        alive |= (latents > 0).any(dim=0)
    return {"mse": error / x.numel(), "explained_variance": 1 - error / float(total_variance(x)),
            "l0": l0 / len(x), "dead_fraction": float((~alive).float().mean())}


def losses(sae: SparseAutoencoder, x: torch.Tensor, dead: torch.Tensor, *, l1_coefficient: float,
           aux_k: int, aux_coefficient: float) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """Return (loss to minimise, float terms for the progress bar, latents [n, d_sae]) on a batch
    ``x`` [n, d_in]; ``dead`` [d_sae] bool marks the latents the auxiliary loss revives (top-k only).

    Terms: loss, mse, ev (explained variance), l0, and aux (top-k) or l1 (standard).
    """
    variance = total_variance(x)
    pre = sae.pre_activations(x)
    latents = sae.activate(pre)
    reconstruction = sae.decode(latents)
    nmse = ((x - reconstruction) ** 2).sum() / variance
    terms = {"mse": float(nmse.detach() * variance / x.numel()), "ev": float(1 - nmse.detach()),
             "l0": float((latents > 0).sum(dim=1).float().mean())}
    if sae.shape.architecture == "standard":
        rms = (variance / len(x)).sqrt()
        l1 = (latents * sae.W_dec.norm(dim=1)).sum(dim=1).mean() / rms
        loss = nmse + l1_coefficient * l1
        terms["l1"] = float(l1.detach())
    else:
        aux = torch.zeros(())
        n_dead = int(dead.sum())
        if n_dead and aux_k and aux_coefficient:
            residual = (x - reconstruction).detach()
            dead_pre = pre.masked_fill(~dead, float("-inf"))
            values, indices = dead_pre.topk(min(aux_k, n_dead), dim=-1, sorted=False)
            aux_latents = torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
            aux = ((residual - aux_latents @ sae.W_dec) ** 2).sum() / total_variance(residual)
        loss = nmse + aux_coefficient * aux
        terms["aux"] = float(aux.detach())
    terms = {"loss": float(loss.detach()), **terms}
    return loss, terms, latents.detach()
