"""Evaluation: 3D detection metrics (autoorgan.evaluation.detection)."""
