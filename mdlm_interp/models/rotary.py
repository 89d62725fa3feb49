"""Rotate-half rotary position embeddings (RoPE): the tables and their application."""

import torch


def rotary_tables(positions: torch.Tensor, d_head: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return float32 (cos, sin) of shape [batch, pos, d_head] for integer ``positions`` [batch, pos]."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, d_head, 2, device=positions.device, dtype=torch.float32) / d_head))
    angles = positions.float()[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, in_float32: bool) -> torch.Tensor:
    """Rotate-half RoPE of ``x`` [batch, pos, head, d_head]; returns the same shape and dtype.

    ``in_float32`` follows LLaDA (rotate in float32, cast back); otherwise the tables are cast to the
    input dtype first, as Hugging Face Llama/Qwen2 do.
    """
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    work = x.float() if in_float32 else x
    cos, sin = cos.to(work.dtype), sin.to(work.dtype)
    half = work.shape[-1] // 2
    rotated = torch.cat([-work[..., half:], work[..., :half]], dim=-1)
    return (work * cos + rotated * sin).to(x.dtype)
