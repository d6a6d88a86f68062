"""Boxes from the preprocessed frame back to the original image, and the per-case box file.

Preprocessing did (autoorgan.preprocessing): transpose by ``transpose_forward`` -> crop to the body box -> resample
to the target spacing. A voxel box in the preprocessed array (edge convention, autoorgan.boxes) goes back by
scaling each axis by ``shape_after_cropping / shape_preprocessed``, adding the crop start, and permuting the axes
with ``transpose_backward``. Axis-aligned boxes stay axis-aligned through all three steps, so 3D IoU is the same
in every frame up to resampling round-off.

``CASE_boxes.json`` (:func:`case_box_record`; callers write it with ``write_json_atomic``)::

    {"case_id": ..., "box_convention": "...", "geometry": {shape_array_order, spacing_itk_order, origin_lps_mm,
     direction_itk}, "organs": [{"name", "label", "score", "box_voxel": [lo0, lo1, lo2, hi0, hi1, hi2],
     "world": {corners_lps_mm, center_lps_mm, min_lps_mm, max_lps_mm, size_mm}}, ...]}
"""
from __future__ import annotations

import numpy as np

from autoorgan.boxes import Geometry, box_to_world

BOX_CONVENTION = ("box_voxel: array axis order (reverse of ITK's i,j,k), edge coordinates, voxel n spans [n, n+1), "
                  "hi exclusive; world: LPS mm as ITK (docs/conventions.md)")


def preprocessed_to_original(box: np.ndarray, props: dict, preprocessed_shape: tuple[int, ...],
                             transpose_backward: list[int]) -> np.ndarray:
    """Voxel box(es) ``[..., 6]`` in the preprocessed array -> the original image array (array axis order)."""
    box = np.asarray(box, np.float64)
    scale = np.asarray(props["shape_after_cropping_and_before_resampling"], np.float64) / \
        np.asarray(preprocessed_shape, np.float64)
    crop_lo = np.asarray([b[0] for b in props["bbox_used_for_cropping"]], np.float64)
    lo = box[..., :3] * scale + crop_lo
    hi = box[..., 3:] * scale + crop_lo
    tb = list(transpose_backward)
    return np.concatenate([lo[..., tb], hi[..., tb]], -1)


def geometry_from_props(props: dict, transpose_backward: list[int]) -> Geometry | None:
    """Original image geometry from nnU-Net reader properties (SimpleITK readers); None when unknown.
    (``shape_before_cropping`` is stored in the transposed order, hence ``transpose_backward``.)"""
    sitk = props.get("sitk_stuff")
    if not sitk:
        return None
    shape = [props["shape_before_cropping"][i] for i in transpose_backward]
    return Geometry(shape=tuple(int(s) for s in shape), spacing=tuple(float(s) for s in sitk["spacing"]),
                    origin=tuple(float(o) for o in sitk["origin"]), direction=tuple(float(d) for d in sitk["direction"]))


def case_box_record(case_id: str, organs: dict[int, tuple[np.ndarray, float]], label_names: dict[int, str],
                    geometry: Geometry | None) -> dict:
    """``organs``: ``{label value: (box in the original array, score)}`` -> the CASE_boxes.json content."""
    rows = []
    for label, (box, score) in sorted(organs.items()):
        row = {"name": label_names.get(label, str(label)), "label": int(label), "score": round(float(score), 6),
               "box_voxel": [round(float(v), 3) for v in box]}
        if geometry is not None:
            row["world"] = box_to_world(box, geometry)
        rows.append(row)
    return {"case_id": case_id, "box_convention": BOX_CONVENTION,
            "geometry": geometry.to_json() if geometry is not None else None, "organs": rows}
