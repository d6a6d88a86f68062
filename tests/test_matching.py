"""Matchers against brute force; 3D GIoU properties."""
import itertools

import numpy as np
import pytest
import torch

from autoorgan.boxes.torch_ops import center_to_corners, generalized_box_iou
from autoorgan.matching import DenseQueryMatcher, HungarianMatcher, dqm_eta, match_cost

W = dict(w_class=2.0, w_bbox=5.0, w_giou=2.0)  # the planner's default loss weights (paper / DETR)


def _random_problem(seed, n, m, classes=4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, n, classes + 1, generator=g)
    boxes = torch.cat([torch.rand(1, n, 3, generator=g), 0.05 + 0.3 * torch.rand(1, n, 3, generator=g)], -1)
    labels = torch.randperm(classes, generator=g)[:m]
    tboxes = torch.cat([torch.rand(m, 3, generator=g), 0.05 + 0.3 * torch.rand(m, 3, generator=g)], -1)
    return logits, boxes, {"labels": labels, "boxes": tboxes}


@pytest.mark.parametrize("seed", range(5))
def test_hungarian_is_optimal_by_brute_force(seed):
    logits, boxes, tgt = _random_problem(seed, n=6, m=3)
    (rows, cols), = HungarianMatcher(**W)(logits, boxes, [tgt])
    cost = match_cost(logits[0], boxes[0], tgt["labels"], tgt["boxes"], **W).numpy()
    best = min(sum(cost[q, t] for t, q in enumerate(perm)) for perm in itertools.permutations(range(6), 3))
    assert sorted(cols.tolist()) == [0, 1, 2] and len(set(rows.tolist())) == 3
    assert cost[rows, cols].sum() == pytest.approx(best, abs=1e-5)


@pytest.mark.parametrize("seed,lam,rho", [(0, 0.2, 5), (1, 0.34, 3), (2, 0.2, 5), (3, 0.5, 2)])
def test_dqm_gives_each_organ_one_plus_eta_queries_optimally(seed, lam, rho):
    m = 2
    matcher = DenseQueryMatcher(dqm_eta(lam, rho), **W)
    copies = 1 + matcher.eta
    n = 6
    logits, boxes, tgt = _random_problem(seed, n=n, m=m)
    (rows, cols), = matcher(logits, boxes, [tgt])
    counts = np.bincount(cols.numpy(), minlength=m)
    assert counts.tolist() == [copies] * m and len(set(rows.tolist())) == copies * m
    cost = match_cost(logits[0], boxes[0], tgt["labels"], tgt["boxes"], **W).numpy()  # [N, M]
    best = np.inf  # brute force: choose disjoint query sets of size `copies` for each organ
    for first in itertools.combinations(range(n), copies):
        rest = [q for q in range(n) if q not in first]
        for second in itertools.combinations(rest, copies):
            best = min(best, cost[list(first), 0].sum() + cost[list(second), 1].sum())
    assert cost[rows, cols].sum() == pytest.approx(best, abs=1e-5)


def test_dqm_with_few_queries_and_empty_targets():
    matcher = DenseQueryMatcher(dqm_eta(0.2, 10), **W)  # eta 2 -> 3 copies, but only 4 queries for 2 organs
    logits, boxes, tgt = _random_problem(0, n=4, m=2)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 6)}
    (rows, cols), (r2, c2) = matcher(torch.cat([logits, logits]), torch.cat([boxes, boxes]), [tgt, empty])
    assert np.bincount(cols.numpy()).tolist() == [2, 2] and len(r2) == len(c2) == 0


def test_giou_properties():
    g = torch.Generator().manual_seed(0)
    a = center_to_corners(torch.cat([torch.rand(5, 3, generator=g), 0.1 + torch.rand(5, 3, generator=g)], -1))
    b = center_to_corners(torch.cat([torch.rand(4, 3, generator=g), 0.1 + torch.rand(4, 3, generator=g)], -1))
    assert torch.allclose(torch.diagonal(generalized_box_iou(a, a)), torch.ones(5))
    assert torch.allclose(generalized_box_iou(a, b), generalized_box_iou(b, a).T)
    g_ab = generalized_box_iou(a, b)
    assert (g_ab <= 1).all() and (g_ab >= -1).all()
    far = torch.tensor([[0.0, 0, 0, 1, 1, 1]]), torch.tensor([[3.0, 0, 0, 4, 1, 1]])
    assert generalized_box_iou(*far).item() == pytest.approx(-0.5)  # enclosing 4, union 2


def test_eta_is_the_ceiling_of_lambda_rho():
    assert [dqm_eta(0.2, 10), dqm_eta(0.34, 3), dqm_eta(0.5, 2), dqm_eta(0.21, 10)] == [2, 2, 1, 3]
    with pytest.raises(ValueError):
        DenseQueryMatcher(0, **W)
