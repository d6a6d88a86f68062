"""Training losses: detection set loss (autoorgan.losses.detection) and partial-label segmentation loss
(autoorgan.losses.partial_softmax)."""
