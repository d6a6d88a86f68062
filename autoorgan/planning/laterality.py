"""Left/right organ pairs and the patient's left-right axis of an image: what mirroring a scan left-right needs.

Mirroring a head-and-neck scan left-right gives a plausible scan of a mirrored patient, in which the left parotid
sits where the right one was. Test-time mirroring of a segmentation (``autoorgan_predict --tta``) therefore flips
the image along the patient's left-right axis, predicts, flips the probabilities back and swaps the channels of each
left/right pair before averaging.

* :func:`lateral_pairs`: the pairs, from the label names (``LeftParotid``/``RightParotid``, ``kidney_left``/
  ``kidney_right``, ``Parotid_L``/``Parotid_R``, ``Lt_Lens``/``Rt_Lens``); the plans record them
  (``lateral_pairs``), so a dataset with other names can list its pairs there.
* :func:`left_right_axis`: which axis of the preprocessed array runs along the patient's left-right (world x in
  LPS), from the image's direction matrix; None for an oblique image (no axis within 45 degrees of it).
* :func:`plan_lateral_axis`: whether the dataset's headers can be trusted for that (the planner checks where the
  paired organs lie in the fingerprinted cases; OpenKBP's headers put them apart along world y), else the array
  axis they lie apart along; the plans record it (``lateral_axis``) and :func:`case_lateral_axis` applies it.
* :func:`swap_order`: the channel order that swaps each pair (``probs[swap_order(...)]``); :func:`swap_labels` and
  :func:`swap_label_map` the same for a set of labels and a label map (training's mirrored patches).

>>> lateral_pairs({"Brainstem": 1, "RightParotid": 3, "LeftParotid": 4, "Parotid_L": 8, "Parotid_R": 9})
[(3, 4), (8, 9)]
>>> swap_order([1, 3, 4], [(3, 4)])
[0, 2, 1]
>>> left_right_axis((1, 0, 0, 0, 1, 0, 0, 0, 1), [0, 1, 2])   # ITK axis 0 (x) is numpy axis 2
2
>>> left_right_axis((0, 0, 1, 0, 1, 0, 1, 0, 0), [2, 0, 1])   # ITK axis 2 -> numpy axis 0 -> transposed axis 1
1
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

# a side word, or a one/two-letter side token between separators (``_L``, ``Lt_``, `` R``)
_SIDE_WORD = re.compile(r"left|right")
_SIDE_TOKEN = re.compile(r"(?<![a-z])(l|r|lt|rt)(?![a-z])")
_SWAP = {"left": "right", "right": "left", "l": "r", "r": "l", "lt": "rt", "rt": "lt"}
MIN_AXIS_COSINE = float(np.cos(np.deg2rad(45)))


def mirrored_name(name: str) -> str | None:
    """``name`` with its side swapped (lower case), or None when it names no side."""
    n = name.lower()
    if _SIDE_WORD.search(n):
        return _SIDE_WORD.sub(lambda m: _SWAP[m.group(0)], n)
    if _SIDE_TOKEN.search(n):
        return _SIDE_TOKEN.sub(lambda m: _SWAP[m.group(0)], n)
    return None


def lateral_pairs(labels: Mapping[str, int]) -> list[tuple[int, int]]:
    """``{name: label value}`` (foreground) -> ``[(a, b)]`` label values of left/right pairs, ``a < b``, sorted."""
    by_name = {str(k).lower(): int(v) for k, v in labels.items()}
    pairs = set()
    for name, value in by_name.items():
        other = mirrored_name(name)
        if other is not None and other != name and other in by_name:
            pairs.add(tuple(sorted((value, by_name[other]))))
    return sorted(pairs)  # type: ignore[arg-type]


def configured_pairs(cfg: Mapping, labels: Mapping[str, int]) -> list[tuple[int, int]]:
    """The pairs of a plans section (``lateral_pairs``, which a user may edit); plans written before that entry
    existed: :func:`lateral_pairs` of the label names, as the planner would write them."""
    pairs = cfg.get("lateral_pairs")
    if pairs is None:
        return lateral_pairs(labels)
    return [(int(a), int(b)) for a, b in pairs]


def swap_order(label_values: Sequence[int], pairs: Sequence[Sequence[int]]) -> list[int]:
    """Channel indices such that ``probs[order]`` has each pair's two channels exchanged (``probs [K, ...]`` in the
    order of ``label_values``); pairs naming a label not in ``label_values`` are ignored."""
    index = {int(v): i for i, v in enumerate(label_values)}
    order = list(range(len(label_values)))
    for a, b in pairs:
        if int(a) in index and int(b) in index:
            order[index[int(a)]], order[index[int(b)]] = index[int(b)], index[int(a)]
    return order


def swap_labels(values: Iterable[int], pairs: Sequence[Sequence[int]]) -> set[int]:
    """A set of label values with each pair's two labels exchanged (the labels a mirrored case annotates)."""
    partner = {int(a): int(b) for a, b in pairs} | {int(b): int(a) for a, b in pairs}
    return {partner.get(int(v), int(v)) for v in values}


def swap_label_map(seg: torch.Tensor, pairs: Sequence[Sequence[int]]) -> torch.Tensor:
    """A label map (any shape, integer) with each pair's two labels exchanged."""
    out = seg.clone()
    for a, b in pairs:
        out[seg == int(a)] = int(b)
        out[seg == int(b)] = int(a)
    return out


def plan_lateral_axis(cases: Mapping[str, Mapping], pairs: Sequence[Sequence[int]],
                      transpose_forward: Sequence[int]) -> tuple[str | int | None, str]:
    """Where a scan of this dataset is mirrored left-right, decided from its fingerprint (``cases``: per case
    ``boxes`` {label: [lo0, lo1, lo2, hi0, hi1, hi2]} and ``spacing`` in the raw array's order, ``direction`` in
    ITK order when fingerprinted by this version), and why.

    Measured on the cases that contain both organs of a pair: the separation of the two organs' box centres. If it
    lies within 45 degrees of world x (the patient's left-right) through the case's direction matrix in >= 90 % of
    them, the headers are right: ``"direction"`` (each scan's own header gives its axis, :func:`left_right_axis`).
    Otherwise, if it lies along the same array axis in >= 90 % of them, the headers do not describe the anatomy but
    the arrays agree: that axis of the preprocessed array (an int). Otherwise None (no left-right mirroring). Without
    pairs, or without a case holding both organs of one, the headers are trusted (``"direction"``)."""
    along_x, array_axes = [], []
    for case in cases.values():
        boxes, spacing = case.get("boxes", {}), np.asarray(case["spacing"], np.float64)
        for a, b in pairs:
            if str(a) not in boxes or str(b) not in boxes:
                continue
            ba, bb = np.asarray(boxes[str(a)], np.float64), np.asarray(boxes[str(b)], np.float64)
            sep = ((bb[:3] + bb[3:]) - (ba[:3] + ba[3:])) / 2 * spacing     # mm along the raw array's axes
            if not np.any(sep):
                continue
            array_axes.append(int(np.argmax(np.abs(sep))))
            if case.get("direction") is not None:
                world = np.asarray(case["direction"], np.float64).reshape(3, 3) @ sep[::-1]   # ITK order -> LPS
                along_x.append(abs(world[0]) / np.linalg.norm(world) >= MIN_AXIS_COSINE)
    n = len(array_axes)
    if n == 0:
        return "direction", ("no case holds both organs of a left/right pair: each scan's header gives its "
                             "left-right axis" if pairs else "no left/right pairs: each scan's header gives its "
                             "left-right axis")
    if len(along_x) == n and np.mean(along_x) >= 0.9:
        return "direction", (f"the left/right organs lie apart along the patient's left-right (world x) in "
                             f"{np.mean(along_x):.0%} of the {n} case(s) holding both: the headers are right, each "
                             "scan's own header gives its left-right axis")
    axis, count = max(((ax, array_axes.count(ax)) for ax in set(array_axes)), key=lambda t: t[1])
    headers = (f"the headers put their separation along world x in only {np.mean(along_x):.0%} of them"
               if len(along_x) == n else "the fingerprint has no direction matrices (older version)")
    if count / n >= 0.9:
        k = list(transpose_forward).index(axis)
        return k, (f"the left/right organs lie apart along raw array axis {axis} (preprocessed axis {k}) in "
                   f"{count / n:.0%} of the {n} case(s) holding both; {headers}: mirroring follows that array axis")
    return None, (f"the left/right organs lie apart along no one array axis ({count / n:.0%} at most) and {headers}:"
                  " no left-right mirroring")


def case_lateral_axis(planned: str | int | None, direction_itk: Sequence[float] | None,
                      transpose_forward: Sequence[int]) -> int | None:
    """The preprocessed-array axis one scan is mirrored along: the plans' ``lateral_axis`` (``"direction"``: from
    the scan's header, None without one; an int: that axis; None: never)."""
    if planned == "direction":
        return None if direction_itk is None else left_right_axis(direction_itk, transpose_forward)
    return None if planned is None else int(planned)


def left_right_axis(direction_itk: Sequence[float], transpose_forward: Sequence[int]) -> int | None:
    """The preprocessed-array axis along the patient's left-right, or None when no image axis is within 45 degrees
    of it. ``direction_itk``: 9 numbers, row-major, column ``m`` the world (LPS) direction of ITK axis ``m`` (ITK
    axis ``m`` is numpy axis ``2 - m``); the preprocessed array is the numpy array transposed by
    ``transpose_forward``."""
    d = np.asarray(direction_itk, np.float64).reshape(3, 3)
    m = int(np.argmax(np.abs(d[0])))
    if abs(d[0, m]) < MIN_AXIS_COSINE:
        return None
    return list(transpose_forward).index(2 - m)
