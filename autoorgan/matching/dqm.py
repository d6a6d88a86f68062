"""Dense Query Matching (Organ-DETR, eq. 5): every ground-truth organ is duplicated so that it owns 1 + eta
queries, eta = ceil(lambda * rho) with rho = queries / organs; one Hungarian assignment on the enlarged target set,
then every duplicate maps back to its organ. No extra parameters; at inference the best query per organ is kept.

If an item has too few queries for (1 + eta) copies of each of its M organs, the copies are reduced to
floor(N / M) (at least 1) for that item.
"""
from __future__ import annotations

import math

from autoorgan.matching.hungarian import HungarianMatcher


class DenseQueryMatcher(HungarianMatcher):
    """DQM with matching ratio ``lam`` and queries per organ ``rho``: each organ gets ``1 + ceil(lam * rho)``
    queries. Call as :class:`HungarianMatcher`; target indices refer to the original (unduplicated) organs."""

    def __init__(self, lam: float = 0.2, rho: int = 10, w_class: float = 2.0, w_bbox: float = 5.0,
                 w_giou: float = 2.0):
        super().__init__(w_class, w_bbox, w_giou)
        self.eta = math.ceil(lam * rho - 1e-9)
        if self.eta < 1:
            raise ValueError(f"lambda {lam} with rho {rho} gives eta = {self.eta}; DQM needs eta >= 1")

    def copies_per_target(self, num_queries: int, num_targets: int) -> int:
        return max(1, min(1 + self.eta, num_queries // num_targets))
