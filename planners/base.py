"""Shared base of the experiment planners: nnunetv2's ExperimentPlanner, pointed at our folders.

Each configuration has its own planner class (``OrganDETRPlanner``, ``CCQPlanner``) whose
``plan_configuration()`` returns one entry of ``plans["configurations"]``; :func:`autoorgan.planners.plan_dataset`
assembles them into one plans file. Everything nnU-Net already decides well (target spacing, transpose,
normalization, resampling, U-Net topology and patch size) comes from nnunetv2's planner methods.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

from autoorgan.utils.paths import nnunet_paths

PREPROCESSOR_NAME = "AutoOrganPreprocessor"


class AutoOrganPlannerBase(ExperimentPlanner):
    """nnunetv2's ExperimentPlanner reading ``raw_folder/DatasetXXX`` and the fingerprint in
    ``preprocessed_folder/DatasetXXX`` (explicit folders, not nnU-Net's globals)."""

    configuration_name = "base"

    def __init__(self, dataset_name: str, raw_root: Path, preprocessed_root: Path, gpu_memory_target_in_gb: float = 8,
                 overwrite_target_spacing: list[float] | None = None, plans_name: str = "autoorganPlans",
                 device: str = "cuda", **options):
        """``device``: what the plans are for (cuda or cpu); ``options``: planner-specific choices from the command
        line (None: the planner's default); planners ignore options that are not theirs."""
        with nnunet_paths(raw=raw_root, preprocessed=preprocessed_root):
            super().__init__(dataset_name, gpu_memory_target_in_gb=gpu_memory_target_in_gb,
                             preprocessor_name=PREPROCESSOR_NAME, plans_name=plans_name,
                             overwrite_target_spacing=overwrite_target_spacing)
        self.why: dict[str, str] = {}
        self.device = device
        self.options = {k: v for k, v in options.items() if v is not None}

    @property
    def autoorgan_fingerprint(self) -> dict:
        return self.dataset_fingerprint["autoorgan"]

    def fullres_spacing_transposed(self) -> np.ndarray:
        transpose_forward, _ = self.determine_transpose()
        return np.asarray(self.determine_fullres_target_spacing(), dtype=np.float64)[transpose_forward]

    def median_shape_at(self, spacing_transposed: np.ndarray) -> np.ndarray:
        """Median body-cropped shape (transposed array order) after resampling to ``spacing_transposed``."""
        transpose_forward, _ = self.determine_transpose()
        extents_mm = [np.asarray(s) * np.asarray(sp) for s, sp in
                      zip(self.dataset_fingerprint["shapes_after_crop"], self.dataset_fingerprint["spacings"])]
        med = np.median(np.vstack(extents_mm), 0)[transpose_forward]
        return np.round(med / spacing_transposed).astype(int)

    def plan_configuration(self, data_identifier: str) -> dict:
        raise NotImplementedError
