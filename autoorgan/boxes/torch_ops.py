"""Torch box operations for networks, losses and matching. Same convention as :mod:`autoorgan.boxes` (read its
docstring): array axis order; voxel/edge boxes ``[lo0, lo1, lo2, hi0, hi1, hi2]``; normalized boxes
``[c0, c1, c2, s0, s1, s2]`` in [0, 1]. Kept apart from autoorgan.boxes so that data workers need no torch."""
from __future__ import annotations

import torch


def center_to_corners(boxes: torch.Tensor) -> torch.Tensor:
    """``[..., 6]`` centre/size -> ``[..., 6]`` lo/hi (same units)."""
    c, s = boxes[..., :3], boxes[..., 3:]
    return torch.cat([c - s / 2, c + s / 2], dim=-1)


def box_volume(boxes: torch.Tensor) -> torch.Tensor:
    """Volume of lo/hi boxes ``[..., 6]`` -> ``[...]`` (negative extents count as 0)."""
    return (boxes[..., 3:] - boxes[..., :3]).clamp(min=0).prod(-1)


def box_iou_union(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise IoU and union of lo/hi boxes ``a [N, 6]``, ``b [M, 6]`` -> ``[N, M]`` each."""
    lo = torch.maximum(a[:, None, :3], b[None, :, :3])
    hi = torch.minimum(a[:, None, 3:], b[None, :, 3:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    union = box_volume(a)[:, None] + box_volume(b)[None, :] - inter
    return inter / union.clamp(min=1e-12), union


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise 3D GIoU of lo/hi boxes ``a [N, 6]``, ``b [M, 6]`` -> ``[N, M]`` in [-1, 1]:
    IoU - (enclosing volume - union) / enclosing volume."""
    iou, union = box_iou_union(a, b)
    lo = torch.minimum(a[:, None, :3], b[None, :, :3])
    hi = torch.maximum(a[:, None, 3:], b[None, :, 3:])
    enclosing = (hi - lo).clamp(min=0).prod(-1)
    return iou - (enclosing - union) / enclosing.clamp(min=1e-12)
