"""Organ-DETR's detection set loss: classification CE with a no-object weight, L1 + 3D GIoU on matched pairs,
for the last decoder layer and every auxiliary layer (each matched on its own), plus the multi-scale segmentation
loss (paper eq. 8: ``lambda_cls * L_cls + lambda_bbox * L_bbox + lambda_seg * L_seg``), plus, when the network has
an IoU head and the plans weight ``iou``, a box-quality term: each matched query of the last layer is trained (BCE)
towards the IoU of its (detached) box with its target, so inference can rank good boxes above bad ones.

Targets per batch item: ``labels [K]`` (0-based organ classes present and annotated), ``boxes [K, 6]`` normalized
(autoorgan.boxes convention) and ``annotated [M]`` bool. **Partial annotation**: an organ that is not annotated in a
case has no box, so it is never matched; and an unmatched query is trained towards "no-object *or* an unannotated
organ" (the marginal probability), so predicting an unannotated organ is not penalised as background.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from autoorgan.boxes.torch_ops import box_iou_union, center_to_corners, generalized_box_iou
from autoorgan.losses.partial_softmax import multiscale_seg_loss
from autoorgan.matching import DenseQueryMatcher, HungarianMatcher
from autoorgan.utils.errors import UserError


def classification_loss(logits: torch.Tensor, matches: list[tuple[torch.Tensor, torch.Tensor]],
                        targets: list[dict], no_object_weight: float) -> torch.Tensor:
    """``logits [B, N, M + 1]``; weighted mean of per-query CE (matched queries weight 1, others
    ``no_object_weight`` with the marginal no-object/unannotated target)."""
    b, n, c = logits.shape
    logits = logits.float()
    log_z = torch.logsumexp(logits, -1)  # [B, N]
    unknown = torch.stack([torch.cat([~t["annotated"].to(logits.device),
                                      torch.ones(1, dtype=torch.bool, device=logits.device)]) for t in targets])
    log_neg = torch.logsumexp(logits.masked_fill(~unknown[:, None, :], float("-inf")), -1) - log_z  # [B, N]
    loss = -log_neg
    weight = torch.full((b, n), no_object_weight, device=logits.device)
    for i, ((q, t), tgt) in enumerate(zip(matches, targets)):
        if len(q):
            q = q.to(logits.device)
            lab = tgt["labels"].to(logits.device)[t.to(logits.device)]
            loss[i, q] = log_z[i, q] - logits[i, q, lab]
            weight[i, q] = 1.0
    return (loss * weight).sum() / weight.sum()


def matched(values: torch.Tensor, matches: list[tuple[torch.Tensor, torch.Tensor]], targets: list[dict]
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The matched queries' ``values [B, N, ...]`` and their targets' boxes, concatenated over the batch in one
    order: ``([P, ...], [P, 6])`` float."""
    dev = values.device
    src = [values[i, q.to(dev)] for i, (q, _) in enumerate(matches)]
    tgt = [t["boxes"].to(dev)[j.to(dev)] for (_, j), t in zip(matches, targets)]
    return torch.cat(src).float(), torch.cat(tgt).float()


def box_losses(boxes: torch.Tensor, matches: list[tuple[torch.Tensor, torch.Tensor]], targets: list[dict]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean L1 and mean (1 - GIoU) over matched pairs; zeros (with gradient path) when nothing is matched."""
    src_all, tgt_all = matched(boxes, matches, targets)
    if len(src_all) == 0:
        zero = boxes.sum() * 0
        return zero, zero
    l1 = F.l1_loss(src_all, tgt_all, reduction="none").sum(-1).mean()
    giou = torch.diag(generalized_box_iou(center_to_corners(src_all), center_to_corners(tgt_all)))
    return l1, (1 - giou).mean()


def quality_loss(iou_logits: torch.Tensor, boxes: torch.Tensor, matches: list[tuple[torch.Tensor, torch.Tensor]],
                 targets: list[dict]) -> torch.Tensor:
    """``iou_logits [B, N]``, ``boxes [B, N, 6]``: mean BCE of the matched queries' predicted IoU against the IoU of
    their detached box with the matched target (no gradient into the boxes); zero when nothing is matched."""
    src, tgt = matched(boxes.detach(), matches, targets)
    logit, _ = matched(iou_logits, matches, targets)
    if len(logit) == 0:
        return iou_logits.sum() * 0
    iou = torch.diag(box_iou_union(center_to_corners(src), center_to_corners(tgt))[0])
    return F.binary_cross_entropy_with_logits(logit, iou)


LOSS_WEIGHTS = ("cls", "bbox_l1", "giou", "seg", "no_object")
MATCHERS = ("dqm", "hungarian")


class OrganDETRLoss:
    """Call with the network output dict, target list and seg labels ``[B, n0, n1, n2]``; returns
    ``(total, parts)`` where ``parts`` holds detached scalars for logging. ``weights``: the plans'
    ``organdetr.loss_weights`` (every key of :data:`LOSS_WEIGHTS`; ``iou``, the box-quality weight, is optional
    and 0 when absent)."""

    def __init__(self, matcher, weights: dict, use_seg: bool = True):
        missing = [k for k in LOSS_WEIGHTS if k not in weights]
        if missing:
            raise ValueError(f"loss weights {missing} missing")
        self.matcher, self.w, self.use_seg = matcher, {k: float(weights[k]) for k in LOSS_WEIGHTS}, use_seg
        self.w["iou"] = float(weights.get("iou", 0.0))

    def detection_terms(self, logits, boxes, targets):
        matches = self.matcher(logits.detach(), boxes.detach(), targets)
        cls = classification_loss(logits, matches, targets, self.w["no_object"])
        l1, giou = box_losses(boxes, matches, targets)
        return cls, l1, giou, matches

    def __call__(self, out: dict, targets: list[dict], seg_labels: torch.Tensor | None):
        layers = [out, *out["aux"]]
        parts = {"cls": 0.0, "bbox_l1": 0.0, "giou": 0.0}
        total = 0
        for layer in layers:
            cls, l1, giou, matches = self.detection_terms(layer["logits"], layer["boxes"], targets)
            total = total + self.w["cls"] * cls + self.w["bbox_l1"] * l1 + self.w["giou"] * giou
            if layer is out:
                parts.update(cls=cls.item(), bbox_l1=l1.item(), giou=giou.item())
                if "iou" in out and self.w["iou"] > 0:
                    quality = quality_loss(out["iou"], out["boxes"], matches, targets)
                    total = total + self.w["iou"] * quality
                    parts["iou"] = quality.item()
        if self.use_seg and seg_labels is not None and out.get("seg"):
            annotated = torch.stack([t["annotated"] for t in targets]).to(seg_labels.device)
            seg = multiscale_seg_loss(out["seg"], seg_labels, annotated)
            total = total + self.w["seg"] * seg
            parts["seg"] = seg.item()
        parts["total"] = total.item()
        return total, parts


def build_criterion(organdetr_plans: dict, matcher: str, use_seg: bool = True) -> OrganDETRLoss:
    """The loss of a run from the plans' ``organdetr`` section (loss weights, which are also the matching costs,
    and eta) with ``matcher`` ``dqm`` or ``hungarian``."""
    w = organdetr_plans["loss_weights"]
    costs = dict(w_class=w["cls"], w_bbox=w["bbox_l1"], w_giou=w["giou"])
    if matcher == "dqm":
        return OrganDETRLoss(DenseQueryMatcher(organdetr_plans["eta"], **costs), w, use_seg)
    if matcher == "hungarian":
        return OrganDETRLoss(HungarianMatcher(**costs), w, use_seg)
    raise UserError(f"unknown matcher {matcher!r}; choose {' or '.join(MATCHERS)}")
