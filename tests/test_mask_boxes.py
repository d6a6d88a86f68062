"""Boxes from label maps: the largest connected component of each organ, in voxels and in world mm."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from autoorgan.boxes import Geometry, box_to_world
from autoorgan.inference.mask_boxes import boxes_from_label_map, component_scores, keep_largest_components


def _label_map():
    lm = np.zeros((10, 12, 14), np.uint8)
    lm[1:5, 2:8, 3:9] = 1          # organ 1: the big component ...
    lm[8:9, 10:12, 12:14] = 1      # ... and a small island far away (would stretch a naive box)
    lm[6:8, 1:3, 0:2] = 2          # organ 2: big ...
    lm[0, 0, 13] = 2               # ... and a one-voxel island
    return lm


def test_largest_component_box_per_organ():
    boxes = boxes_from_label_map(_label_map(), [1, 2, 3])
    assert boxes == {1: [1, 2, 3, 5, 8, 9], 2: [6, 1, 0, 8, 3, 2]}   # organ 3 is absent: no box


def test_keep_largest_component_drops_every_island_and_nothing_else():
    """--keep_largest_component: each organ keeps its largest component only; the rest becomes background."""
    lm = _label_map()
    kept = keep_largest_components(lm, [1, 2, 3])
    expected = lm.copy()
    expected[8:9, 10:12, 12:14] = 0
    expected[0, 0, 13] = 0
    np.testing.assert_array_equal(kept, expected)
    assert kept.dtype == lm.dtype and lm[0, 0, 13] == 2     # the input is left as it was


def test_diagonal_voxels_are_one_component():
    lm = np.zeros((6, 6, 6), np.uint8)
    lm[1, 1, 1] = lm[2, 2, 2] = lm[3, 3, 3] = 1                        # 26-connected chain
    lm[5, 5, 0] = 1
    assert boxes_from_label_map(lm, [1]) == {1: [1, 1, 1, 4, 4, 4]}


def test_scores_are_mean_probability_over_the_largest_component():
    lm = _label_map()
    probs = np.zeros((2, *lm.shape), np.float32)
    probs[0][lm == 1] = 0.9
    probs[0, 8, 10:12, 12:14] = 0.1                                    # the island is unsure; not counted
    probs[1][lm == 2] = 0.6
    scores = component_scores(lm, probs, [1, 2])
    assert scores[1] == pytest.approx(0.9) and scores[2] == pytest.approx(0.6)


def test_mask_boxes_in_world_mm_with_a_rotated_direction():
    lm = _label_map()
    img = sitk.GetImageFromArray(lm)
    img.SetSpacing((0.7, 1.3, 2.9))
    img.SetOrigin((10.0, -20.0, 5.0))
    rot = sitk.VersorTransform((0.2, 1.0, 0.3), np.pi / 5).GetMatrix()
    img.SetDirection(rot)
    box = boxes_from_label_map(sitk.GetArrayFromImage(img), [1])[1]
    world = box_to_world(box, Geometry.from_sitk(img))
    # the box's outer corner (lo edge) is half a voxel before the first voxel inside, as ITK places it
    lo = img.TransformContinuousIndexToPhysicalPoint([box[2] - 0.5, box[1] - 0.5, box[0] - 0.5])
    hi = img.TransformContinuousIndexToPhysicalPoint([box[5] - 0.5, box[4] - 0.5, box[3] - 0.5])
    corners = np.asarray(world["corners_lps_mm"])
    assert np.abs(corners - lo).sum(1).min() < 1e-3 and np.abs(corners - hi).sum(1).min() < 1e-3
    np.testing.assert_allclose(world["size_mm"], [4 * 2.9, 6 * 1.3, 6 * 0.7])
