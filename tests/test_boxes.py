"""The box convention (docs/conventions.md) on asymmetric volumes with non-identity directions."""
import numpy as np
import pytest
import SimpleITK as sitk

from autoorgan.boxes import (
    Geometry,
    box_iou,
    box_to_world,
    boxes_from_label_map,
    normalized_to_voxel,
    voxel_to_normalized,
)


def _asymmetric_seg():
    seg = np.zeros((7, 11, 13), np.uint8)  # three different axis lengths
    seg[1:3, 4:10, 5:6] = 1                # extents 2, 6, 1 along a0, a1, a2
    seg[6, 0, 12] = 2                      # a single corner voxel
    return seg


def test_tight_boxes_are_half_open_in_array_order():
    boxes = boxes_from_label_map(_asymmetric_seg())
    assert boxes == {1: [1, 4, 5, 3, 10, 6], 2: [6, 0, 12, 7, 1, 13]}
    seg = _asymmetric_seg()
    lo0, lo1, lo2, hi0, hi1, hi2 = boxes[1]
    assert seg[lo0:hi0, lo1:hi1, lo2:hi2].all() and (seg == 1).sum() == 2 * 6 * 1


def test_absent_and_restricted_labels():
    seg = _asymmetric_seg()
    assert boxes_from_label_map(seg, labels=[2, 5]) == {2: [6, 0, 12, 7, 1, 13]}
    assert boxes_from_label_map(np.zeros((3, 4, 5), np.int16)) == {}


@pytest.mark.parametrize("direction", [
    np.eye(3),
    np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),          # permuted axes
    np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1.0]]) @ np.diag([-1, 1, 1]),
])
def test_world_coordinates_agree_with_simpleitk(direction):
    seg = _asymmetric_seg()
    img = sitk.GetImageFromArray(seg)
    img.SetSpacing((0.7, 1.3, 2.9))  # ITK order (i, j, k) = array axes (a2, a1, a0)
    img.SetOrigin((-12.0, 40.5, 7.25))
    img.SetDirection(direction.ravel().tolist())
    geo = Geometry.from_sitk(img)
    assert geo.shape == seg.shape
    box = boxes_from_label_map(seg)[1]
    world = box_to_world(box, geo)
    # the first and last voxel centres inside the box, from ITK itself (ITK index order is reversed)
    first = img.TransformIndexToPhysicalPoint([box[2], box[1], box[0]])
    last = img.TransformIndexToPhysicalPoint([box[5] - 1, box[4] - 1, box[3] - 1])
    centre = (np.array(first) + np.array(last)) / 2
    np.testing.assert_allclose(world["center_lps_mm"], centre, atol=1e-4)  # output rounded to 0.1 µm
    # extent in mm along the array axes: (2, 6, 1) voxels * spacing in array order (2.9, 1.3, 0.7)
    np.testing.assert_allclose(world["size_mm"], [2 * 2.9, 6 * 1.3, 1 * 0.7])
    # the corner at the lo edge is half a voxel before the first voxel centre along every axis
    lo_corner = geo.edge_to_world(np.array(box[:3], float))
    expected = img.TransformContinuousIndexToPhysicalPoint([box[2] - 0.5, box[1] - 0.5, box[0] - 0.5])
    np.testing.assert_allclose(lo_corner, expected, atol=1e-6)
    # round trip
    np.testing.assert_allclose(geo.world_to_edge(lo_corner), box[:3], atol=1e-9)
    # the world bounds are those of the 8 corners ITK places at the box's outer voxel edges
    corners = [img.TransformContinuousIndexToPhysicalPoint([(box[5] if k else box[2]) - 0.5,
                                                            (box[4] if j else box[1]) - 0.5,
                                                            (box[3] if i else box[0]) - 0.5])
               for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    np.testing.assert_allclose(world["min_lps_mm"], np.min(corners, 0), atol=1e-4)
    np.testing.assert_allclose(world["max_lps_mm"], np.max(corners, 0), atol=1e-4)


def test_normalized_round_trip_and_meaning():
    shape = (8, 16, 32)
    box = np.array([2, 4, 8, 6, 12, 24], float)
    norm = voxel_to_normalized(box, shape)
    np.testing.assert_allclose(norm, [0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    np.testing.assert_allclose(normalized_to_voxel(norm, shape), box)


def test_iou():
    a = np.array([[0, 0, 0, 2, 2, 2]], float)
    b = np.array([[1, 0, 0, 3, 2, 2], [5, 5, 5, 6, 6, 6], [0, 0, 0, 2, 2, 2]], float)
    np.testing.assert_allclose(box_iou(a, b), [[4 / 12, 0.0, 1.0]])
