"""Mask metrics per organ: Dice and the 95th percentile Hausdorff distance in mm (NaN-safe).

Conventions (as nnU-Net's evaluation): a class absent from both reference and prediction has Dice = NaN (not
counted in means) and HD95 = NaN. Absent from one of them: Dice = 0 and HD95 = NaN (no finite distance exists;
``num_inf_hd95`` counts these cases so they are not silently lost). HD95 is the 95th percentile of the pooled
surface distances in both directions (reference -> prediction and back), measured in mm with the voxel spacing.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage


def dice(ref: np.ndarray, pred: np.ndarray) -> float:
    """Dice of two bool masks; NaN when both are empty."""
    a, b = int(ref.sum()), int(pred.sum())
    if a + b == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(ref, pred).sum()) / (a + b)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0)


def hd95(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile symmetric surface distance (mm) of two bool masks; NaN when either is empty.
    ``spacing``: voxel size in mm along the array axes."""
    if not ref.any() or not pred.any():
        return float("nan")
    box = np.argwhere(ref | pred)
    lo, hi = np.maximum(box.min(0) - 2, 0), box.max(0) + 3
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    r, p = ref[sl], pred[sl]
    sr, sp = _surface(r), _surface(p)
    d_to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
    d_to_r = ndimage.distance_transform_edt(~sr, sampling=spacing)
    dists = np.concatenate([d_to_p[sr], d_to_r[sp]])
    return float(np.percentile(dists, 95))


def case_mask_metrics(ref: np.ndarray, pred: np.ndarray, labels: Sequence[int], spacing: Sequence[float],
                      annotated: set[int] | None = None, with_hd95: bool = True) -> dict[int, dict]:
    """Per label of ``labels`` (only annotated ones when ``annotated`` is given): ``{label: {"dice", "hd95",
    "ref_voxels", "pred_voxels"}}`` for label maps ``ref``/``pred`` ``[n0, n1, n2]`` (``with_hd95=False``: HD95 is
    NaN, skipping the distance transforms)."""
    out = {}
    for lab in labels:
        if annotated is not None and lab not in annotated:
            continue
        r, p = ref == lab, pred == lab
        out[int(lab)] = {"dice": dice(r, p), "hd95": hd95(r, p, spacing) if with_hd95 else float("nan"),
                         "ref_voxels": int(r.sum()),
                         "pred_voxels": int(p.sum())}
    return out


def summarize_masks(per_case: dict[str, dict[int, dict]], names: dict[int, str]) -> dict:
    """Means over cases per organ and over organs: ``{"per_class": {name: {Dice, HD95, n, num_inf_hd95}},
    "mean_Dice", "mean_HD95"}`` (NaN-aware)."""
    per_class = {}
    for lab, name in names.items():
        rows = [c[lab] for c in per_case.values() if lab in c]
        d = np.array([r["dice"] for r in rows], np.float64)
        h = np.array([r["hd95"] for r in rows], np.float64)
        one_sided = sum(1 for r in rows if (r["ref_voxels"] > 0) != (r["pred_voxels"] > 0))
        per_class[name] = {"label": lab, "Dice": _nanmean(d), "HD95": _nanmean(h), "num_cases": len(rows),
                           "num_inf_hd95": one_sided}
    return {"per_class": per_class,
            "mean_Dice": _nanmean(np.array([v["Dice"] for v in per_class.values()], np.float64)),
            "mean_HD95": _nanmean(np.array([v["HD95"] for v in per_class.values()], np.float64))}


def _nanmean(a: np.ndarray) -> float:
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")
