"""Query-to-organ matching: one-to-one Hungarian (DETR) and Dense Query Matching (Organ-DETR)."""
from autoorgan.matching.dqm import DenseQueryMatcher, dqm_eta
from autoorgan.matching.hungarian import HungarianMatcher, match_cost

__all__ = ["HungarianMatcher", "DenseQueryMatcher", "dqm_eta", "match_cost"]
