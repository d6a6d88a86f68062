"""Per-class binary Dice + BCE for partially labeled segmentation (CCQ, DoDNet).

``logits [B, K, ...]`` for classes ``K`` (one binary map each), ``targets [B, K, ...]`` in {0, 1} and
``annotated [B, K]`` bool. Only annotated (case, class) pairs contribute: an organ a case does not annotate adds
nothing (no background supervision from it), so its prediction receives no gradient. BCE is the mean over the
voxels of annotated pairs; Dice is the soft Dice per annotated pair whose organ is in the patch, averaged over
those pairs (an annotated organ absent from the patch is still taught by BCE, which pushes it to 0 everywhere;
its Dice would be 0 for any non-zero output and drown the others). A batch without any annotated pair gives zero
(with a graph, so backward still works).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def partial_dice_bce(logits: torch.Tensor, targets: torch.Tensor, annotated: torch.Tensor,
                     smooth: float = 1e-5) -> tuple[torch.Tensor, dict]:
    """-> (loss, {"total", "bce", "dice"}) with ``loss = bce + (1 - soft Dice)`` over annotated pairs."""
    mask = annotated.to(torch.bool)
    if not mask.any():
        zero = logits.sum() * 0.0
        return zero, {"total": 0.0, "bce": 0.0, "dice": 0.0}
    lg = logits[mask].float().flatten(1)          # [P, V]
    tg = targets[mask].float().flatten(1)
    bce = F.binary_cross_entropy_with_logits(lg, tg)
    present = tg.sum(1) > 0
    if present.any():
        p = torch.sigmoid(lg[present])
        t = tg[present]
        dice = ((2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)).mean()
    else:
        dice = torch.ones((), device=lg.device)
    loss = bce + (1 - dice)
    return loss, {"total": float(loss.detach()), "bce": float(bce.detach()), "dice": float(dice.detach())}


def deep_supervision_weights(n: int) -> list[float]:
    """nnU-Net's weights of ``n`` decoder outputs (full resolution first): 1/2^i, the lowest stage 0, summing to 1."""
    w = [0.5 ** i for i in range(n)]
    if n > 1:
        w[-1] = 0.0
    return [v / sum(w) for v in w]


def deep_supervised(loss_fn, outputs: list[torch.Tensor], targets: torch.Tensor, annotated: torch.Tensor
                    ) -> tuple[torch.Tensor, dict]:
    """``loss_fn`` (e.g. :func:`partial_dice_bce`) over every decoder output ``[B, K, *spatial_i]`` (full resolution
    first) against ``targets [B, K, *spatial]`` brought to each output's size by nearest-neighbour downsampling,
    weighted by :func:`deep_supervision_weights`. The logged parts are the full-resolution output's."""
    total: torch.Tensor | None = None
    parts: dict = {}
    for i, (w, out) in enumerate(zip(deep_supervision_weights(len(outputs)), outputs)):
        if w == 0:
            continue
        tgt = targets if out.shape[2:] == targets.shape[2:] else \
            F.interpolate(targets, size=out.shape[2:], mode="nearest-exact")
        term, info = loss_fn(out, tgt, annotated)
        total = term * w if total is None else total + term * w
        if i == 0:
            parts = info
    assert total is not None
    if parts:
        parts = dict(parts, total=float(total.detach()))
    return total, parts
