"""Partial-label segmentation loss (cross-entropy + soft Dice) for maps ``[B, M + 1, ...]`` (channel 0 = background,
channel ``k`` = organ class ``k - 1``).

A class that is not annotated in a case is unknown there: its voxels are labelled 0 in that case's label map
although they may belong to the organ. So for such a case

* cross-entropy uses the *marginal* background probability ``p(background) + sum of p(unannotated classes)`` for
  voxels labelled background (a voxel labelled 0 is "background or an unannotated organ"), and never pushes an
  unannotated class down;
* Dice is averaged over the annotated organ classes only (background excluded, as nnU-Net does).

With every class annotated both reduce to the usual CE + Dice.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def downsample_onehot(labels: torch.Tensor, num_channels: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Label map ``[B, n0, n1, n2]`` (class indices 0..M) -> soft targets ``[B, M + 1, *shape]`` by averaging the
    one-hot map over each output voxel's footprint (small organs do not vanish)."""
    onehot = F.one_hot(labels.long(), num_channels).permute(0, 4, 1, 2, 3).float()
    if tuple(onehot.shape[2:]) == tuple(shape):
        return onehot
    return F.adaptive_avg_pool3d(onehot, shape)


def partial_ce_dice(logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor, smooth: float = 1e-5
                    ) -> torch.Tensor:
    """CE + Dice of ``logits [B, M + 1, ...]`` against soft targets ``[B, M + 1, ...]``; ``annotated [B, M]`` bool
    (per case, which organ classes are annotated). Returns a scalar."""
    b, c = logits.shape[:2]
    logits = logits.float()
    log_p = logits.log_softmax(1)
    unknown = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=logits.device), ~annotated], 1)  # [B, M + 1]
    # marginal background: log(p_bg + sum over unannotated p_k)
    masked = logits.masked_fill(~(unknown | (torch.arange(c, device=logits.device) == 0))[:, :, None, None, None],
                                float("-inf"))
    log_bg = torch.logsumexp(masked, 1) - torch.logsumexp(logits, 1)
    fg_known = (~unknown)[:, 1:, None, None, None].float()
    ce = -(target[:, 0] * log_bg + (target[:, 1:] * log_p[:, 1:] * fg_known).sum(1)).mean()
    p = log_p.exp()[:, 1:]
    t = target[:, 1:]
    dims = tuple(range(2, logits.ndim))
    dice = (2 * (p * t).sum(dims) + smooth) / (p.sum(dims) + t.sum(dims) + smooth)  # [B, M]
    ann = annotated.float()
    dice_loss = -(dice * ann).sum() / ann.sum().clamp(min=1)
    return ce + dice_loss


def multiscale_seg_loss(seg_logits: list[torch.Tensor], labels: torch.Tensor, annotated: torch.Tensor
                        ) -> torch.Tensor:
    """Organ-DETR's L_seg = sum over MSA levels of (CE + Dice); ``labels [B, n0, n1, n2]`` at input resolution."""
    total = 0
    for logits in seg_logits:
        target = downsample_onehot(labels, logits.shape[1], tuple(logits.shape[2:]))
        total = total + partial_ce_dice(logits, target, annotated)
    return total
