"""autoorgan: self-configuring 3D organ detection (Organ-DETR) and partially labeled segmentation (CCQ).

The data flows one way: raw dataset -> fingerprint -> plans -> preprocessed data -> trainer -> checkpoint ->
predictor -> outputs -> evaluation. See docs/ for the conventions (boxes, coordinate frames, file formats).
"""
from autoorgan.utils.paths import wire_nnunet_env

wire_nnunet_env()  # before any nnunetv2 import: nnunetv2.paths reads the variables when first imported

__version__ = "0.1.0"

_API = {"Predictor": "autoorgan.inference.predictor", "Prediction": "autoorgan.inference.predictor",
        "load_predictor": "autoorgan.inference.predictor", "load_ensemble": "autoorgan.inference.predictor"}


def __getattr__(name: str):
    """The Python API (``autoorgan.Predictor``), imported on first use so the command-line tools start fast."""
    if name in _API:
        import importlib
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'autoorgan' has no attribute {name!r}")
