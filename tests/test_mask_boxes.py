"""Boxes from label maps: the largest connected component of each organ, in voxels and in world mm."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from autoorgan.boxes import Geometry, box_to_world
from autoorgan.inference.mask_boxes import (
    boxes_from_label_map,
    component_scores,
    keep_largest_components,
    organ_locations,
    reduce_components,
)


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
    """--components largest: each organ keeps its largest component only; the rest becomes background."""
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


def _two_sided(lm_shape=(20, 40, 16)):
    """Organ 3 (say, the right parotid) marked on both sides of the body's midline along axis 1: the larger piece on
    the wrong side (y 28-36), the true one smaller (y 3-9); a one-voxel speck exactly where organ 3 is expected."""
    lm = np.zeros(lm_shape, np.uint8)
    lm[6:12, 28:36, 4:12] = 3      # wrong side, 384 voxels
    lm[6:12, 3:9, 5:11] = 3        # right side, 216 voxels, centre (9, 6, 8): offset (-2, -14, 0) mm
    lm[9, 10, 8] = 3               # speck (< 10 % of the largest) at offset (-1, -9.5, 1.5) mm: never chosen
    lm[14:18, 16:24, 2:6] = 5      # organ 5: two pieces, no location -> its largest
    lm[0:2, 0:2, 0:2] = 5
    return lm


def test_organ_locations_median_offset_and_robust_spread_in_mm():
    spacing = [2.0, 1.0, 3.0]
    body = [0, 0, 0, 20, 40, 16]                        # centre (10, 20, 8) voxels
    cases = [({"3": [6, 4 + d, 5, 12, 10 + d, 11], "5": [0, 0, 0, 2, 2, 2]}, body, spacing) for d in range(-2, 3)]
    loc = organ_locations(cases[:2] + cases[2:], [3, 5, 7])
    # organ 3: centre (9, 7 + d, 8) -> offsets (-2 mm, -13 + d mm, 0 mm); median d = 0
    assert loc["3"]["offset_mm"] == [-2.0, -13.0, 0.0] and loc["3"]["num_cases"] == 5
    assert loc["3"]["spread_mm"] == [5.0, 5.0, 5.0]      # (p95 - p05) / 3.29 = 1.1 mm < the 5 mm floor
    assert "7" not in loc                                # never seen: no location (largest component)
    wide = [({"3": [6, 4 + 10 * d, 5, 12, 10 + 10 * d, 11]}, body, spacing) for d in range(-2, 3)]
    assert organ_locations(wide, [3])["3"]["spread_mm"][1] == pytest.approx(36 / 3.29, abs=0.01)
    assert organ_locations(wide[:2], [3]) == {}          # fewer than 3 cases: no location


def test_located_component_is_the_one_where_the_organ_lies_not_the_largest():
    lm = _two_sided()
    body, spacing = [0, 0, 0, 20, 40, 16], [2.0, 1.0, 3.0]
    locations = {"3": {"offset_mm": [-1.0, -9.5, 1.5], "spread_mm": [5.0, 5.0, 5.0]}}
    located = reduce_components(lm, [3, 5], "located", body, spacing, locations)
    assert (located == 3).sum() == 216 and located[8, 6, 7] == 3 and located[8, 30, 7] == 0
    assert located[9, 10, 8] == 0                                    # the speck at the expected place is not chosen
    assert (located == 5).sum() == 4 * 8 * 4                         # no location: the largest
    largest = reduce_components(lm, [3, 5], "largest", body, spacing, locations)
    assert (largest == 3).sum() == 384 and largest[8, 30, 7] == 3
    np.testing.assert_array_equal(largest, keep_largest_components(lm, [3, 5]))
    np.testing.assert_array_equal(reduce_components(lm, [3, 5], "all"), lm)
    # the other side's prior keeps the other piece: the choice follows the location, in mm along the right axis
    mirrored = {"3": {"offset_mm": [-2.0, 12.0, 0.0], "spread_mm": [5.0, 5.0, 5.0]}}
    assert (reduce_components(lm, [3], "located", body, spacing, mirrored) == 3).sum() == 384
    with pytest.raises(ValueError, match="needs body_box"):
        reduce_components(lm, [3], "located")


def test_body_box_of_the_raw_frame_from_the_transposed_crop():
    """The predictor's crop box is in the transposed frame; the locations are in the raw image's array frame."""
    from autoorgan.inference.predictor import raw_body_box
    raw = np.zeros((5, 7, 9), bool)
    raw[1:4, 2:6, 3:8] = True                                         # the body, raw array frame
    forward = [2, 0, 1]
    backward = [int(i) for i in np.argsort(forward)]
    t = raw.transpose(forward)
    crop = [[int(np.where(t.any(axis=tuple(a for a in range(3) if a != ax)))[0][[0, -1]][0]),
             int(np.where(t.any(axis=tuple(a for a in range(3) if a != ax)))[0][-1] + 1)] for ax in range(3)]
    assert raw_body_box(crop, backward) == [1, 2, 3, 4, 6, 8]
