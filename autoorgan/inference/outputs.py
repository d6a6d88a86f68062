"""Per-case output files of ``autoorgan_predict`` (all written atomically: temporary name, then rename).

* ``CASE_boxes.json``: :func:`autoorgan.inference.export.case_box_record` (voxel boxes in the original image, world
  LPS mm, the image geometry); written **last**, so its presence marks a finished case (``--continue_prediction``).
* ``CASE.mrk.json``: 3D Slicer markups, one ``ROI`` (``roiType: Box``) per organ in LPS mm. The ROI's axes are
  the image's voxel axes (``orientation`` = the 3 x 3 direction matrix, row-major, columns = axes; an improper
  direction has its third axis negated, which leaves a box unchanged), ``size`` is the box extent in mm along them.
  Drag it into Slicer together with the image.
* ``CASE_boxmask.nii.gz`` (``--save_box_masks``): label map on the image grid, each organ's box filled with its
  label (smaller boxes drawn last so they stay visible), voxels whose centre lies inside the box.
* ``CASE_boxes.png`` (``--save_png``): per organ, axial / coronal / sagittal slices through the box centre (patient
  left on image right), the box, the organ's name and score; CT in the soft-tissue window W400/L40.
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


def to_sitk(array: np.ndarray, geometry: Geometry):
    """``array`` (array order) as a SimpleITK image on ``geometry``'s grid."""
    import SimpleITK as sitk
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(geometry.spacing)
    img.SetOrigin(geometry.origin)
    img.SetDirection(geometry.direction)
    return img


def write_image_atomic(array: np.ndarray, geometry: Geometry, path: Path) -> None:
    """``array`` (array order) with ``geometry`` as a NIfTI/NRRD/MHA file (by ``path``'s ending)."""
    import SimpleITK as sitk
    with atomic_output(path) as tmp:
        sitk.WriteImage(to_sitk(array, geometry), str(tmp), useCompression=True)


CT_WINDOW = (400.0, 40.0)  # soft tissue: width, level (HU)
VIEWS = (("axial", 0, False), ("coronal", 1, True), ("sagittal", 2, True))  # (name, LPS array axis, flip: S up)


def _to_lps(array: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """``array [n0, n1, n2]`` on ``geometry``'s grid -> (the array with axes permuted/flipped so that its axes point
    to S, P, L (an oblique scan: the nearest axes; no resampling), mm spacing along those axes)."""
    import SimpleITK as sitk
    out = sitk.DICOMOrient(to_sitk(array, geometry), "LPS")
    return sitk.GetArrayFromImage(out), np.asarray(out.GetSpacing())[::-1]


def radiological_views(image: np.ndarray, box: np.ndarray, geometry: Geometry) -> list[tuple]:
    """The axial, coronal and sagittal slices of ``image [n0, n1, n2]`` through the centre of ``box`` (voxels of
    ``image``), displayed as radiologists read them: axial seen from the feet (patient left on the image's right,
    anterior up), coronal from the front (left on the right, superior up), sagittal from the patient's left
    (anterior on the left, superior up). Returns ``[(view, slice [rows, cols], (r0, r1, c0, c1) box rectangle in
    slice pixels (edges), mm per row / mm per column)]``; ``[]`` when no voxel centre lies inside the box."""
    vol, sp = _to_lps(np.asarray(image), geometry)
    mask, _ = _to_lps(box_label_map({1: (box, 1.0)}, tuple(geometry.shape)), geometry)
    nz = np.nonzero(mask)
    if not nz[0].size:
        return []
    lo = np.asarray([a.min() for a in nz])
    hi = np.asarray([a.max() + 1 for a in nz])
    centre = (lo + hi) // 2
    views = []
    for view, a, flip in VIEWS:
        sl = np.take(vol, centre[a], axis=a)
        u, v = [i for i in range(3) if i != a]
        r0, r1 = lo[u], hi[u]
        if flip:  # the S axis runs down the rows: flip so that superior is up
            sl = sl[::-1]
            r0, r1 = sl.shape[0] - hi[u], sl.shape[0] - lo[u]
        views.append((view, sl, (int(r0), int(r1), int(lo[v]), int(hi[v])), float(sp[u] / sp[v])))
    return views


def save_png(image: np.ndarray, organs: dict[int, tuple[np.ndarray, float]], names: dict[int, str],
             geometry: Geometry, path: Path, ct: bool) -> None:
    """Quick look: one row per organ, :func:`radiological_views` through the box centre with the box, the organ's
    name and its score (the one the evaluation ranks by). ``image [n0, n1, n2]`` is the first channel as read; CT is
    shown in the soft-tissue window (W400/L40), other modalities between the 1st and 99th percentile."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    image = np.asarray(image, np.float32)
    if ct:
        width, level = CT_WINDOW
        lo, hi, window = level - width / 2, level + width / 2, f"W{width:g}/L{level:g}"
    else:
        lo, hi = np.percentile(image[:: max(1, image.shape[0] // 32)], [1, 99])
        window = "p1-p99"
    rows = max(1, len(organs))
    fig, axes = plt.subplots(rows, 3, figsize=(10, 3.3 * rows), squeeze=False)
    for r, (label, (box, score)) in enumerate(sorted(organs.items())):
        name = names.get(label, str(label))
        views = radiological_views(image, np.asarray(box, np.float64), geometry)
        for ax in axes[r]:
            ax.axis("off")
        if not views:
            axes[r, 0].set_title(f"{name}  score {score:.3f}: empty box (no voxel centre inside)", fontsize=8)
        for c, (view, sl, (r0, r1, c0, c1), aspect) in enumerate(views):
            ax = axes[r, c]
            ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi, origin="upper", aspect=aspect, interpolation="nearest")
            ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, edgecolor="yellow",
                                   linewidth=1.2))
            ax.text(c0, r0 - 1.5, name, color="yellow", fontsize=7, va="bottom")
            ax.set_title(f"{name}  score {score:.3f}  {view} ({window})", fontsize=8)
            if view != "sagittal":
                ax.text(0.01, 0.5, "R", color="cyan", transform=ax.transAxes, fontsize=8)
                ax.text(0.96, 0.5, "L", color="cyan", transform=ax.transAxes, fontsize=8)
            else:
                ax.text(0.01, 0.5, "A", color="cyan", transform=ax.transAxes, fontsize=8)
                ax.text(0.96, 0.5, "P", color="cyan", transform=ax.transAxes, fontsize=8)
    # fixed margins: tight_layout measures every text artist (most of the figure's time, ~1 s for 7 organs)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.25 / (3.3 * rows), wspace=0.05, hspace=0.2)
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=80)
    finally:
        plt.close(fig)
