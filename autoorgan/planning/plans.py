"""Where plans live and how they are read: ``$autoorgan_preprocessed/DatasetXXX_Name/autoorganPlans.json``.

The file follows nnU-Net v2's plans layout (``configurations``, ``transpose_forward``, ``spacing``, ...), so
nnunetv2's ``PlansManager``/``ConfigurationManager`` read it and give us its resampling and normalization. Each
configuration (``organdetr``, ``ccq``) adds its own section and a ``_why`` object with a one-line reason for every
derived number. Plans are plain JSON: edit them by hand to override a choice, then rerun preprocessing.
"""
from __future__ import annotations

import math
from pathlib import Path

from autoorgan.utils.errors import UserError
from autoorgan.utils.fileio import load_json
from autoorgan.utils.paths import safe_component

PLANS_NAME = "autoorganPlans"


def plans_file(preprocessed_dataset_folder: Path, plans_name: str = PLANS_NAME) -> Path:
    return Path(preprocessed_dataset_folder) / f"{safe_component(plans_name, 'plans name')}.json"


def load_plans(preprocessed_dataset_folder: Path, plans_name: str = PLANS_NAME) -> dict:
    """Read and check a plans file; UserError (one line, with the fix) when it is missing or broken."""
    path = plans_file(preprocessed_dataset_folder, plans_name)
    if not path.is_file():
        raise UserError(f"no plans at {path}; run autoorgan_plan_and_preprocess -d <id> first")
    return read_plans(path)


def read_plans(path: Path) -> dict:
    """A plans file (preprocessed folder or model folder), checked by :func:`check_plans`."""
    try:
        plans = load_json(path)
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"plans file {path} is not valid JSON ({err}); fix it or rerun planning with --clean") from None
    check_plans(plans, path)
    return plans


def _positive_numbers(value, n: int | None, integer: bool) -> bool:
    if not isinstance(value, list) or (n is not None and len(value) != n):
        return False
    kinds = (int,) if integer else (int, float)
    return all(isinstance(v, kinds) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in value)


def check_plans(plans: object, path: Path) -> None:
    """What the rest of the code relies on, checked once where plans are read: a plans file is shared and edited
    by hand, and its names become folder names (``data_identifier`` must stay a plain name: never a path)."""
    def bad(where: str, what: str):
        raise UserError(f"plans file {path}: {where} {what}; fix it or rerun autoorgan_plan_and_preprocess --clean")
    if not isinstance(plans, dict) or not isinstance(plans.get("configurations"), dict):
        bad("the top level", "must be an object with 'configurations'")
    if sorted(plans.get("transpose_forward", [0, 1, 2])) != [0, 1, 2] or \
            sorted(plans.get("transpose_backward", [0, 1, 2])) != [0, 1, 2]:
        bad("transpose_forward/transpose_backward", "must be permutations of [0, 1, 2]")
    for name, cfg in plans["configurations"].items():
        if not isinstance(cfg, dict):
            bad(f"configuration {name!r}", "must be an object")
        safe_component(cfg.get("data_identifier", ""), f"plans {path}: data_identifier of {name!r}")
        if not _positive_numbers(cfg.get("spacing"), 3, integer=False):
            bad(f"{name}.spacing", f"is {cfg.get('spacing')!r}; it must be 3 positive numbers (mm)")
        for key in ("patch_size", "input_shape"):
            if key in cfg and not _positive_numbers(cfg[key], 3, integer=True):
                bad(f"{name}.{key}", f"is {cfg[key]!r}; it must be 3 positive integers (voxels)")
        if "batch_size" in cfg and not _positive_numbers([cfg["batch_size"]], 1, integer=True):
            bad(f"{name}.batch_size", f"is {cfg['batch_size']!r}; it must be a positive integer")


def get_configuration(plans: dict, name: str) -> dict:
    if name not in plans.get("configurations", {}):
        raise UserError(f"configuration {name!r} is not in the plans ({', '.join(plans.get('configurations', {}))}); "
                        "plan it with autoorgan_plan_and_preprocess -c " + name)
    return plans["configurations"][name]
