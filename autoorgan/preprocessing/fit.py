"""Bringing a preprocessed organdetr case to the network's fixed input shape, the same way in training and at
inference: an axis longer than the input is scaled down to fit (trilinear image, nearest labels), a shorter one is
padded with the case's minimum intensity (centred at inference, at a random offset in training). The returned
:class:`~autoorgan.boxes.frames.FitTransform` maps boxes between the two frames.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from autoorgan.boxes.frames import FitTransform


def plan_fit(shape, input_shape, rng: np.random.Generator | None = None, isotropic: bool = True,
             zoom: float = 1.0) -> tuple[tuple[int, ...], FitTransform]:
    """Where a case of array ``shape`` goes in the input (no data needed): its size after scaling and the
    :class:`FitTransform`; the geometry :func:`fit_to_input` applies (also used by the planner's organ priors)."""
    shape = np.asarray(shape)
    target = np.asarray(input_shape)
    scale = np.minimum(1.0, target / shape)
    if isotropic:
        scale = np.full(3, min(float(scale.min()) * zoom, float((target / shape).min())))
    new = tuple(int(v) for v in np.clip(np.round(shape * scale), 1, target)) if (scale != 1).any() else \
        tuple(int(v) for v in shape)
    pad = target - np.asarray(new)
    before = np.asarray([rng.integers(0, p + 1) for p in pad]) if rng is not None else pad // 2
    return new, FitTransform(tuple(float(v) for v in np.asarray(new) / shape), tuple(float(v) for v in before))


def fit_to_input(image: torch.Tensor, labels: torch.Tensor | None, input_shape: tuple[int, ...],
                 rng: np.random.Generator | None = None, isotropic: bool = True, zoom: float = 1.0
                 ) -> tuple[torch.Tensor, torch.Tensor | None, FitTransform]:
    """``image [C, n0, n1, n2]`` float, ``labels [n0, n1, n2]`` int or None -> both at ``input_shape`` and the
    mapping. ``rng`` given: random pad offsets (training); else centred. ``isotropic``: a case larger than the input
    is scaled by one factor on every axis (anatomy keeps its proportions; the paper recipe squeezed each axis on its
    own). ``zoom`` (training augmentation): the case is scaled by this factor too, as far as it still fits."""
    new, fit = plan_fit(image.shape[1:], input_shape, rng, isotropic, zoom)
    if new != tuple(image.shape[1:]):
        image = F.interpolate(image[None], size=new, mode="trilinear", align_corners=False)[0]
        if labels is not None:
            labels = F.interpolate(labels[None, None].float(), size=new, mode="nearest-exact")[0, 0].to(labels.dtype)
    pad = np.asarray(input_shape) - np.asarray(new)
    if pad.any():
        spec = []
        for b, p in zip(np.asarray(fit.offset, int)[::-1], pad[::-1]):
            spec += [int(b), int(p - b)]
        fill = image.amin(dim=(1, 2, 3))
        image = torch.stack([F.pad(ch, spec, value=float(v)) for ch, v in zip(image, fill)])
        if labels is not None:
            labels = F.pad(labels, spec, value=0)
    return image, labels, fit


