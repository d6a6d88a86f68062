"""Preprocessing: transpose, body crop, normalization and resampling of cases; fitting a case to a fixed input."""
