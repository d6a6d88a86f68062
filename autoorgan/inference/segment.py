"""One label map from per-class binary probabilities (CCQ / DoDNet inference).

``probs [K, ...]`` (sigmoid of each class's logit, classes in the order of ``label_values``): a voxel takes the
label of its most probable class when that probability exceeds ``threshold`` (plans: ``ccq.combine_threshold``,
default 0.5), background otherwise. :func:`combine_resampled` does the same on another grid (the scan's), from
each class's probability resampled there, as nnU-Net exports its label maps.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch


def combine_classes(probs: torch.Tensor | np.ndarray, label_values: Sequence[int], threshold: float = 0.5
                    ) -> np.ndarray:
    """``probs [K, ...]`` -> label map ``[...]`` (uint8, or uint16 with labels above 255)."""
    p = torch.as_tensor(probs)
    best, idx = p.max(0)
    lut = torch.as_tensor(list(label_values), dtype=torch.int64)
    out = torch.where(best > threshold, lut[idx], torch.zeros((), dtype=torch.int64))
    return out.numpy().astype(label_dtype(label_values))


def label_dtype(label_values: Sequence[int]) -> np.dtype:
    """The label map's dtype: uint8, or uint16 with labels above 255."""
    return np.dtype(np.uint8 if max(label_values, default=0) < 256 else np.uint16)


def combine_resampled(probs: torch.Tensor | np.ndarray, label_values: Sequence[int], threshold: float,
                      resample: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``probs [K, ...]`` on the network's grid -> label map on the grid ``resample`` maps to (``[1, ...] -> [1,
    *shape]``, e.g. the plans' ``resampling_fn_probabilities``): :func:`combine_classes` of the resampled
    probabilities, one class at a time, so besides the output at most two float maps of the new grid are held.

    Resampling the probabilities keeps what the network said between its voxels; resampling the label map instead
    (per label, nnU-Net's segmentation resampling) rounds every boundary to the coarse grid first. Ties go to the
    first class, as in :func:`combine_classes`.
    """
    p = torch.as_tensor(probs).float().numpy()
    best = idx = None
    for k in range(p.shape[0]):
        pk = np.asarray(resample(p[k:k + 1]), np.float32)[0]
        if best is None:
            best, idx = pk, np.zeros(pk.shape, np.int16)
        else:
            higher = pk > best
            best[higher] = pk[higher]
            idx[higher] = k
            del higher
        del pk
    if best is None:
        raise ValueError("no classes to combine")
    lut = np.asarray(list(label_values), label_dtype(label_values))
    return np.where(best > threshold, lut[idx], lut.dtype.type(0))
