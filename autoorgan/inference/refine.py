"""Refinement of Organ-DETR's boxes by a label map at the scan's own resolution ("detect, then box the mask").

Organ-DETR sees the whole scan at the coarse spacing its plan can afford (9.2 x 5.9 x 9.2 mm on OpenKBP's CPU plan),
so its edges are off by about a coarse voxel: it finds every organ (AP10 ~0.96 on OpenKBP) but places few boxes
at IoU 0.75. A segmentation model at the native spacing (``autoorgan_predict -c dodnet|masked_sigmoid|ccq``, or
nnU-Net's own ``nnUNetv2_predict``) resolves the edges but, at a short budget, also leaves islands and misses organs.
Combined, per organ of the coarse prediction:

1. the search region is the coarse box grown by :data:`MARGIN_COARSE_VOXELS` voxels of the coarse plan's spacing
   on every side (the coarse model's typical edge error), in the scan's voxels;
2. the organ's label inside that region, its largest 26-connected component, gives the refined box (the convention of
   :mod:`autoorgan.boxes.convention`: array axes, edge coordinates, ``hi`` exclusive);
3. the refined box replaces the coarse one only when both agree (IoU >= :data:`MIN_IOU`); otherwise (no label there,
   or a stray island) the coarse box stays, its score multiplied by :data:`UNCONFIRMED_SCORE_FACTOR` so that boxes
   a mask confirmed rank first.

Organs the coarse model did not report are not added (the detector decides which organs are there). Measured on
OpenKBP fold 0 (docs/training.md): the three constants barely matter (mAP_coco within +-0.01 over margins of 1-3
coarse voxels or 10-25 mm, IoU thresholds 0.2-0.4 and factors 0.25-1).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from autoorgan.boxes import Geometry, box_iou
from autoorgan.inference.inputs import CaseError
from autoorgan.inference.mask_boxes import component_box

MARGIN_COARSE_VOXELS = 2.0
MIN_IOU = 0.3
UNCONFIRMED_SCORE_FACTOR = 0.5

Organs = dict[int, tuple[np.ndarray, float]]  # label value -> (voxel box [6] in the original array, score)


def margin_voxels(plan_spacing: Sequence[float], transpose_backward: Sequence[int],
                  image_spacing_itk: Sequence[float]) -> np.ndarray:
    """The search margin in the scan's voxels per array axis ``[3]``: :data:`MARGIN_COARSE_VOXELS` x the plan's
    spacing (mm, preprocessed axis order, brought back to the array order with ``transpose_backward``) / the scan's
    spacing (ITK order ``(x, y, z)``, i.e. reversed array order)."""
    plan_mm = np.asarray(plan_spacing, np.float64)[list(transpose_backward)]
    return MARGIN_COARSE_VOXELS * plan_mm / np.asarray(image_spacing_itk, np.float64)[::-1]


def refine_organs(organs: Organs, label_map: np.ndarray, margin: np.ndarray) -> tuple[Organs, dict[int, bool]]:
    """Coarse ``organs`` (``{label: (box [6] voxels of label_map's grid, score)}``) refined by ``label_map
    [n0, n1, n2]`` (integer labels on the same grid) within ``margin [3]`` voxels of each box. Returns the organs and,
    per label, whether its box was refined (True) or kept (False, score x :data:`UNCONFIRMED_SCORE_FACTOR`)."""
    shape = np.asarray(label_map.shape)
    out: Organs = {}
    refined: dict[int, bool] = {}
    for lab, (box, score) in organs.items():
        box = np.asarray(box, np.float64)
        lo = np.clip(np.floor(box[:3] - margin), 0, shape).astype(int)
        hi = np.clip(np.ceil(box[3:] + margin), 0, shape).astype(int)
        region = label_map[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] == lab
        found = component_box(region) if region.size else None
        if found is not None:
            new = np.asarray(found, np.float64) + np.tile(lo, 2)
            if float(box_iou(new[None], box[None])[0, 0]) >= MIN_IOU:
                out[lab], refined[lab] = (new, score), True
                continue
        out[lab], refined[lab] = (box, score * UNCONFIRMED_SCORE_FACTOR), False
    return out, refined


def read_refinement_mask(folder: Path, case_id: str, file_ending: str, geometry: Geometry) -> np.ndarray:
    """``folder/CASE<file_ending>``, the label map of the same scan (array order ``[n0, n1, n2]``); CaseError when it
    is missing, unreadable or on another grid than the scan."""
    import SimpleITK as sitk
    path = Path(folder) / f"{case_id}{file_ending}"
    if not path.is_file():
        raise CaseError(f"no label map {path} to refine its boxes with (--refine_with_masks): predict it first, "
                        "e.g. autoorgan_predict -c dodnet, into that folder")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise CaseError(f"cannot read the label map {path} ({str(err).strip().splitlines()[-1][:120]})") from None
    size = tuple(int(s) for s in image.GetSize()[::-1])
    if size != tuple(geometry.shape) or not np.allclose(image.GetSpacing(), geometry.spacing, rtol=1e-3, atol=1e-3) \
            or not np.allclose(image.GetOrigin(), geometry.origin, atol=1e-2):
        raise CaseError(f"the label map {path} ({size} voxels of {tuple(round(s, 3) for s in image.GetSpacing())} mm) "
                        f"is not on the scan's grid ({tuple(geometry.shape)} voxels of "
                        f"{tuple(round(s, 3) for s in geometry.spacing)} mm): give the masks predicted for these scans")
    return sitk.GetArrayFromImage(image)
