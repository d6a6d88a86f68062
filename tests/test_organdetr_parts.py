"""Organ-DETR parts: network outputs from plans, input fitting and the box mapping back to the original image."""
import numpy as np
import pytest
import torch

from autoorgan.boxes import boxes_from_label_map, normalized_to_voxel, voxel_to_normalized
from autoorgan.boxes.frames import preprocessed_to_original
from autoorgan.inference.detect import top1_per_organ
from autoorgan.networks.organdetr import OrganDETR
from autoorgan.preprocessing.fit import fit_to_input
from autoorgan.training.whole_volume import label_lookup


@pytest.mark.parametrize("backbone, shape", [("fpn", (48, 32, 64)), ("resnet50", (32, 32, 48))])
def test_network_outputs(backbone, shape):
    torch.manual_seed(0)
    net = OrganDETR(1, num_classes=3, num_queries=12, backbone=backbone, backbone_widths=(4, 8, 16, 16, 16),
                    hidden_dim=16, num_heads=4, decoder_layers=2, msa_depth=1)
    out = net(torch.randn(2, 1, *shape))
    assert out["logits"].shape == (2, 12, 4) and out["boxes"].shape == (2, 12, 6)
    assert ((out["boxes"] > 0) & (out["boxes"] < 1)).all()
    assert len(out["aux"]) == 1 and out["aux"][0]["boxes"].shape == (2, 12, 6)
    assert [tuple(s.shape[2:]) for s in out["seg"]] == [tuple(n // s for n in shape) for s in (16, 8, 4)]
    assert all(s.shape[1] == 4 for s in out["seg"])
    sum(o.sum() for o in [out["logits"], out["boxes"], *out["seg"]]).backward()
    first_conv = next(m for m in net.backbone.encoder.modules() if isinstance(m, torch.nn.Conv3d))
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0


def test_queries_start_at_their_organs_prior_boxes():
    """With the plans' query_anchors, query i's first reference box lies near the prior of organ i mod M (each
    organ's queries spread a little), and the first layer's boxes start there (zero-initialised box heads)."""
    from autoorgan.networks.decoder import DeformableDecoder
    torch.manual_seed(0)
    anchors = [[0.2, 0.3, 0.7, 0.1, 0.2, 0.05], [0.6, 0.5, 0.4, 0.3, 0.1, 0.2], [0.8, 0.7, 0.2, 0.05, 0.05, 0.1]]
    dec = DeformableDecoder(32, 4, 1, 2, 1, num_queries=12, anchors=anchors)
    pos, _ = dec.query_embed.weight.chunk(2, dim=-1)
    ref = torch.sigmoid(dec.ref_head(pos) + dec.anchor_logits)
    expected = torch.tensor(anchors)[torch.arange(12) % 3]
    err = (ref - expected).abs()
    assert err.mean() < 0.03 and err.max() < 0.15 and err.max() > 1e-4  # near the prior, spread a little
    _, boxes = dec([torch.randn(2, 32, 4, 4, 4)])
    torch.testing.assert_close(boxes[0], ref[None].expand(2, -1, -1).detach(), atol=1e-5, rtol=0)
    spread = torch.sigmoid(DeformableDecoder(32, 4, 1, 2, 1, num_queries=12).ref_head(pos))[:, :3]
    assert (spread - 0.5).abs().max() > 0.3  # without anchors: the wide random init the anchors replace


def test_top1_with_an_iou_head_ranks_by_probability_times_predicted_iou():
    logits = torch.full((3, 3), -10.0)
    logits[0, 0], logits[1, 0], logits[2, 1] = 10.0, 8.0, 10.0          # queries 0 and 1 both say organ 0
    boxes = torch.rand(3, 6)
    iou = torch.tensor([-3.0, 3.0, 0.0])                                 # but query 0's box is predicted poor
    scores, picked = top1_per_organ(logits, boxes, iou)
    torch.testing.assert_close(picked[0], boxes[1])
    p = logits.softmax(-1)
    assert scores[0].item() == pytest.approx((p[1, 0] * torch.sigmoid(iou[1])).item(), rel=1e-5)
    assert scores[1].item() == pytest.approx((p[2, 1] * 0.5).item(), rel=1e-5)
    _, plain = top1_per_organ(logits, boxes)
    torch.testing.assert_close(plain[0], boxes[0])                       # without: the class probability decides


def test_top1_per_organ_picks_the_most_confident_query_per_class():
    logits = torch.full((4, 3), -5.0)
    logits[1, 0], logits[3, 0], logits[2, 1] = 2.0, 3.0, 4.0
    boxes = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    scores, chosen = top1_per_organ(logits, boxes)
    assert torch.equal(chosen[0], boxes[3]) and torch.equal(chosen[1], boxes[2]) and scores[1] > scores[0]


def _cube_case(shape, box):
    labels = torch.zeros(shape, dtype=torch.long)
    labels[box[0]:box[3], box[1]:box[4], box[2]:box[5]] = 1
    image = torch.randn(1, *shape)
    return image, labels


def test_fit_pads_and_maps_boxes_exactly():
    box = [3, 5, 7, 9, 12, 10]
    image, labels = _cube_case((20, 30, 15), box)
    fitted, flab, fit = fit_to_input(image, labels, (32, 32, 32), np.random.default_rng(0))
    assert fitted.shape == (1, 32, 32, 32)
    got = boxes_from_label_map(flab.numpy())[1]
    assert np.allclose(fit.box_to_input(box), got) and np.allclose(fit.box_to_case(got), box)


def test_fit_scales_down_larger_cases_and_maps_back_within_a_voxel():
    box = [10, 40, 5, 30, 70, 25]
    image, labels = _cube_case((40, 96, 30), box)
    fitted, flab, fit = fit_to_input(image, labels, (32, 48, 32))
    assert fitted.shape == (1, 32, 48, 32) and fit.scale[1] == 0.5
    got = boxes_from_label_map(flab.numpy())[1]
    assert np.abs(fit.box_to_case(got) - np.asarray(box)).max() <= 1 / min(fit.scale) + 1e-6
    norm = voxel_to_normalized(np.asarray(got, float), (32, 48, 32))
    assert np.allclose(normalized_to_voxel(norm, (32, 48, 32)), got)


def test_label_lookup_maps_sparse_label_values_to_consecutive_classes():
    lut = label_lookup([7, 2, 5])
    assert lut[2] == 1 and lut[5] == 2 and lut[7] == 3 and lut[0] == 0 and lut[3] == 0


def test_preprocessed_box_maps_back_through_resampling_crop_and_transpose():
    # preprocessed frame = original transposed by [1, 0, 2], cropped at (2, 3, 4) (transposed axes), resampled x2
    props = {"bbox_used_for_cropping": [[2, 22], [3, 43], [4, 14]],
             "shape_after_cropping_and_before_resampling": (20, 40, 10)}
    pre_box = np.array([2, 4, 6, 8, 10, 12.0])  # in the preprocessed array of shape (10, 20, 5)
    orig = preprocessed_to_original(pre_box, props, (10, 20, 5), [1, 0, 2])
    # transposed frame: lo = [2*2+2, 4*2+3, 6*2+4] = [6, 11, 16], hi = [18, 23, 28]; axes 0 and 1 swap back
    assert np.allclose(orig, [11, 6, 16, 23, 18, 28])
