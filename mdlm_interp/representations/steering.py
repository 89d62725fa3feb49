"""Steering: TransformerLens hook functions that add ``scale * direction`` to an activation at chosen
positions, and the control, a random direction of the same norm (seeded).

Use with any hooked model: ``model.run_with_hooks(ids, fwd_hooks=steering_hooks(site, direction, scale,
positions))`` or ``with model.hooks(fwd_hooks=...)``. A site is a TransformerLens hook name
(``mdlm_interp.models.hook_names.hook_name("resid_post", 3)``); a direction is [d] for a [batch, pos, d]
site, or [heads * d_head] (or [heads, d_head]) for a [batch, pos, heads, d_head] one.
"""

import torch


def add_direction(direction: torch.Tensor, scale: float, positions: torch.Tensor | None = None):
    """Return a hook that adds ``scale * direction`` to the activation [batch, pos, ...] at the
    positions where ``positions`` [batch, pos] (bool) is true, everywhere if None; elsewhere the
    activation is returned unchanged (bit for bit)."""
    direction = torch.as_tensor(direction)

    def hook(activation: torch.Tensor, hook=None) -> torch.Tensor:
        delta = scale * direction.to(device=activation.device, dtype=activation.dtype).reshape(activation.shape[2:])
        if positions is None:
            return activation + delta
        where = positions.to(device=activation.device, dtype=torch.bool)
        if where.shape != activation.shape[:2]:
            raise ValueError(f"positions {list(where.shape)} do not match the activation's [batch, pos] "
                             f"{list(activation.shape[:2])}")
        return torch.where(where.reshape(*where.shape, *[1] * (activation.ndim - 2)), activation + delta, activation)

    return hook


def random_direction(like: torch.Tensor, seed: int) -> torch.Tensor:
    """Return a random direction with the shape and norm of ``like`` (Gaussian, then rescaled; seeded):
    the control for a steering direction."""
    like = torch.as_tensor(like, dtype=torch.float32)
    draw = torch.randn(like.shape, generator=torch.Generator().manual_seed(seed))
    return draw * (like.norm() / draw.norm())


def label_shift(direction: torch.Tensor, delta: float) -> torch.Tensor:
    """Return the vector [d] along a linear probe's ``direction`` [d] that changes its prediction
    (x @ direction + intercept) by ``delta``: delta * direction / ||direction||^2."""
    direction = torch.as_tensor(direction, dtype=torch.float32)
    return delta * direction / (direction @ direction)


def steering_hooks(site: str, direction: torch.Tensor, scale: float, positions: torch.Tensor | None = None,
                   control_seed: int | None = None) -> list:
    """Return ``fwd_hooks`` [(site, hook)] that steer ``site`` by ``scale * direction`` at ``positions``
    [batch, pos]; with ``control_seed``, by a random direction of the same norm instead (the control)."""
    if control_seed is not None:
        direction = random_direction(direction, control_seed)
    return [(site, add_direction(direction, scale, positions))]
