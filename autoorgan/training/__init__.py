"""Training data and schedule: whole-volume samples (organdetr), patches (ccq, dodnet), folds, learning-rate
schedule, progress plots (the trainers themselves live in ``autoorgan.trainers``)."""
