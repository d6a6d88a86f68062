"""The one box convention of autoorgan (also in docs/conventions.md). Axis-order mistakes are the classic bug of 3D
DETRs, so every box in the project follows these rules and every conversion lives in this module.

Axis order
    Boxes use the axis order of the numpy array: ``(a0, a1, a2)``. For an array read with SimpleITK (as nnU-Net
    does) that is ITK's ``(k, j, i)``, i.e. the *reverse* of ITK's index order ``(i, j, k)`` and of the
    ``spacing``/``origin``/``direction`` that SimpleITK reports. Preprocessed data is additionally transposed by the
    plans' ``transpose_forward``; boxes stored with preprocessed data use the preprocessed array's axes.

Voxel boxes (``[lo0, lo1, lo2, hi0, hi1, hi2]``, shape ``[..., 6]``, unit: voxels)
    Edge coordinates: the voxel with index ``n`` on an axis occupies the interval ``[n, n + 1)``. The tight box of a
    mask is ``lo = first index inside``, ``hi = last index inside + 1``, so ``mask[lo0:hi0, lo1:hi1, lo2:hi2]`` is
    the tight crop and ``hi - lo`` is the extent in voxels. Boxes may be fractional (predictions).

Normalized boxes (``[c0, c1, c2, s0, s1, s2]``, shape ``[..., 6]``, unitless)
    What networks predict: centre and size of the voxel box divided by the network input shape per axis, all in
    ``[0, 1]``. This matches ``torch.nn.functional.grid_sample(..., align_corners=False)``, whose normalized
    coordinate ``-1`` / ``+1`` is the outer edge of the first / last voxel: ``grid = 2 * c - 1``.

World coordinates (mm, LPS as ITK uses)
    An edge coordinate ``c`` (array order) is the ITK continuous index ``c[::-1] - 0.5`` (ITK puts voxel centres
    on integer indices), and ``world = origin + direction @ (spacing * index)`` with ITK-ordered
    ``spacing``/``origin`` and ``direction`` whose columns are the world directions of ITK's i, j, k axes.
    With a non-identity direction a voxel box is an oriented box in the world; we report its 8 corners and its
    axis-aligned world bounds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Geometry:
    """Where an image array lies in the world.

    Attributes:
        shape: array shape ``(n0, n1, n2)`` in array order.
        spacing: voxel size in mm, in **ITK order** ``(si, sj, sk)`` as SimpleITK's ``GetSpacing()``.
        origin: world position (mm, LPS) of the centre of voxel index 0, ITK order.
        direction: ``3 x 3`` matrix, column ``m`` is the world direction of ITK axis ``m`` (SimpleITK's
            ``GetDirection()`` reshaped row-major).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = field(default=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def spacing_array_order(self) -> np.ndarray:
        """Voxel size in mm along the array axes ``(a0, a1, a2)``."""
        return np.asarray(self.spacing, dtype=np.float64)[::-1]

    @classmethod
    def from_sitk(cls, image) -> Geometry:
        """Geometry of a ``SimpleITK.Image`` (its array is ``sitk.GetArrayFromImage(image)``)."""
        return cls(shape=tuple(int(s) for s in image.GetSize()[::-1]),
                   spacing=tuple(float(s) for s in image.GetSpacing()),
                   origin=tuple(float(o) for o in image.GetOrigin()),
                   direction=tuple(float(d) for d in image.GetDirection()))

    def to_json(self) -> dict:
        return {"shape_array_order": list(self.shape), "spacing_itk_order": list(self.spacing),
                "origin_lps_mm": list(self.origin), "direction_itk": list(self.direction)}

    def edge_to_world(self, points: np.ndarray) -> np.ndarray:
        """Edge coordinates ``[..., 3]`` (array order, voxels) -> world points ``[..., 3]`` (LPS mm, x y z)."""
        pts = np.asarray(points, dtype=np.float64)
        itk_index = pts[..., ::-1] - 0.5
        scaled = itk_index * np.asarray(self.spacing, dtype=np.float64)
        return scaled @ self.direction_matrix.T + np.asarray(self.origin, dtype=np.float64)

    def world_to_edge(self, points: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`edge_to_world`: world points ``[..., 3]`` (LPS mm) -> edge coordinates (array order)."""
        pts = np.asarray(points, dtype=np.float64) - np.asarray(self.origin, dtype=np.float64)
        itk_index = (pts @ np.linalg.inv(self.direction_matrix).T) / np.asarray(self.spacing, dtype=np.float64)
        return itk_index[..., ::-1] + 0.5


def boxes_from_label_map(seg: np.ndarray, labels: Iterable[int] | None = None) -> dict[int, list[int]]:
    """Tight voxel box of every label present in ``seg`` (shape ``[n0, n1, n2]``, integer labels).

    Returns ``{label: [lo0, lo1, lo2, hi0, hi1, hi2]}`` (voxels, edge convention, ``hi`` exclusive). Labels absent
    from ``seg`` are left out; ``labels`` restricts the output (default: every label > 0). One pass over the array.
    """
    seg = np.asarray(seg)
    if seg.ndim != 3:
        raise ValueError(f"expected a 3D label map, got shape {seg.shape}")
    work = seg if np.issubdtype(seg.dtype, np.integer) else seg.astype(np.int64)
    work = np.where(work < 0, 0, work) if work.min(initial=0) < 0 else work
    slices = ndimage.find_objects(work)
    wanted = None if labels is None else {int(lab) for lab in labels}
    out: dict[int, list[int]] = {}
    for index, slc in enumerate(slices):
        label = index + 1
        if slc is None or (wanted is not None and label not in wanted):
            continue
        out[label] = [int(s.start) for s in slc] + [int(s.stop) for s in slc]
    return out


def box_size(boxes: np.ndarray) -> np.ndarray:
    """Extent ``hi - lo`` of voxel boxes ``[..., 6]`` -> ``[..., 3]`` (voxels)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    return boxes[..., 3:] - boxes[..., :3]


def box_size_mm(boxes: np.ndarray, spacing_array_order: Sequence[float]) -> np.ndarray:
    """Extent of voxel boxes ``[..., 6]`` along the image axes in mm ``[..., 3]`` (spacing in array order)."""
    return box_size(boxes) * np.asarray(spacing_array_order, dtype=np.float64)


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """The 8 corners ``[..., 8, 3]`` of voxel boxes ``[..., 6]`` (edge coordinates, array order)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    lo, hi = boxes[..., None, :3], boxes[..., None, 3:]
    pick = np.array([[(c >> a) & 1 for a in range(3)] for c in range(8)], dtype=bool)  # [8, 3]
    return np.where(pick, hi, lo)


def box_to_world(box: Sequence[float], geometry: Geometry) -> dict:
    """A voxel box (array order, edge convention) in world coordinates (LPS mm).

    Returns ``{"corners_lps_mm": [8 x 3], "center_lps_mm": [3], "min_lps_mm": [3], "max_lps_mm": [3],
    "size_mm": [3]}``: ``min``/``max`` are the axis-aligned world bounds of the (possibly oriented) box and
    ``size_mm`` is its extent along the image axes in array order.
    """
    box = np.asarray(box, dtype=np.float64)
    corners = geometry.edge_to_world(box_corners(box))
    centre = geometry.edge_to_world((box[:3] + box[3:]) / 2)
    return {"corners_lps_mm": corners.round(4).tolist(), "center_lps_mm": centre.round(4).tolist(),
            "min_lps_mm": corners.min(0).round(4).tolist(), "max_lps_mm": corners.max(0).round(4).tolist(),
            "size_mm": box_size_mm(box, geometry.spacing_array_order).round(4).tolist()}


def voxel_to_normalized(boxes: np.ndarray, input_shape: Sequence[int]) -> np.ndarray:
    """Voxel boxes ``[..., 6]`` -> normalized ``[c0, c1, c2, s0, s1, s2]`` ``[..., 6]`` for an input shape."""
    boxes = np.asarray(boxes, dtype=np.float64)
    shape = np.asarray(input_shape, dtype=np.float64)
    return np.concatenate([(boxes[..., :3] + boxes[..., 3:]) / 2 / shape, (boxes[..., 3:] - boxes[..., :3]) / shape],
                          axis=-1)


def normalized_to_voxel(boxes: np.ndarray, input_shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`voxel_to_normalized`: ``[..., 6]`` centre/size in [0, 1] -> voxel boxes ``[..., 6]``."""
    boxes = np.asarray(boxes, dtype=np.float64)
    shape = np.asarray(input_shape, dtype=np.float64)
    centre, size = boxes[..., :3] * shape, boxes[..., 3:] * shape
    return np.concatenate([centre - size / 2, centre + size / 2], axis=-1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise 3D IoU of voxel boxes ``a [N, 6]`` and ``b [M, 6]`` -> ``[N, M]``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 6)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 6)
    lo = np.maximum(a[:, None, :3], b[None, :, :3])
    hi = np.minimum(a[:, None, 3:], b[None, :, 3:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    vol_a, vol_b = box_size(a).clip(0).prod(-1), box_size(b).clip(0).prod(-1)
    union = vol_a[:, None] + vol_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
