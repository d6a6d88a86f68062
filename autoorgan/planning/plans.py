"""Where plans live and how they are read: ``$autoorgan_preprocessed/DatasetXXX_Name/autoorganPlans.json``.

The file follows nnU-Net v2's plans layout (``configurations``, ``transpose_forward``, ``spacing``, ...), so
nnunetv2's ``PlansManager``/``ConfigurationManager`` read it and give us its resampling and normalization. Each
configuration (``organdetr``, ``ccq``) adds its own section and a ``_why`` object with a one-line reason for every
derived number. Plans are plain JSON: edit them by hand to override a choice, then rerun preprocessing.
"""
from __future__ import annotations

from pathlib import Path

from autoorgan.utils.errors import UserError
from autoorgan.utils.fileio import load_json

PLANS_NAME = "autoorganPlans"


def plans_file(preprocessed_dataset_folder: Path, plans_name: str = PLANS_NAME) -> Path:
    return Path(preprocessed_dataset_folder) / f"{plans_name}.json"


def load_plans(preprocessed_dataset_folder: Path, plans_name: str = PLANS_NAME) -> dict:
    """Read a plans file; UserError (one line, with the fix) when it is missing or broken."""
    path = plans_file(preprocessed_dataset_folder, plans_name)
    if not path.is_file():
        raise UserError(f"no plans at {path}; run autoorgan_plan_and_preprocess -d <id> first")
    try:
        return load_json(path)
    except ValueError as err:
        raise UserError(f"plans file {path} is not valid JSON ({err}); fix it or rerun planning with --clean") from None


def get_configuration(plans: dict, name: str) -> dict:
    if name not in plans.get("configurations", {}):
        raise UserError(f"configuration {name!r} is not in the plans ({', '.join(plans.get('configurations', {}))}); "
                        "plan it with autoorgan_plan_and_preprocess -c " + name)
    return plans["configurations"][name]
