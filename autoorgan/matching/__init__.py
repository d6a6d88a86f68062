"""Query-to-organ matching: one-to-one Hungarian (DETR) and Dense Query Matching (Organ-DETR)."""
from autoorgan.matching.hungarian import HungarianMatcher, match_cost
from autoorgan.matching.dqm import DenseQueryMatcher

__all__ = ["HungarianMatcher", "DenseQueryMatcher", "match_cost"]
