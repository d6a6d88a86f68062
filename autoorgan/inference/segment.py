"""One label map from per-class binary probabilities (CCQ / DoDNet inference).

``probs [K, ...]`` (sigmoid of each class's logit, classes in the order of ``label_values``): a voxel takes the
label of its most probable class when that probability exceeds ``threshold`` (plans: ``ccq.combine_threshold``,
default 0.5), background otherwise.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def combine_classes(probs: torch.Tensor | np.ndarray, label_values: Sequence[int], threshold: float = 0.5
                    ) -> np.ndarray:
    """``probs [K, ...]`` -> label map ``[...]`` (uint8, or uint16 with labels above 255)."""
    p = torch.as_tensor(probs)
    best, idx = p.max(0)
    lut = torch.as_tensor(list(label_values), dtype=torch.int64)
    out = torch.where(best > threshold, lut[idx], torch.zeros((), dtype=torch.int64))
    return out.numpy().astype(np.uint8 if max(label_values, default=0) < 256 else np.uint16)
