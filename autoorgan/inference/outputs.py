"""Per-case output files of ``autoorgan_predict`` (all written atomically: temporary name, then rename).

* ``CASE_boxes.json``: :func:`autoorgan.inference.export.case_box_record` (voxel boxes in the original image, world
  LPS mm, the image geometry); written **last**, so its presence marks a finished case (``--continue_prediction``).
* ``CASE.mrk.json``: 3D Slicer markups, one ``ROI`` (``roiType: Box``) per organ in LPS mm. The ROI's axes are
  the image's voxel axes (``orientation`` = the 3 x 3 direction matrix, row-major, columns = axes; an improper
  direction has its third axis negated, which leaves a box unchanged), ``size`` is the box extent in mm along them.
  Drag it into Slicer together with the image.
* ``CASE_boxmask.nii.gz`` (``--save_box_masks``): label map on the image grid, each organ's box filled with its
  label (smaller boxes drawn last so they stay visible), voxels whose centre lies inside the box.
* ``CASE_boxes.png`` (``--save_png``): per organ, three orthogonal slices through the box centre with the box drawn.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from autoorgan.boxes import Geometry
from autoorgan.utils.fileio import atomic_output

SLICER_SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
                 "markups-schema-v1.0.3.json#")


def slicer_markups(record: dict) -> dict:
    """Slicer ``.mrk.json`` content for a ``CASE_boxes.json`` record (needs its geometry)."""
    geo = record["geometry"]
    d = np.asarray(geo["direction_itk"], np.float64).reshape(3, 3).copy()
    if np.linalg.det(d) < 0:
        d[:, 2] *= -1
    spacing_itk = np.asarray(geo["spacing_itk_order"], np.float64)
    markups = []
    for organ in record["organs"]:
        box = np.asarray(organ["box_voxel"], np.float64)
        size_mm = ((box[3:] - box[:3])[::-1] * spacing_itk).tolist()
        center = organ["world"]["center_lps_mm"]
        markups.append({
            "type": "ROI", "roiType": "Box", "name": f"{organ['name']} ({organ['score']:.2f})",
            "coordinateSystem": "LPS", "coordinateUnits": "mm", "locked": True, "insideOut": False,
            "center": center, "orientation": d.ravel().tolist(), "size": size_mm,
            "controlPoints": [{"id": "1", "label": organ["name"], "position": center,
                               "description": f"label {organ['label']}, score {organ['score']:.4f}",
                               "locked": True, "positionStatus": "defined"}],
            "display": {"handlesInteractive": False, "fillOpacity": 0.1},
        })
    return {"@schema": SLICER_SCHEMA, "markups": markups}


def box_label_map(organs: dict[int, tuple[np.ndarray, float]], shape: tuple[int, ...]) -> np.ndarray:
    """``{label: (voxel box [6] in array order, score)}`` -> label map ``shape`` (uint8/uint16); a voxel belongs to a
    box when its centre ``n + 0.5`` lies inside; smaller boxes are drawn over larger ones."""
    out = np.zeros(shape, np.uint8 if max(organs, default=0) < 256 else np.uint16)
    order = sorted(organs, key=lambda k: -np.prod(np.maximum(np.asarray(organs[k][0])[3:] -
                                                               np.asarray(organs[k][0])[:3], 0)))
    for label in order:
        box = np.asarray(organs[label][0], np.float64)
        lo = np.clip(np.ceil(box[:3] - 0.5), 0, shape).astype(int)
        hi = np.clip(np.ceil(box[3:] - 0.5), 0, shape).astype(int)
        out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = label
    return out


def write_image_atomic(array: np.ndarray, geometry: Geometry, path: Path) -> None:
    """``array`` (array order) with ``geometry`` as a NIfTI/NRRD/MHA file (by ``path``'s ending)."""
    import SimpleITK as sitk
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(geometry.spacing)
    img.SetOrigin(geometry.origin)
    img.SetDirection(geometry.direction)
    with atomic_output(path) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=True)


def save_png(image: np.ndarray, organs: dict[int, tuple[np.ndarray, float]], names: dict[int, str],
             spacing_array_order: np.ndarray, path: Path) -> None:
    """Quick look: one row per organ, three orthogonal slices of ``image [n0, n1, n2]`` through the box centre,
    the box outlined (aspect ratio from the voxel spacing)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rows = max(1, len(organs))
    fig, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows), squeeze=False)
    lo_hi = np.percentile(image[:: max(1, image.shape[0] // 32)], [1, 99])
    for r, (label, (box, score)) in enumerate(sorted(organs.items())):
        box = np.asarray(box, np.float64)
        centre = np.clip(((box[:3] + box[3:]) / 2).astype(int), 0, np.asarray(image.shape) - 1)
        for a in range(3):
            ax = axes[r, a]
            sl = np.take(image, centre[a], axis=a)
            u, v = [i for i in range(3) if i != a]
            ax.imshow(sl, cmap="gray", vmin=lo_hi[0], vmax=lo_hi[1], origin="upper",
                      aspect=spacing_array_order[u] / spacing_array_order[v], interpolation="nearest")
            ax.add_patch(Rectangle((box[v] - 0.5, box[u] - 0.5), box[v + 3] - box[v], box[u + 3] - box[u],
                                   fill=False, edgecolor="yellow", linewidth=1.2))
            ax.set_title(f"{names.get(label, label)} {score:.2f} (axis {a} = {centre[a]})", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=80)
    finally:
        plt.close(fig)
