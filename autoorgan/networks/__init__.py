"""Networks: Organ-DETR parts (backbone, MSA encoder, deformable decoder) and CCQ (to come)."""
