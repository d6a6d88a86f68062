"""Trainers, installed as ``autoorgan.trainers`` (the folder sits at the repository's top level)."""
