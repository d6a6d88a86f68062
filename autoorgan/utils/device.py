"""The device a command runs on (chosen at run time: CUDA when visible, else the CPU)."""
from __future__ import annotations

import os

import torch

from autoorgan.utils.errors import UserError

DEVICES = ("cpu", "cuda", "mps")


def select_device(name: str | None = None) -> torch.device:
    """``cpu``, ``cuda`` or ``mps`` (``None``: cuda when visible, else cpu) -> torch.device; a one-line UserError when
    it is not available. Under torchrun, ``cuda`` is this process's ``LOCAL_RANK`` GPU."""
    name = name or ("cuda" if torch.cuda.is_available() else "cpu")
    if name not in DEVICES:
        raise UserError(f"unknown -device {name!r}; choose cpu, cuda or mps")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("-device cuda was asked for but PyTorch sees no CUDA GPU; use -device cpu")
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UserError("-device mps was asked for but is not available here; use -device cpu")
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


def conv_memory_format(device: torch.device) -> torch.memory_format:
    """The layout of the 3D convolutional segmentation networks (ccq, dodnet, masked_sigmoid) and their inputs on
    ``device``: channels-last (``[B, C, D, H, W]`` stored as NDHWC) on the CPU and CUDA, measured faster on the CPU
    (OpenKBP masked_sigmoid training step, batch 2 of 48x48x32, one CPU thread: 0.47 -> 0.35-0.39 s;
    bench/seg_step.py); the default layout elsewhere (MPS)."""
    return torch.channels_last_3d if device.type in ("cpu", "cuda") else torch.contiguous_format
