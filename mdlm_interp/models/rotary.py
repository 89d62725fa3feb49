"""Rotate-half rotary position embeddings (RoPE): the tables and their application."""

import torch


def rotary_tables(positions: torch.Tensor, rotary_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return float32 (cos, sin) of shape [batch, pos, rotary_dim] for integer ``positions`` [batch, pos].

    ``rotary_dim`` is the number of rotated dimensions of a head (d_head, or less with partial
    rotary embeddings); the frequencies are spread over it, as Hugging Face's default RoPE does."""
    exponents = torch.arange(0, rotary_dim, 2, device=positions.device, dtype=torch.float32) / rotary_dim
    inv_freq = 1.0 / (theta**exponents)
    angles = positions.float()[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, in_float32: bool) -> torch.Tensor:
    """Rotate-half RoPE of ``x`` [batch, pos, head, d_head]; returns the same shape and dtype.

    The first ``cos.shape[-1]`` dimensions of each head are rotated and the rest pass unchanged
    (partial rotary embeddings). ``in_float32`` follows LLaDA (rotate in float32, cast back);
    otherwise the tables are cast to the input dtype first, as Hugging Face Llama/Qwen2 do.
    """
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    rotary_dim = cos.shape[-1]
    work = (x.float() if in_float32 else x)[..., :rotary_dim]
    cos, sin = cos.to(work.dtype), sin.to(work.dtype)
    half = rotary_dim // 2
    rotated = torch.cat([-work[..., half:], work[..., :half]], dim=-1)
    turned = (work * cos + rotated * sin).to(x.dtype)
    return turned if rotary_dim == x.shape[-1] else torch.cat([turned, x[..., rotary_dim:]], dim=-1)
