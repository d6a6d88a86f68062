"""One-to-one Hungarian matching with DETR's costs (class, L1, GIoU; weights from the plans' ``loss_weights``).

Inputs for a batch: ``logits [B, N, C + 1]`` (last class = no-object), ``boxes [B, N, 6]`` normalized
(``[c0, c1, c2, s0, s1, s2]``, autoorgan.boxes), and per item a target dict with ``labels [M]`` (0-based organ
class ids) and ``boxes [M, 6]`` normalized. Output per item: ``(query_idx [K], target_idx [K])`` int64 tensors.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from autoorgan.boxes.torch_ops import center_to_corners, generalized_box_iou
from autoorgan.utils.errors import UserError


def match_cost(logits: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, tgt_boxes: torch.Tensor,
               w_class: float, w_bbox: float, w_giou: float) -> torch.Tensor:
    """Cost matrix ``[N, M]`` of one item: ``-w_class * p(label) + w_bbox * L1 - w_giou * GIoU``."""
    prob = logits.softmax(-1)[:, labels]  # [N, M]
    l1 = torch.cdist(boxes, tgt_boxes, p=1)
    giou = generalized_box_iou(center_to_corners(boxes), center_to_corners(tgt_boxes))
    return w_bbox * l1 - w_class * prob - w_giou * giou


def solve(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum-cost assignment of a ``[N, M]`` matrix (N >= M): (rows, cols) sorted by row."""
    rows, cols = linear_sum_assignment(cost.detach().cpu().numpy())
    order = np.argsort(rows)
    return torch.as_tensor(rows[order], dtype=torch.int64), torch.as_tensor(cols[order], dtype=torch.int64)


class HungarianMatcher:
    """DETR's one-to-one matcher. Call with ``(logits, boxes, targets)``; see the module docstring."""

    def __init__(self, w_class: float, w_bbox: float, w_giou: float):
        self.w = (w_class, w_bbox, w_giou)

    def copies_per_target(self, num_queries: int, num_targets: int) -> int:
        return 1

    @torch.no_grad()
    def __call__(self, logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict]
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for b, tgt in enumerate(targets):
            m = len(tgt["labels"])
            if m == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                out.append((empty, empty))
                continue
            k = self.copies_per_target(logits.shape[1], m)
            labels = tgt["labels"].repeat_interleave(k)
            tboxes = tgt["boxes"].repeat_interleave(k, dim=0)
            cost = match_cost(logits[b].float(), boxes[b].float(), labels, tboxes.float(), *self.w)
            if not torch.isfinite(cost).all():
                raise UserError("training diverged: the network's outputs are not finite; lower the learning rate "
                                "(--lr) and start again")
            rows, cols = solve(cost)
            out.append((rows, torch.div(cols, k, rounding_mode="floor")))
        return out
