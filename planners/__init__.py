"""Experiment planners, installed as ``autoorgan.planners`` (the folder sits at the repository's top level; see
docs/layout.md). One planner per configuration; :func:`plan_dataset` writes them into one plans file."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from autoorgan.configurations import PLANNERS, PLANS_SECTIONS
from autoorgan.dataset.raw import is_partially_annotated
from autoorgan.planning.plans import PLANS_NAME, plans_file
from autoorgan.utils.fileio import write_json_atomic


def plan_dataset(dataset_name: str, raw_root: Path, preprocessed_root: Path,
                 configurations: tuple[str, ...] = PLANS_SECTIONS, gpu_memory_target_in_gb: float = 8,
                 device: str = "cuda", overwrite_target_spacing: list[float] | None = None, rho: int | None = None,
                 lambda_match: float | None = None, cpu_memory_target_in_gb: float | None = None) -> dict:
    """Plan the given configurations from the fingerprint in ``preprocessed_root/dataset_name`` and write
    ``autoorganPlans.json`` there (atomically). Returns the plans."""
    from autoorgan.configurations import load_class
    from autoorgan.planners.base import AutoOrganPlannerBase

    common = dict(dataset_name=dataset_name, raw_root=raw_root, preprocessed_root=preprocessed_root,
                  gpu_memory_target_in_gb=gpu_memory_target_in_gb, overwrite_target_spacing=overwrite_target_spacing,
                  plans_name=PLANS_NAME)
    options = dict(device=device, rho=rho, lambda_match=lambda_match, cpu_memory_target_in_gb=cpu_memory_target_in_gb)
    planners = {name: load_class(PLANNERS[name])(**common, **options) for name in configurations}
    base = AutoOrganPlannerBase(**common)
    transpose_forward, transpose_backward = base.determine_transpose()
    fullres_id = f"{PLANS_NAME}_fullres"
    configs = {}
    for name in configurations:
        configs[name] = planners[name].plan_configuration(fullres_id if name == "ccq" else f"{PLANS_NAME}_{name}")
    if "organdetr" in configs and np.allclose(configs["organdetr"]["spacing"], base.fullres_spacing_transposed()):
        configs["organdetr"]["data_identifier"] = fullres_id
        configs["organdetr"]["_why"]["data_identifier"] = "same spacing as ccq: both read the same preprocessed data"
    fp = base.dataset_fingerprint
    plans = {
        "dataset_name": dataset_name,
        "plans_name": PLANS_NAME,
        "original_median_spacing_after_transp": [float(v) for v in np.median(fp["spacings"], 0)[transpose_forward]],
        "original_median_shape_after_transp": [int(round(v)) for v in
                                               np.median(fp["shapes_after_crop"], 0)[transpose_forward]],
        "image_reader_writer": base.determine_reader_writer().__name__,
        "transpose_forward": [int(i) for i in transpose_forward],
        "transpose_backward": [int(i) for i in transpose_backward],
        "configurations": configs,
        "experiment_planner_used": {n: type(planners[n]).__name__ for n in configurations},
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": fp["foreground_intensity_properties_per_channel"],
        "autoorgan": {"partially_annotated": is_partially_annotated(base.dataset_json),
                      "crop": "body mask (see dataset_fingerprint.json autoorgan.intensity_mask)",
                      "box_convention": "docs/conventions.md"},
    }
    out_dir = Path(preprocessed_root) / dataset_name
    path = plans_file(out_dir)
    if path.is_file():  # keep configurations planned earlier that were not re-planned now
        from autoorgan.utils.fileio import load_json
        old = load_json(path)
        if old.get("transpose_forward") == plans["transpose_forward"]:
            for name, cfg in old.get("configurations", {}).items():
                plans["configurations"].setdefault(name, cfg)
    from nnunetv2.utilities.json_export import recursive_fix_for_json_export
    recursive_fix_for_json_export(plans)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(raw_root) / dataset_name / "dataset.json", out_dir / "dataset.json")
    write_json_atomic(plans, path)
    return plans
