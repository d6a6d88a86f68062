"""Organ-DETR inference on one preprocessed case: fit to the input shape, one forward pass, top-1 query per organ.

Top-1 per organ (paper): for organ class ``k`` the query with the highest probability of ``k`` is kept and that
probability is the organ's score, whatever the query's argmax; every organ gets exactly one candidate box. A network
with an IoU head (``out["iou"]``) is ranked by probability x predicted IoU instead, for the choice of the query and
for the score (a class probability alone saturates near 1 whatever the box's quality).

Test-time mirroring (``mirror_axes``, input-array axes) runs one more pass per axis with the input flipped, flips
the boxes back (``lo' = n - hi``) and averages per organ; several models (folds) are fused per organ the same way
(:func:`fuse_detections`: score-weighted mean box, mean score).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from autoorgan.boxes import flip_boxes, normalized_to_voxel
from autoorgan.preprocessing.fit import fit_to_input

Detections = dict[int, tuple[np.ndarray, float]]  # organ class (0-based) -> (voxel box [6], score)


def top1_per_organ(logits: torch.Tensor, boxes: torch.Tensor, iou: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits [N, M + 1]``, ``boxes [N, 6]``, optional ``iou [N]`` logits -> (scores ``[M]``, normalized boxes
    ``[M, 6]``), one per organ."""
    prob = logits.float().softmax(-1)[:, :-1]  # [N, M]
    if iou is not None:
        prob = prob * iou.float().sigmoid()[:, None]
    scores, idx = prob.max(0)
    return scores, boxes[idx]


def fuse_detections(runs: Sequence[Detections]) -> Detections:
    """Per organ: score-weighted mean box and mean score over ``runs`` (mirrorings, folds)."""
    if len(runs) == 1:
        return dict(runs[0])
    out = {}
    for k in runs[0]:
        boxes = np.stack([np.asarray(r[k][0], np.float64) for r in runs])
        scores = np.asarray([r[k][1] for r in runs], np.float64)
        w = scores / scores.sum() if scores.sum() > 0 else np.full(len(runs), 1 / len(runs))
        out[k] = ((w[:, None] * boxes).sum(0), float(scores.mean()))
    return out


@torch.no_grad()
def detect_case(model: torch.nn.Module, image: np.ndarray | torch.Tensor, input_shape: tuple[int, ...],
                device: torch.device, mirror_axes: Sequence[int] = (), isotropic: bool = True) -> Detections:
    """``image [C, n0, n1, n2]`` (preprocessed) -> ``{organ class (0-based): (voxel box [6] in the preprocessed
    case frame, clipped to the case, score)}``; ``mirror_axes``: test-time mirroring along these array axes
    (0, 1, 2); ``isotropic``: how over-size cases are fitted (as the model was trained; plans ``organdetr.fit``)."""
    image = torch.as_tensor(np.asarray(image, dtype=np.float32))
    fitted, _, fit = fit_to_input(image, None, tuple(input_shape), isotropic=isotropic)
    x = fitted[None].to(device)
    runs = []
    for axis in (None, *mirror_axes):
        xin = x if axis is None else torch.flip(x, dims=(axis + 2,))
        out = model(xin)
        iou = out.get("iou")
        scores, boxes = top1_per_organ(out["logits"][0], out["boxes"][0], None if iou is None else iou[0])
        vox = normalized_to_voxel(boxes.float().cpu().numpy(), input_shape)
        if axis is not None:
            vox = flip_boxes(vox, axis, input_shape[axis])
        runs.append({k: (vox[k], float(scores[k])) for k in range(len(scores))})
    fused = fuse_detections(runs)
    limit = np.tile(np.asarray(image.shape[1:], np.float64), 2)
    # a box reaching into the padding of the fitted input is clipped to the case (the image holds every organ)
    return {k: (np.clip(fit.box_to_case(box[None])[0], 0, limit), s) for k, (box, s) in fused.items()}

