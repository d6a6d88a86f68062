"""Boxes: the one convention (:mod:`autoorgan.boxes.convention`, also docs/conventions.md), every conversion between
frames (:mod:`autoorgan.boxes.frames`) and the torch operations networks and losses use
(:mod:`autoorgan.boxes.torch_ops`, imported separately so that numpy-only code needs no torch)."""
from autoorgan.boxes.convention import (
                                        Geometry,
                                        box_corners,
                                        box_iou,
                                        box_size,
                                        box_size_mm,
                                        box_to_world,
                                        boxes_from_label_map,
                                        normalized_to_voxel,
                                        voxel_to_normalized,
)
from autoorgan.boxes.frames import (
                                        FitTransform,
                                        flip_boxes,
                                        geometry_from_props,
                                        original_to_preprocessed,
                                        preprocessed_to_original,
)

__all__ = ["Geometry", "box_corners", "box_iou", "box_size", "box_size_mm", "box_to_world", "boxes_from_label_map",
           "normalized_to_voxel", "voxel_to_normalized", "FitTransform", "flip_boxes", "geometry_from_props",
           "original_to_preprocessed", "preprocessed_to_original"]
