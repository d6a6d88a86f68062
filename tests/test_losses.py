"""Losses: partial annotation never counts an unannotated organ as background; full annotation = usual CE + Dice."""
import pytest
import torch
import torch.nn.functional as F

from autoorgan.losses.detection import OrganDETRLoss, box_losses, classification_loss, quality_loss
from autoorgan.losses.partial_softmax import downsample_onehot, partial_ce_dice
from autoorgan.matching import DenseQueryMatcher, HungarianMatcher


def _seg_case(seed=0, m=3):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, m + 1, (2, 4, 6, 8), generator=g)
    logits = torch.randn(2, m + 1, 4, 6, 8, generator=g)
    return logits, labels


def test_full_annotation_reduces_to_cross_entropy_plus_dice():
    logits, labels = _seg_case()
    target = downsample_onehot(labels, 4, (4, 6, 8))
    ann = torch.ones(2, 3, dtype=torch.bool)
    loss = partial_ce_dice(logits, target, ann)
    p = logits.softmax(1)[:, 1:]
    t = target[:, 1:]
    dice = (2 * (p * t).sum((2, 3, 4)) + 1e-5) / (p.sum((2, 3, 4)) + t.sum((2, 3, 4)) + 1e-5)
    assert torch.allclose(loss, F.cross_entropy(logits, labels) - dice.mean(), atol=1e-5)


def test_unannotated_class_is_not_background_in_the_segmentation_loss():
    logits, labels = _seg_case()
    labels[labels == 2] = 0  # class index 2 (organ class 1) not annotated: its voxels read as 0
    target = downsample_onehot(labels, 4, (4, 6, 8))
    ann = torch.tensor([[True, False, True]] * 2)
    logits.requires_grad_(True)
    loss = partial_ce_dice(logits, target, ann)
    # moving probability between background and the unannotated organ changes nothing ...
    swapped = logits.detach().clone()
    swapped[:, [0, 2]] = swapped[:, [2, 0]]
    assert torch.allclose(partial_ce_dice(swapped, target, ann), loss, atol=1e-6)
    # ... while doing so with an annotated organ does
    swapped = logits.detach().clone()
    swapped[:, [0, 1]] = swapped[:, [1, 0]]
    assert not torch.allclose(partial_ce_dice(swapped, target, ann), loss, atol=1e-3)
    # and where the background is labelled, no gradient pushes the unannotated organ's logit against background
    loss.backward()
    bg = target[:, 0] > 0.99
    g_bg, g_un = logits.grad[:, 0][bg], logits.grad[:, 2][bg]
    assert torch.allclose(g_bg * torch.softmax(logits.detach(), 1)[:, 2][bg],
                          g_un * torch.softmax(logits.detach(), 1)[:, 0][bg], atol=1e-7)


def test_downsampled_targets_are_voxel_fractions():
    labels = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    labels[0, 0, 0, 0] = 1
    t = downsample_onehot(labels, 2, (2, 2, 2))
    assert torch.isclose(t[0, 1, 0, 0, 0], torch.tensor(1 / 8)) and torch.allclose(t.sum(1), torch.ones(1, 2, 2, 2))


def _targets(annotated):
    return [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.2, 0.3, 0.4]]),
             "annotated": torch.tensor(annotated)}]


def test_unmatched_query_predicting_an_unannotated_organ_is_not_penalised():
    logits = torch.zeros(1, 3, 4)  # 3 queries, M = 3 organs + no-object
    logits[0, 0, 0] = 5  # query 0 predicts organ 0 (matched)
    matches = [(torch.tensor([0]), torch.tensor([0]))]
    no_obj = logits.clone()
    no_obj[0, 1, 3] = 8  # query 1: no-object
    unannotated = logits.clone()
    unannotated[0, 1, 2] = 8  # query 1: organ 2, not annotated in this case
    annotated_other = logits.clone()
    annotated_other[0, 1, 1] = 8  # query 1: organ 1, annotated but absent -> a false positive
    t = _targets([True, True, False])
    a = classification_loss(no_obj, matches, t, 0.1)
    b = classification_loss(unannotated, matches, t, 0.1)
    c = classification_loss(annotated_other, matches, t, 0.1)
    assert torch.isclose(a, b, atol=1e-4) and c > a + 0.1


def test_box_losses_zero_for_perfect_boxes_and_no_matches():
    t = _targets([True, True, True])
    boxes = t[0]["boxes"][None].repeat(1, 2, 1)
    l1, giou = box_losses(boxes, [(torch.tensor([1]), torch.tensor([0]))], t)
    assert l1.abs() < 1e-6 and giou.abs() < 1e-6
    empty = torch.zeros(0, dtype=torch.int64)
    l1, giou = box_losses(boxes.requires_grad_(True), [(empty, empty)], t)
    assert l1 == 0 and giou == 0 and l1.requires_grad


def test_full_loss_uses_every_aux_layer_and_handles_empty_targets():
    """Each auxiliary decoder layer adds its own matched set loss (and gets a gradient); dropping the aux layers
    lowers the total by exactly their terms."""
    torch.manual_seed(0)

    def outputs(n_aux):
        layers = [{"logits": torch.randn(2, 20, 4, requires_grad=True),
                   "boxes": (torch.rand(2, 20, 6) * 0.5 + 0.25).requires_grad_(True)} for _ in range(1 + n_aux)]
        return {**layers[0], "aux": layers[1:], "seg": [torch.randn(2, 4, 2, 2, 2, requires_grad=True)]}

    targets = _targets([True, True, False]) + [{"labels": torch.zeros(0, dtype=torch.int64),
                                                "boxes": torch.zeros(0, 6), "annotated": torch.ones(3, dtype=bool)}]
    weights = {"cls": 2.0, "bbox_l1": 5.0, "giou": 2.0, "seg": 2.0, "no_object": 0.1}
    seg = torch.zeros(2, 8, 8, 8, dtype=torch.long)
    for matcher in (HungarianMatcher(2.0, 5.0, 2.0), DenseQueryMatcher(2, 2.0, 5.0, 2.0)):
        loss = OrganDETRLoss(matcher, weights)
        out = outputs(2)
        total, parts = loss(out, targets, seg)
        total.backward()
        assert torch.isfinite(total) and set(parts) >= {"cls", "bbox_l1", "giou", "seg", "total"}
        for layer in [out, *out["aux"]]:
            assert layer["logits"].grad is not None and layer["logits"].grad.abs().sum() > 0
            assert layer["boxes"].grad is not None and layer["boxes"].grad.abs().sum() > 0
        assert out["seg"][0].grad is not None
        alone = dict(out, aux=[])
        aux_terms = sum(weights["cls"] * c + weights["bbox_l1"] * b + weights["giou"] * g
                        for c, b, g, _ in (loss.detection_terms(a["logits"], a["boxes"], targets) for a in out["aux"]))
        assert loss(alone, targets, seg)[0].item() == pytest.approx(total.item() - float(aux_terms.detach()), rel=1e-5)


def test_iou_head_is_trained_towards_the_iou_of_each_matched_box_only():
    """quality_loss: BCE of the matched queries' IoU logits against the IoU of their (detached) box with the matched
    target; unmatched queries and the boxes get no gradient."""
    gt = torch.tensor([[0.5, 0.5, 0.5, 0.2, 0.3, 0.4], [0.3, 0.6, 0.4, 0.1, 0.1, 0.2], [0.6, 0.4, 0.5, 0.2, 0.2, 0.2]])
    t = [{"labels": torch.tensor([0, 1, 2]), "boxes": gt, "annotated": torch.ones(3, dtype=torch.bool)}]
    boxes = torch.rand(1, 5, 6) * 0.2 + 0.4
    boxes[0, 1] = gt[0]                                                  # perfect: IoU 1
    shifted = gt[2].clone()
    shifted[0] += shifted[3] / 2                                         # half a box along axis 0: IoU 1/3
    boxes[0, 3] = shifted
    boxes.requires_grad_(True)
    matches = [(torch.tensor([1, 3]), torch.tensor([0, 2]))]
    logits = torch.full((1, 5), 0.7, requires_grad=True)
    loss = quality_loss(logits, boxes, matches, t[:1])
    expected = F.binary_cross_entropy_with_logits(torch.full((2,), 0.7), torch.tensor([1.0, 1 / 3]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    loss.backward()
    assert logits.grad[0, [1, 3]].abs().min() > 0 and logits.grad[0, [0, 2, 4]].abs().max() == 0
    assert boxes.grad is None or boxes.grad.abs().max() == 0
    ideal = torch.logit(torch.tensor([[0.5, 1 - 1e-6, 0.5, 1 / 3, 0.5]]))
    assert quality_loss(ideal, boxes, matches, t[:1]) < loss                 # lowest where the logits say the IoU
    empty = torch.zeros(0, dtype=torch.int64)
    assert quality_loss(logits, boxes, [(empty, empty)], t[:1]).item() == 0


def test_full_loss_adds_the_quality_term_only_with_an_iou_output_and_weight():
    torch.manual_seed(0)
    t = _targets([True, True, True])
    out = {"logits": torch.randn(1, 6, 4), "boxes": torch.rand(1, 6, 6) * 0.5 + 0.25, "aux": [], "seg": []}
    w = {"cls": 2.0, "bbox_l1": 5.0, "giou": 2.0, "seg": 2.0, "no_object": 0.1}
    base = OrganDETRLoss(HungarianMatcher(2.0, 5.0, 2.0), w)(out, t[:1], None)[0]
    with_iou = dict(out, iou=torch.zeros(1, 6))
    assert OrganDETRLoss(HungarianMatcher(2.0, 5.0, 2.0), w)(with_iou, t[:1], None)[0] == base
    total, parts = OrganDETRLoss(HungarianMatcher(2.0, 5.0, 2.0), dict(w, iou=1.5))(with_iou, t[:1], None)
    assert total.item() == pytest.approx(base.item() + 1.5 * parts["iou"], rel=1e-5) and parts["iou"] > 0
