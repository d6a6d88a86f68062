"""Boxes from label maps ("segment, then box"): every segmentation configuration is also a detector.

Per organ, the box of its **largest connected component** (26-connected; a stray island elsewhere does not stretch
the box) in the label map, in the convention of :mod:`autoorgan.boxes.convention` (array axes, edge coordinates,
``hi`` exclusive); the score is the mean probability of that organ over its largest component, so that ranking
follows how sure the network is about the region it boxed. Organs absent from the label map get no box.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a bool mask ``[n0, n1, n2]`` (empty stays empty)."""
    labelled, n = ndimage.label(mask, structure=_CONNECTIVITY)
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == int(np.argmax(sizes))


def component_box(mask: np.ndarray) -> list[int] | None:
    """Tight voxel box ``[lo0, lo1, lo2, hi0, hi1, hi2]`` of the largest component of ``mask``, or None."""
    comp = largest_component(mask)
    if not comp.any():
        return None
    slc = ndimage.find_objects(comp.astype(np.uint8))[0]
    return [int(s.start) for s in slc] + [int(s.stop) for s in slc]


def boxes_from_label_map(label_map: np.ndarray, labels: Sequence[int]) -> dict[int, list[int]]:
    """``{label: box}`` of the largest component of each label present in ``label_map [n0, n1, n2]``."""
    out = {}
    for lab in labels:
        box = component_box(label_map == lab)
        if box is not None:
            out[int(lab)] = box
    return out


def keep_largest_components(label_map: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """``label_map [n0, n1, n2]`` with every label reduced to its largest 26-connected component (the rest becomes
    background), as nnU-Net's "keep the largest component" post-processing; a new array."""
    out = np.zeros_like(label_map)
    for lab in labels:
        out[largest_component(label_map == lab)] = lab
    return out


def component_scores(label_map: np.ndarray, probs, label_values: Sequence[int]) -> dict[int, float]:
    """Mean probability of each label over its largest component: ``label_map [n0, n1, n2]`` and ``probs
    [K, n0, n1, n2]`` (classes in the order of ``label_values``) on the same grid."""
    out = {}
    for k, lab in enumerate(label_values):
        comp = largest_component(label_map == lab)
        if comp.any():
            out[int(lab)] = float(np.asarray(probs[k])[comp].mean())
    return out
