"""Left/right pairs from label names and the patient's left-right axis of an image (test-time mirroring)."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from autoorgan.planning.laterality import (
    case_lateral_axis,
    lateral_pairs,
    left_right_axis,
    plan_lateral_axis,
    swap_order,
)


def test_pairs_come_from_the_names_in_every_common_spelling():
    labels = {"Brainstem": 1, "SpinalCord": 2, "RightParotid": 3, "LeftParotid": 4, "kidney_left": 5,
              "kidney_right": 6, "Lens_L": 7, "Lens_R": 8, "Lt_Cochlea": 9, "Rt_Cochlea": 10, "Larynx": 11,
              "Lung_L": 12, "Bladder": 13, "Eye_R": 14}   # Lung_L and Eye_R have no partner
    assert lateral_pairs(labels) == [(3, 4), (5, 6), (7, 8), (9, 10)]
    assert lateral_pairs({"liver": 1, "Larynx": 2, "Lips": 3, "Bladder": 4}) == []


def test_swap_order_exchanges_each_pair_and_ignores_absent_labels():
    values = [1, 3, 4, 5, 6]
    order = swap_order(values, [(3, 4), (5, 6), (8, 9)])
    assert order == [0, 2, 1, 4, 3]
    probs = np.arange(5)[:, None] * np.ones((5, 2))
    assert probs[order][:, 0].tolist() == [0, 2, 1, 4, 3]


@pytest.mark.parametrize("transpose_forward", [[0, 1, 2], [2, 0, 1]])
def test_left_right_axis_follows_the_direction_matrix(transpose_forward):
    """An asymmetric image with a permuted, flipped direction: the axis found is the one along which the world x
    (LPS: towards the patient's left) changes, checked by moving one voxel along it in SimpleITK."""
    image = sitk.Image(7, 5, 3, sitk.sitkUInt8)   # ITK size (7, 5, 3): numpy shape (3, 5, 7)
    direction = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)   # ITK axis 2 runs along -x
    image.SetDirection(direction)
    axis = left_right_axis(direction, transpose_forward)
    numpy_axis = transpose_forward[axis]
    index = [1, 1, 1]
    step = list(index)
    step[2 - numpy_axis] += 1   # ITK index order is the reverse of numpy's
    dx, dy, dz = np.subtract(image.TransformIndexToPhysicalPoint(step), image.TransformIndexToPhysicalPoint(index))
    assert abs(dx) == pytest.approx(1.0) and dy == pytest.approx(0) and dz == pytest.approx(0)
    assert left_right_axis((1, 0, 0, 0, 1, 0, 0, 0, 1), [0, 1, 2]) == 2


def test_an_oblique_image_has_no_left_right_axis():
    """No axis within 45 degrees of the patient's left-right: no mirroring; 20 degrees off: the nearest axis."""
    rows = np.array([[1, 1, 1], [3 ** 0.5, -(3 ** 0.5), 0], [1, 1, -2]])
    oblique = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    np.testing.assert_allclose(oblique @ oblique.T, np.eye(3), atol=1e-12)   # a rotation (row 0: 55 deg off x)
    assert left_right_axis(oblique.ravel(), [0, 1, 2]) is None
    c, s = np.cos(np.deg2rad(20)), np.sin(np.deg2rad(20))
    assert left_right_axis((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0), [0, 1, 2]) == 2
    assert left_right_axis((s, c, 0.0, -c, s, 0.0, 0.0, 0.0, 1.0), [0, 1, 2]) == 1


def _case(direction, left_centre, right_centre, spacing=(2.5, 1.0, 1.0)):
    """A fingerprint case entry: boxes of the right (3) and left (4) organ around the given centres (raw array
    frame, voxels)."""
    def box(c):
        return [c[0] - 2, c[1] - 2, c[2] - 2, c[0] + 2, c[1] + 2, c[2] + 2]
    return {"spacing": list(spacing), "direction": list(direction), "boxes": {"3": box(right_centre),
                                                                                "4": box(left_centre)}}


def test_the_plans_trust_headers_that_describe_the_anatomy_and_else_the_arrays():
    """Cases whose left and right organs lie apart along world x (through each header, in any orientation): each
    scan's header decides. Headers that put them apart along world y while the arrays agree (OpenKBP's): the array
    axis, in the preprocessed (transposed) order. Arrays that disagree and wrong headers: no mirroring."""
    identity, flipped = (1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1)
    permuted = (0, 0, 1, 1, 0, 0, 0, 1, 0)   # ITK axis 2 (numpy axis 0) runs along world x
    good = {"a": _case(identity, (10, 20, 60), (10, 20, 20)), "b": _case(flipped, (10, 20, 20), (10, 20, 60)),
            "c": _case(permuted, (60, 20, 20), (20, 20, 20))}
    value, why = plan_lateral_axis(good, [(3, 4)], [2, 0, 1])
    assert value == "direction" and "headers are right" in why
    openkbp = {f"pt_{i}": _case(flipped, (60, 80, 60), (60, 50, 60)) for i in range(10)}   # apart along numpy 1
    value, why = plan_lateral_axis(openkbp, [(3, 4)], [1, 0, 2])
    assert value == 0 and "raw array axis 1 (preprocessed axis 0)" in why
    assert case_lateral_axis(value, flipped, [1, 0, 2]) == 0 != left_right_axis(flipped, [1, 0, 2])
    mixed = {**{f"x{i}": _case(identity, (10, 50, 20), (10, 20, 20)) for i in range(3)},
             **{f"y{i}": _case(identity, (50, 20, 20), (10, 20, 20)) for i in range(3)}}
    value, why = plan_lateral_axis(mixed, [(3, 4)], [0, 1, 2])
    assert value is None and "no left-right mirroring" in why
    assert case_lateral_axis(None, identity, [0, 1, 2]) is None
    assert plan_lateral_axis(good, [], [0, 1, 2])[0] == "direction"   # no pairs: the headers
    assert case_lateral_axis("direction", None, [0, 1, 2]) is None    # no header: no mirroring
