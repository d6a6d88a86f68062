"""Pure-PyTorch 3D multi-scale deformable attention sampling (no compiled extension), via ``grid_sample``.

Sampling locations are normalized points ``[c0, c1, c2]`` in [0, 1] in array axis order, the convention of
autoorgan.boxes: ``c = (index + 0.5) / size`` is the centre of voxel ``index``. ``grid_sample`` wants
``2 * c - 1`` with the last grid dimension ordered ``(x, y, z) = (a2, a1, a0)``, and ``align_corners=False``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def to_grid(points: torch.Tensor) -> torch.Tensor:
    """Normalized points ``[..., 3]`` (array order, [0, 1]) -> grid_sample coordinates ``[..., 3]`` ((x, y, z),
    [-1, 1])."""
    return (2 * points - 1).flip(-1)


def ms_deform_attn_sample(values: list[torch.Tensor], locations: torch.Tensor, weights: torch.Tensor
                          ) -> torch.Tensor:
    """Weighted sum of trilinear samples from several feature levels.

    Args:
        values: per level ``[B, heads, head_dim, n0_l, n1_l, n2_l]``.
        locations: ``[B, Q, heads, L, P, 3]`` normalized points (array order, [0, 1]).
        weights: ``[B, Q, heads, L, P]`` attention weights (softmax over L * P done by the caller).
    Returns:
        ``[B, Q, heads * head_dim]``.
    """
    b, q, h, n_levels, p, _ = locations.shape
    grid = to_grid(locations)
    out = 0
    for lvl, value in enumerate(values):
        d = value.shape[2]
        v = value.reshape(b * h, d, *value.shape[3:])
        g = grid[:, :, :, lvl].permute(0, 2, 1, 3, 4).reshape(b * h, q, p, 1, 3)  # [B*h, Q, P, 1, 3]
        sampled = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)  # [B*h, d, Q, P, 1]
        w = weights[:, :, :, lvl].permute(0, 2, 1, 3).reshape(b * h, 1, q, p, 1)
        out = out + (sampled * w).sum((3, 4))  # [B*h, d, Q]
    return out.reshape(b, h, -1, q).permute(0, 3, 1, 2).reshape(b, q, -1)
