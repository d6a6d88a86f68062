"""Sliding-window prediction of per-class probabilities (ccq, dodnet) with nnU-Net's tiling and Gaussian weights.

``image [C, n0, n1, n2]`` (preprocessed) -> ``probs [K, n0, n1, n2]`` (sigmoid of each class's logit). Tile
positions come from nnunetv2's ``compute_steps_for_sliding_window`` (step = ``step_size`` x patch), each tile's
output is weighted by nnunetv2's ``compute_gaussian`` (sigma = patch / 8) and the weighted sum is divided by the
summed weights; images smaller than the patch are padded (``acvl_utils`` ``pad_nd_image``) and cropped back.
Accumulation runs on ``device``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from autoorgan.utils.device import conv_memory_format


@torch.no_grad()
def sliding_window_probs(model: torch.nn.Module, image: np.ndarray | torch.Tensor, patch_size: Sequence[int],
                         device: torch.device, num_classes: int, step_size: float = 0.5,
                         classes: torch.Tensor | None = None) -> torch.Tensor:
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window
    x = torch.as_tensor(np.asarray(image, dtype=np.float32))
    x, slicer = pad_nd_image(x, list(patch_size), "constant", {"value": 0}, True, None)
    shape = x.shape[1:]
    acc_dev = device
    k = num_classes if classes is None else int(classes.numel())
    acc = torch.zeros((k, *shape), dtype=torch.float32, device=acc_dev)
    weight = torch.zeros(tuple(shape), dtype=torch.float32, device=acc_dev)
    gauss = compute_gaussian(tuple(patch_size), sigma_scale=1. / 8, value_scaling_factor=10, dtype=torch.float32,
                             device=acc_dev)
    steps = compute_steps_for_sliding_window(shape, list(patch_size), step_size)
    cls = classes.to(device) if classes is not None else None
    layout = conv_memory_format(device)
    for s0 in steps[0]:
        for s1 in steps[1]:
            for s2 in steps[2]:
                sl = (slice(s0, s0 + patch_size[0]), slice(s1, s1 + patch_size[1]), slice(s2, s2 + patch_size[2]))
                tile = x[(slice(None), *sl)][None].to(device, memory_format=layout)
                prob = torch.sigmoid(model(tile, cls)[0].float()).to(acc_dev)
                acc[(slice(None), *sl)] += prob * gauss
                weight[sl] += gauss
    probs = acc / weight.clamp_min(1e-8)
    return probs[(slice(None), *slicer[1:])].cpu()
