"""Boxes from label maps ("segment, then box"): every segmentation configuration is also a detector.

Per organ, the box of its **largest connected component** (26-connected; a stray island elsewhere does not stretch
the box) in the label map, in the convention of :mod:`autoorgan.boxes.convention` (array axes, edge coordinates,
``hi`` exclusive); the score is the mean probability of that organ over its largest component, so that ranking
follows how sure the network is about the region it boxed. Organs absent from the label map get no box.

Post-processing of label maps (:func:`reduce_components`, ``autoorgan_predict --components``): ``all`` keeps every
component; ``largest`` keeps each organ's largest component (nnU-Net's post-processing); ``located`` keeps, per organ,
the component that lies nearest where the organ lies in the training cases (:func:`organ_locations`: the offset of
its box centre from the body box centre, in mm), among the components at least ``LOCATED_MIN_FRACTION`` of the
largest. ``located`` is for paired organs that look alike (left/right parotid): a network that sees an organ-sized
patch cannot tell the sides apart and marks both, and the wrong side is often the larger piece.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

# 26-connected (scipy.ndimage.generate_binary_structure(3, 3)); scipy is imported on use, so --help stays quick
_CONNECTIVITY = np.ones((3, 3, 3), bool)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a bool mask ``[n0, n1, n2]`` (empty stays empty)."""
    from scipy import ndimage
    labelled, n = ndimage.label(mask, structure=_CONNECTIVITY)
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == int(np.argmax(sizes))


def component_box(mask: np.ndarray) -> list[int] | None:
    """Tight voxel box ``[lo0, lo1, lo2, hi0, hi1, hi2]`` of the largest component of ``mask``, or None."""
    from scipy import ndimage
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
    return reduce_components(label_map, labels, "largest")


COMPONENT_RULES = ("all", "largest", "located")
LOCATED_MIN_FRACTION = 0.1    # a smaller component (noise near the expected place) is never chosen over a real one
LOCATION_SPREAD_FLOOR_MM = 5.0   # the spread of an organ's offset is at least this (few or very regular cases)
LOCATION_MIN_CASES = 3           # an organ seen in fewer training cases has no location: its largest component


def organ_locations(cases: Iterable[tuple[Mapping, Sequence[int], Sequence[float]]],
                    labels: Sequence[int]) -> dict[str, dict]:
    """Where each organ lies relative to the body, from training cases.

    ``cases``: per case ``(boxes {label: [lo0, lo1, lo2, hi0, hi1, hi2]}, body_box [6], spacing [3] mm)``, boxes and
    body box in voxels of one array frame (the raw image's array axes: the fingerprint's ``boxes`` and
    ``body_bbox``). Returns ``{"label": {"offset_mm": [3], "spread_mm": [3], "num_cases": n}}``: the median offset of
    the organ's box centre from the body box centre (mm, per array axis) and a robust spread per axis ((p95 - p05) /
    3.29, the standard deviation of a normal distribution; at least ``LOCATION_SPREAD_FLOOR_MM``). Organs in fewer
    than ``LOCATION_MIN_CASES`` cases are left out.

    >>> loc = organ_locations([({3: [0, 40, 0, 10, 50, 10]}, [0, 0, 0, 10, 100, 10], [1.0, 2.0, 1.0])] * 3, [3])
    >>> loc["3"]["offset_mm"], loc["3"]["spread_mm"]
    ([0.0, -10.0, 0.0], [5.0, 5.0, 5.0])
    """
    offsets: dict[int, list] = {int(lab): [] for lab in labels}
    for boxes, body, spacing in cases:
        body = np.asarray(body, np.float64)
        centre = (body[:3] + body[3:]) / 2
        for lab, box in boxes.items():
            if int(lab) in offsets:
                box = np.asarray(box, np.float64)
                offsets[int(lab)].append(((box[:3] + box[3:]) / 2 - centre) * np.asarray(spacing, np.float64))
    out = {}
    for lab, values in offsets.items():
        if len(values) >= LOCATION_MIN_CASES:
            arr = np.asarray(values)
            p05, med, p95 = np.percentile(arr, [5, 50, 95], axis=0)
            spread = np.maximum((p95 - p05) / 3.29, LOCATION_SPREAD_FLOOR_MM)
            out[str(lab)] = {"offset_mm": np.round(med, 2).tolist(), "spread_mm": np.round(spread, 2).tolist(),
                             "num_cases": len(values)}
    return out


def reduce_components(label_map: np.ndarray, labels: Sequence[int], rule: str = "largest",
                      body_box: Sequence[int] | None = None, spacing: Sequence[float] | None = None,
                      locations: Mapping[str, Mapping] | None = None) -> np.ndarray:
    """``label_map [n0, n1, n2]`` with each organ reduced by ``rule`` (module docstring); a new array.

    ``located`` needs the body box ``[lo0, lo1, lo2, hi0, hi1, hi2]`` (voxels) and ``spacing`` (mm) of this array
    and the ``locations`` of :func:`organ_locations` in the same array frame; an organ without a location keeps its
    largest component. Per organ the candidates are its 26-connected components holding at least
    ``LOCATED_MIN_FRACTION`` of the largest one's voxels; the kept one has the smallest distance, in spreads, from
    its box centre's offset to the organ's median offset.
    """
    from scipy import ndimage
    if rule not in COMPONENT_RULES:
        raise ValueError(f"unknown component rule {rule!r}; choose {', '.join(COMPONENT_RULES)}")
    if rule == "all":
        return label_map.copy()
    if rule == "located" and (body_box is None or spacing is None or locations is None):
        raise ValueError("rule 'located' needs body_box, spacing and locations")
    if rule == "located":
        body = np.asarray(body_box, np.float64)
        body_centre, mm = (body[:3] + body[3:]) / 2, np.asarray(spacing, np.float64)
    out = np.zeros_like(label_map)
    objects = ndimage.find_objects(label_map.astype(np.int32, copy=False)) if label_map.size else []
    for lab in labels:
        if lab < 1 or lab > len(objects) or objects[lab - 1] is None:
            continue
        region = objects[lab - 1]               # the organ's bounding region: labelling only there is much faster
        mask = label_map[region] == lab
        labelled, n = ndimage.label(mask, structure=_CONNECTIVITY)
        if n <= 1:
            out[region][mask] = lab
            continue
        sizes = np.bincount(labelled.ravel())
        sizes[0] = 0
        keep = int(np.argmax(sizes))
        loc = (locations or {}).get(str(lab)) if rule == "located" else None
        if loc is not None:
            lo = np.array([s.start for s in region], np.float64)
            candidates = [k for k in range(1, n + 1) if sizes[k] >= LOCATED_MIN_FRACTION * sizes[keep]]
            slices = ndimage.find_objects(labelled)
            dist = []
            for k in candidates:
                centre = lo + np.array([(s.start + s.stop) / 2 for s in slices[k - 1]])
                offset_mm = (centre - body_centre) * mm
                dist.append(float(np.linalg.norm((offset_mm - loc["offset_mm"]) / np.asarray(loc["spread_mm"]))))
            keep = candidates[int(np.argmin(dist))]
        out[region][labelled == keep] = lab
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
