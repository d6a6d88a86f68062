"""Planning: the dataset fingerprint and the plans file (the planners themselves live in ``autoorgan.planners``)."""
