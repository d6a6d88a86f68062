"""Networks: Organ-DETR (backbone, MSA encoder, deformable decoder) and CCQ / DoDNet (``ccq.py``); the registry
(:mod:`autoorgan.configurations`) lists which of them a plans file may name."""
