"""Dense Query Matching (Organ-DETR, eq. 5): every ground-truth organ is duplicated so that it owns 1 + eta
queries, eta = ceil(lambda * rho) with rho = queries / organs (:func:`dqm_eta`; the planner decides it and writes it
to the plans); one Hungarian assignment on the enlarged target set, then every duplicate maps back to its organ. No
extra parameters; at inference the best query per organ is kept.

If an item has too few queries for (1 + eta) copies of each of its M organs, the copies are reduced to
floor(N / M) (at least 1) for that item.
"""
from __future__ import annotations

import math

from autoorgan.matching.hungarian import HungarianMatcher


def dqm_eta(lam: float, rho: int) -> int:
    """eta = ceil(lambda * rho) (paper eq. 5), robust to float round-off (0.2 * 10 is 2, not 3)."""
    return math.ceil(lam * rho - 1e-9)


class DenseQueryMatcher(HungarianMatcher):
    """DQM: each organ gets ``1 + eta`` queries. Call as :class:`HungarianMatcher`; target indices refer to the
    original (unduplicated) organs."""

    def __init__(self, eta: int, w_class: float, w_bbox: float, w_giou: float):
        super().__init__(w_class, w_bbox, w_giou)
        if int(eta) < 1:
            raise ValueError(f"DQM needs eta >= 1, got {eta}")
        self.eta = int(eta)

    def copies_per_target(self, num_queries: int, num_targets: int) -> int:
        return max(1, min(1 + self.eta, num_queries // num_targets))
