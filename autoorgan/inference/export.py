"""The per-case box file ``CASE_boxes.json`` (boxes in the original image frame; frame conversions live in
:mod:`autoorgan.boxes.frames`).

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
