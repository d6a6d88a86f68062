"""Inference: network output -> organ boxes (detect), boxes -> original image frame and files (export)."""
