"""Organ-DETR inference on one preprocessed case: fit to the input shape, one forward pass, top-1 query per organ.

Top-1 per organ (paper): for organ class ``k`` the query with the highest probability of ``k`` is kept and that
probability is the organ's score, whatever the query's argmax; every organ gets exactly one candidate box.
"""
from __future__ import annotations

import numpy as np
import torch

from autoorgan.boxes import normalized_to_voxel
from autoorgan.dataloading import FitTransform, fit_to_input


def top1_per_organ(logits: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits [N, M + 1]``, ``boxes [N, 6]`` -> (scores ``[M]``, normalized boxes ``[M, 6]``), one per organ."""
    prob = logits.float().softmax(-1)[:, :-1]  # [N, M]
    scores, idx = prob.max(0)
    return scores, boxes[idx]


@torch.no_grad()
def detect_case(model: torch.nn.Module, image: np.ndarray | torch.Tensor, input_shape: tuple[int, ...],
                device: torch.device) -> dict[int, tuple[np.ndarray, float]]:
    """``image [C, n0, n1, n2]`` (preprocessed) -> ``{organ class (0-based): (voxel box [6] in the preprocessed
    case frame, score)}``."""
    image = torch.as_tensor(np.asarray(image, dtype=np.float32))
    fitted, _, fit = fit_to_input(image, None, tuple(input_shape))
    out = model(fitted[None].to(device))
    scores, boxes = top1_per_organ(out["logits"][0], out["boxes"][0])
    return boxes_to_case(scores.cpu().numpy(), boxes.float().cpu().numpy(), input_shape, fit)


def boxes_to_case(scores: np.ndarray, boxes_norm: np.ndarray, input_shape, fit: FitTransform
                  ) -> dict[int, tuple[np.ndarray, float]]:
    vox = fit.box_to_case(normalized_to_voxel(boxes_norm, input_shape))
    return {k: (vox[k], float(scores[k])) for k in range(len(scores))}
