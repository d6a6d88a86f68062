"""Refinement of coarse boxes by a label map (autoorgan.inference.refine): search region, agreement, margins."""
from __future__ import annotations

import numpy as np
import pytest

from autoorgan.inference.refine import MIN_IOU, UNCONFIRMED_SCORE_FACTOR, margin_voxels, refine_organs


def test_margin_is_two_coarse_voxels_in_the_scans_array_axes():
    """Plan spacing in the preprocessed (transposed) order, scan spacing in ITK order: the margin is per array axis."""
    plan = [9.0, 6.0, 12.0]                       # preprocessed axes = array axes (1, 0, 2)
    got = margin_voxels(plan, [1, 0, 2], (4.0, 3.0, 1.5))   # array order spacing (1.5, 3.0, 4.0)
    np.testing.assert_allclose(got, [2 * 6.0 / 1.5, 2 * 9.0 / 3.0, 2 * 12.0 / 4.0])


def test_only_an_agreeing_label_near_the_box_refines_it():
    seg = np.zeros((40, 30, 20), np.uint8)
    seg[10:20, 5:15, 4:9] = 1        # organ 1 where the coarse box is, 1 voxel off on each face
    seg[30:34, 20:24, 14:18] = 2     # organ 2 far from its coarse box (outside the margin)
    seg[12:14, 12:14, 12:14] = 3     # organ 3: a fragment near its box that disagrees with it (IoU < MIN_IOU)
    organs = {1: (np.array([11., 6., 5., 19., 14., 8.]), 0.8), 2: (np.array([2., 2., 2., 8., 8., 8.]), 0.6),
              3: (np.array([8., 8., 8., 18., 18., 18.]), 0.4), 4: (np.array([1., 1., 1., 3., 3., 3.]), 0.2)}
    out, refined = refine_organs(organs, seg, np.array([2.0, 2.0, 2.0]))
    assert refined == {1: True, 2: False, 3: False, 4: False}
    np.testing.assert_array_equal(out[1][0], [10, 5, 4, 20, 15, 9])
    assert out[1][1] == 0.8
    for lab in (2, 3, 4):
        np.testing.assert_array_equal(out[lab][0], organs[lab][0])
        assert out[lab][1] == pytest.approx(organs[lab][1] * UNCONFIRMED_SCORE_FACTOR)
    assert 8 / 1000 < MIN_IOU   # organ 3's fragment really disagrees
    # a wider margin reaches organ 2's label; it agrees with nothing there, so the box stays
    out, refined = refine_organs({2: organs[2]}, seg, np.array([30.0, 30.0, 30.0]))
    assert refined == {2: False}
