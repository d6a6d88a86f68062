"""Deformable sampling reads the voxel that the box convention names, on an asymmetric volume."""
import torch

from autoorgan.networks.deformable import ms_deform_attn_sample


def _one_hot_volume(shape, index, channels=2):
    v = torch.zeros(1, 1, channels, *shape)
    v[0, 0, :, index[0], index[1], index[2]] = torch.arange(1, channels + 1, dtype=torch.float32)
    return v


def _sample(values, point):
    loc = torch.tensor(point, dtype=torch.float32).view(1, 1, 1, 1, 1, 3).expand(1, 1, 1, len(values), 1, 3)
    weights = torch.ones(1, 1, 1, len(values), 1)
    return ms_deform_attn_sample(values, loc, weights)[0, 0]


def test_voxel_centre_is_sampled_exactly():
    shape, idx = (5, 7, 9), (1, 4, 6)
    values = [_one_hot_volume(shape, idx)]
    centre = [(i + 0.5) / s for i, s in zip(idx, shape)]
    assert torch.allclose(_sample(values, centre), torch.tensor([1.0, 2.0]))
    # the neighbouring voxel centres along each axis read 0: no axis is swapped
    for axis in range(3):
        moved = list(centre)
        moved[axis] += 1 / shape[axis]
        assert torch.allclose(_sample(values, moved), torch.zeros(2)), axis
    # half-way to the next voxel along a1 reads half the value (trilinear)
    half = list(centre)
    half[1] += 0.5 / shape[1]
    assert torch.allclose(_sample(values, half), torch.tensor([0.5, 1.0]))


def test_levels_are_summed_with_weights_and_batches_stay_apart():
    shape_a, shape_b = (4, 6, 8), (2, 3, 4)
    a = torch.cat([_one_hot_volume(shape_a, (3, 1, 5)), torch.zeros(1, 1, 2, *shape_a)])
    b = torch.cat([torch.zeros(1, 1, 2, *shape_b), _one_hot_volume(shape_b, (0, 2, 3))])
    pa = torch.tensor([(3.5 / 4, 1.5 / 6, 5.5 / 8), (0.25, 2.5 / 3, 3.5 / 4)])  # the hot voxel of item 0 / item 1
    loc = torch.stack([pa[0].expand(2, 3), pa[1].expand(2, 3)]).view(2, 1, 1, 2, 1, 3)
    weights = torch.tensor([0.25, 0.75]).view(1, 1, 1, 2, 1).expand(2, 1, 1, 2, 1)
    out = ms_deform_attn_sample([a, b], loc, weights)
    assert torch.allclose(out[0, 0], torch.tensor([0.25, 0.5]))   # level 0 hit in item 0 only
    assert torch.allclose(out[1, 0], torch.tensor([0.75, 1.5]))   # level 1 hit in item 1 only
