"""Validation during and after training, through the predictor users run and scored as ``autoorgan_evaluate`` scores.

Every validation case is read from the preprocessed data, predicted by :meth:`Predictor.predict_preprocessed`
(the network in memory) and taken back to the original image frame; the references are the original label maps,
which preprocessing copies to ``$autoorgan_preprocessed/DatasetXXX/gt_segmentations/`` (nnU-Net's folder). Interim
validation scores in memory (boxes: 3D COCO metrics; masks: Dice); the final one writes every case's output files
into ``fold_F/validation/`` and scores that folder with :func:`autoorgan.evaluation.folders.evaluate_folders`, the
function behind ``autoorgan_evaluate`` (boxes: also centre distances; masks: also HD95). Organs a case does not
annotate are left out for that case, as everywhere.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from autoorgan.boxes import boxes_from_label_map
from autoorgan.dataset.raw import annotated_labels
from autoorgan.evaluation.detection import CaseDetections, detection_metrics
from autoorgan.evaluation.folders import evaluate_folders, read_label_map
from autoorgan.evaluation.segmentation import case_mask_metrics, summarize_masks
from autoorgan.utils.errors import UserError
from autoorgan.utils.fileio import write_json_atomic

GT_FOLDER = "gt_segmentations"


def reference_path(preprocessed_dataset_folder: Path, case_id: str, dataset_json: Mapping) -> Path:
    path = Path(preprocessed_dataset_folder) / GT_FOLDER / f"{case_id}{dataset_json['file_ending']}"
    if not path.is_file():
        raise UserError(f"no reference label map {path}; rerun autoorgan_plan_and_preprocess -d "
                        f"{Path(preprocessed_dataset_folder).name} (it copies the label maps to {GT_FOLDER}/)")
    return path


def validate(predictor, data_folder: Path, case_ids: Sequence[str], preprocessed_dataset_folder: Path,
             output_folder: Path | None = None, notes: Mapping | None = None) -> dict:
    """Metrics of ``predictor`` on the preprocessed cases ``case_ids`` in ``data_folder``. With ``output_folder``
    (final validation) the case files are written there, the folder is scored by ``evaluate_folders`` and
    ``summary.json`` written (``notes``: extra keys); returns the ``boxes`` or ``masks`` metrics."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    dataset = nnUNetDatasetBlosc2(str(data_folder), list(case_ids))
    ds_json = predictor.dataset_json
    names = predictor.label_names
    boxes_out = predictor.output == "boxes"
    det_cases, mask_cases = [], {}
    for ident in case_ids:
        data, _, _, props = dataset.load_case(ident)
        prediction, geometry = predictor.predict_preprocessed(np.asarray(data), props)
        if output_folder is not None:
            output_folder.mkdir(parents=True, exist_ok=True)
            predictor.write_case(ident, prediction, geometry, output_folder)
            continue
        ref, ref_geo = read_label_map(reference_path(preprocessed_dataset_folder, ident, ds_json))
        annotated = set(annotated_labels(ds_json, ident))
        if boxes_out:
            ref_boxes = {k: np.asarray(v, np.float64) for k, v in boxes_from_label_map(ref, names).items()}
            det_cases.append(CaseDetections(ref_boxes, prediction, annotated, ident))
        else:
            mask_cases[ident] = case_mask_metrics(ref, prediction.labels, sorted(names), ref_geo.spacing_array_order,
                                                  annotated, with_hd95=False)
    if output_folder is not None:
        gt = Path(preprocessed_dataset_folder) / GT_FOLDER
        for ident in case_ids:
            reference_path(preprocessed_dataset_folder, ident, ds_json)
        metrics = evaluate_folders(gt, output_folder, ds_json, cases=list(case_ids))["boxes" if boxes_out else "masks"]
        frame = (f"original image (predictions mapped back; references: the label maps in {GT_FOLDER}/), scored as "
                 "autoorgan_evaluate scores")
        write_json_atomic({"metrics": metrics, "num_cases": len(case_ids), **(notes or {}), "frame": frame},
                          output_folder / "summary.json")
        return metrics
    if boxes_out:
        return detection_metrics(det_cases, names)
    summary = summarize_masks(mask_cases, names)
    return {"mean_Dice": summary["mean_Dice"], "mean_HD95": summary["mean_HD95"], "per_class": summary["per_class"]}
