"""Checkpoint files: written atomically, read without executing anything.

``torch.load(..., weights_only=False)`` unpickles arbitrary objects, so a checkpoint from someone else could run
code on the reader's machine. Every checkpoint autoorgan reads goes through :func:`load_checkpoint`, which uses
``weights_only=True`` (tensors, containers, numbers, strings) plus the few numpy reconstructors our own checkpoints
need for the saved numpy random state; anything else in the file is refused with a one-line error.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from autoorgan.utils.errors import UserError
from autoorgan.utils.fileio import atomic_output


def _numpy_globals() -> list:
    from numpy._core.multiarray import _reconstruct  # the reconstructor numpy arrays pickle to
    dtypes = [type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64, np.float32, np.bool_)]
    return [_reconstruct, np.ndarray, np.dtype, *dtypes]


def atomic_torch_save(obj: dict, path: Path) -> None:
    """``torch.save`` to a temporary name beside ``path``, fsync, rename: a kill leaves the old file intact."""
    with atomic_output(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as err:  # torch reports a full disk as "unexpected pos ..." / "failed writing file"
            raise UserError(f"cannot write checkpoint {path} ({str(err).strip().splitlines()[0]}); is the disk full "
                            "or the folder read-only? The previous checkpoint is intact") from None
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())


def load_checkpoint(path: Path, advice: str) -> dict:
    """Read a checkpoint (a dict) safely; a damaged or foreign file is a one-line UserError ending in ``advice``."""
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # damaged, truncated, or holding objects that are not plain data (refused)
        reason = "it holds objects other than tensors and plain data" if "weights_only" in str(err).lower() or \
            "unsupported global" in str(err).lower() else f"{type(err).__name__}"
        raise UserError(f"cannot read checkpoint {path} ({reason}); {advice}") from None
    if not isinstance(ck, dict) or not isinstance(ck.get("network"), dict):
        raise UserError(f"{path} is not an autoorgan checkpoint (no network weights); {advice}")
    return ck


def load_network_state(net: torch.nn.Module, state: dict, path: Path, advice: str) -> None:
    """``net.load_state_dict(state)`` (``state`` read from the checkpoint ``path``); keys or shapes that differ (another
    autoorgan version, other plans) become a one-line :class:`UserError` ending in ``advice``."""
    try:
        net.load_state_dict(state)
    except RuntimeError:
        raise UserError(f"{path} does not fit this network (made by another autoorgan version or other plans); "
                        f"{advice}") from None


def rng_states() -> dict:
    """Every random generator's state (torch, numpy, Python, CUDA), for exact resume."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)
