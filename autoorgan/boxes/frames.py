"""Every conversion of boxes between coordinate frames (the frame table of docs/conventions.md names each one).

Frames, in the order the data flows (axis order and units: :mod:`autoorgan.boxes.convention`):

* **original**: the input image's array (SimpleITK ``GetArrayFromImage`` order), voxels;
* **preprocessed**: after ``transpose_forward``, the body crop and resampling to the planned spacing, voxels;
* **network input** (organdetr): the preprocessed case brought to the planned ``input_shape`` (scaled down where
  larger, padded where smaller), voxels; normalized boxes are this frame divided by ``input_shape``;
* **world**: LPS mm (:meth:`Geometry.edge_to_world`).

Arrows: original -> preprocessed :func:`original_to_preprocessed`; preprocessed -> original
:func:`preprocessed_to_original`; preprocessed <-> network input :class:`FitTransform`; network input <->
normalized ``voxel_to_normalized`` / ``normalized_to_voxel`` (:mod:`autoorgan.boxes.convention`); mirrored input
:func:`flip_boxes`; original -> world ``box_to_world`` (:mod:`autoorgan.boxes.convention`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autoorgan.boxes.convention import Geometry


@dataclass(frozen=True)
class FitTransform:
    """``x_input = x_case * scale + offset`` per array axis (edge coordinates, voxels)."""

    scale: tuple[float, float, float]
    offset: tuple[float, float, float]

    def box_to_case(self, box: np.ndarray) -> np.ndarray:
        """Voxel box(es) ``[..., 6]`` in the input frame -> the preprocessed case's frame."""
        s, o = np.tile(self.scale, 2), np.tile(self.offset, 2)
        return (np.asarray(box, np.float64) - o) / s

    def box_to_input(self, box: np.ndarray) -> np.ndarray:
        s, o = np.tile(self.scale, 2), np.tile(self.offset, 2)
        return np.asarray(box, np.float64) * s + o


def flip_boxes(boxes: np.ndarray, axis: int, size: float) -> np.ndarray:
    """Voxel boxes ``[..., 6]`` mirrored along array ``axis`` of an extent of ``size`` voxels."""
    out = np.array(boxes, np.float64, copy=True)
    out[..., axis], out[..., axis + 3] = size - boxes[..., axis + 3], size - boxes[..., axis]
    return out


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
                    origin=tuple(float(o) for o in sitk["origin"]),
                    direction=tuple(float(d) for d in sitk["direction"]))


def original_to_preprocessed(box: np.ndarray, props: dict, preprocessed_shape: tuple[int, ...],
                             transpose_forward: list[int]) -> np.ndarray:
    """Inverse of :func:`preprocessed_to_original`: voxel box(es) ``[..., 6]`` in the original image array ->
    the preprocessed array (continuous, exact: crop and resampling are affine per axis)."""
    box = np.asarray(box, np.float64)
    tf = list(transpose_forward)
    scale = np.asarray(props["shape_after_cropping_and_before_resampling"], np.float64) / \
        np.asarray(preprocessed_shape, np.float64)
    crop_lo = np.asarray([b[0] for b in props["bbox_used_for_cropping"]], np.float64)
    lo, hi = box[..., :3][..., tf], box[..., 3:][..., tf]
    return np.concatenate([(lo - crop_lo) / scale, (hi - crop_lo) / scale], -1)
