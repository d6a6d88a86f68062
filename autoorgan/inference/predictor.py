"""Organ-DETR prediction from a trained model folder: read -> preprocess -> detect (folds, mirroring) -> export.

A model folder is what ``autoorgan_train`` writes
(``$autoorgan_results/DatasetXXX/<Trainer>__<Plans>__organdetr``): ``plans.json``, ``dataset.json`` and
``fold_F/checkpoint_final.pth`` (or ``checkpoint_best.pth``). Several folds are ensembled per organ
(score-weighted mean box, mean score; :func:`autoorgan.inference.detect.fuse_detections`).

Memory: one scan at a time; the image is normalized in place and resampled slab by slab
(:mod:`autoorgan.resampling`), so a 512 x 512 x 600 CT needs about two copies of the float32 scan, not tens.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from autoorgan.dataset.raw import foreground_labels
from autoorgan.errors import UserError
from autoorgan.fileio import load_json, load_network_state, write_json_atomic
from autoorgan.inference.detect import Detections, detect_case, fuse_detections
from autoorgan.inference.export import case_box_record, geometry_from_props, preprocessed_to_original
from autoorgan.inference.inputs import CaseError, InputCase, find_input_cases, read_input_case
from autoorgan.inference.outputs import box_label_map, save_png, slicer_markups, write_image_atomic
from autoorgan.plans import get_configuration

CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_latest.pth")


def available_folds(model_folder: Path, checkpoint: str) -> list[str]:
    return sorted(p.parent.name[len("fold_"):] for p in Path(model_folder).glob(f"fold_*/{checkpoint}"))


def resolve_device(name: str | None) -> torch.device:
    from autoorgan.trainers.base import select_device
    return select_device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


class ModelFolderPredictor:
    """The folds of one trained model folder, loaded for prediction (subclasses: what to predict and write)."""

    configuration_name = ""
    done_suffix = "_boxes.json"   # the file whose presence marks a finished case (written last)

    def __init__(self, model_folder: Path, folds: Sequence[str | int] | None = None,
                 checkpoint: str = "checkpoint_final.pth", device: str | None = None, tta: bool = False):
        self.model_folder = Path(model_folder)
        for f in ("plans.json", "dataset.json"):
            if not (self.model_folder / f).is_file():
                raise UserError(f"{self.model_folder} is not a trained model folder (no {f}); train one with "
                                "autoorgan_train DATASET organdetr FOLD")
        if checkpoint not in CHECKPOINTS:
            raise UserError(f"unknown checkpoint {checkpoint!r}; choose {', '.join(CHECKPOINTS)}")
        self.plans = load_json(self.model_folder / "plans.json")
        self.dataset_json = load_json(self.model_folder / "dataset.json")
        self.configuration = self.model_folder.name.split("__")[-1]
        if self.configuration != self.configuration_name:
            raise UserError(f"{self.model_folder} holds a {self.configuration!r} model, not "
                            f"{self.configuration_name}; pick the matching -c")
        self.cfg = get_configuration(self.plans, self.configuration)
        have = available_folds(self.model_folder, checkpoint)
        self.folds = [str(f) for f in folds] if folds else have
        missing = [f for f in self.folds if f not in have]
        if missing or not self.folds:
            raise UserError(f"no {checkpoint} for fold(s) {', '.join(missing) or '(any)'} in {self.model_folder} "
                            f"(available: {', '.join(have) or 'none'}); finish training first "
                            f"(autoorgan_train ... organdetr FOLD) or choose -f {' '.join(have) or 'FOLD'}")
        self.device = resolve_device(device)
        self.num_channels = len(self.dataset_json["channel_names"])
        labels = foreground_labels(self.dataset_json)
        self.label_values = sorted(labels.values())
        self.label_names = {v: k for k, v in labels.items()}
        self.mirror_axes = tuple(int(a) for a in self.cfg.get("mirror_axes", ())) if tta else ()
        self.checkpoint = checkpoint
        self.networks = []
        for fold in self.folds:
            path = self.model_folder / f"fold_{fold}" / checkpoint
            try:
                state = torch.load(path, map_location="cpu", weights_only=False)["network"]
            except Exception as err:
                raise UserError(f"cannot read {path} ({type(err).__name__}); is the file complete?") from None
            net = self.build_network()
            load_network_state(net, state, path, "retrain, or predict with the version that trained it")
            self.networks.append(net.to(self.device).eval())
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
        self.reader = PlansManager(self.plans).image_reader_writer_class()

    def build_network(self) -> torch.nn.Module:
        raise NotImplementedError

    def predict_case(self, case: InputCase, out_dir: Path, save_box_masks: bool = False,
                     save_png_file: bool = False) -> dict:
        raise NotImplementedError


class OrganDETRPredictor(ModelFolderPredictor):
    """Predict organ boxes for scans with the folds of one trained Organ-DETR model folder."""

    configuration_name = "organdetr"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.input_shape = tuple(int(v) for v in self.cfg["input_shape"])

    def build_network(self) -> torch.nn.Module:
        from autoorgan.networks.organdetr import OrganDETR
        return OrganDETR.from_plans(self.cfg, self.num_channels)

    def detect_preprocessed(self, data: np.ndarray) -> Detections:
        """Preprocessed ``data [C, n0, n1, n2]`` -> fused detections (preprocessed frame, classes 0-based)."""
        runs = [detect_case(net, data, self.input_shape, self.device, self.mirror_axes) for net in self.networks]
        return fuse_detections(runs)

    def predict_arrays(self, data: np.ndarray, props: dict) -> tuple[dict[int, tuple[np.ndarray, float]], object]:
        """Reader output (``data [C, n0, n1, n2]``, nnU-Net properties) -> (``{label: (voxel box [6] in the original
        array, score)}``, the image Geometry)."""
        from autoorgan.preprocessing import preprocess_for_inference
        pre, props = preprocess_for_inference(data, props, self.plans, self.configuration, self.dataset_json)
        dets = self.detect_preprocessed(pre)
        tb = self.plans["transpose_backward"]
        organs = {self.label_values[k]: (preprocessed_to_original(box, props, pre.shape[1:], tb), score)
                  for k, (box, score) in dets.items()}
        return organs, geometry_from_props(props, tb)

    def predict_case(self, case: InputCase, out_dir: Path, save_box_masks: bool = False,
                     save_png_file: bool = False) -> dict:
        """Read, predict and write one case's files; returns its CASE_boxes.json record. Raises CaseError."""
        data, props = read_input_case(case, self.reader, self.num_channels)
        image0 = data[0].copy() if save_png_file else None
        organs, geometry = self.predict_arrays(data, props)
        del data
        record = case_box_record(case.case_id, organs, self.label_names, geometry)
        write_json_atomic(slicer_markups(record), out_dir / f"{case.case_id}.mrk.json")
        if save_box_masks:
            write_image_atomic(box_label_map(organs, geometry.shape), geometry,
                               out_dir / f"{case.case_id}_boxmask.nii.gz")
        if save_png_file:
            save_png(image0, organs, self.label_names, geometry.spacing_array_order,
                     out_dir / f"{case.case_id}_boxes.png")
        write_json_atomic(record, out_dir / f"{case.case_id}_boxes.json")  # last: marks the case as done
        return record


@dataclass
class FolderResult:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def predict_folder(predictor: ModelFolderPredictor, input_folder: Path, output_folder: Path,
                   continue_prediction: bool = False, save_box_masks: bool = False, save_png_file: bool = False,
                   progress: bool = True) -> FolderResult:
    """Predict every case of ``input_folder`` into ``output_folder``; a failing case is reported and skipped."""
    input_folder, output_folder = Path(input_folder), Path(output_folder)
    if output_folder.resolve() == input_folder.resolve():
        raise UserError("the output folder must differ from the input folder")
    cases, notes = find_input_cases(input_folder, predictor.num_channels)
    output_folder.mkdir(parents=True, exist_ok=True)
    for stale in output_folder.glob(".*.tmp*"):  # left by a kill while writing
        stale.unlink(missing_ok=True)
    for note in notes:
        print(f"autoorgan: {note}", file=sys.stderr)
    result = FolderResult()
    t0 = time.time()
    bar = tqdm(cases, unit="case", desc="Predicting", disable=not progress)
    for case in bar:
        if continue_prediction and (output_folder / f"{case.case_id}{predictor.done_suffix}").is_file():
            result.skipped.append(case.case_id)
            continue
        bar.set_postfix_str(case.case_id)
        try:
            predictor.predict_case(case, output_folder, save_box_masks, save_png_file)
            result.done.append(case.case_id)
        except CaseError as err:
            result.failed[case.case_id] = str(err)
            tqdm.write(f"autoorgan: case {case.case_id} failed: {err}", file=sys.stderr)
    bar.close()
    result.seconds = time.time() - t0
    info = {"model_folder": str(predictor.model_folder), "folds": predictor.folds,
            "checkpoint": predictor.checkpoint, "mirror_axes": list(predictor.mirror_axes),
            "device": str(predictor.device), "input_folder": str(input_folder), "failed": result.failed,
            "configuration": predictor.configuration,
            "box_convention": "docs/conventions.md; CASE_boxes.json box_voxel is in the input image's array order"}
    write_json_atomic(info, output_folder / "prediction_info.json")
    return result


class SegmentationPredictor(ModelFolderPredictor):
    """Label maps (``CASE<file_ending>`` on the input image's grid) from ccq or dodnet model folders: sliding
    window over the preprocessed scan, per-class probabilities averaged over folds, classes combined (highest
    probability above the plans' threshold), then resampled (nnU-Net's label resampling), un-cropped and
    un-transposed onto the input grid."""

    configuration_name = "ccq"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
        self.done_suffix = self.dataset_json["file_ending"]
        self.threshold = float(self.cfg.get("ccq", {}).get("combine_threshold", 0.5))
        self.patch_size = [int(p) for p in self.cfg["patch_size"]]
        self.resample_labels = PlansManager(self.plans).get_configuration(self.configuration).resampling_fn_seg

    def build_network(self) -> torch.nn.Module:
        from autoorgan.networks.ccq import CCQ, DoDNet
        cls = DoDNet if self.model_folder.name.startswith("DoDNet") else CCQ
        return cls.from_plans(self.cfg, self.num_channels, len(self.label_values))

    def predict_case(self, case: InputCase, out_dir: Path, save_box_masks: bool = False,
                     save_png_file: bool = False) -> dict:
        from autoorgan.inference.segment import combine_classes
        from autoorgan.inference.sliding import sliding_window_probs
        from autoorgan.preprocessing import preprocess_for_inference
        data, props = read_input_case(case, self.reader, self.num_channels)
        pre, props = preprocess_for_inference(data, props, self.plans, self.configuration, self.dataset_json)
        del data
        probs = sum(sliding_window_probs(net, pre, self.patch_size, self.device, len(self.label_values))
                    for net in self.networks) / len(self.networks)
        labels = combine_classes(probs, self.label_values, self.threshold)[None]
        crop_shape = [int(s) for s in props["shape_after_cropping_and_before_resampling"]]
        spacing = [props["spacing"][i] for i in self.plans["transpose_forward"]]
        back = np.asarray(self.resample_labels(labels, crop_shape, self.cfg["spacing"], spacing))[0]
        full = np.zeros([int(s) for s in props["shape_before_cropping"]], labels.dtype)
        full[tuple(slice(lo, hi) for lo, hi in props["bbox_used_for_cropping"])] = back
        full = full.transpose(self.plans["transpose_backward"])
        geometry = geometry_from_props(props, self.plans["transpose_backward"])
        write_image_atomic(full, geometry, out_dir / f"{case.case_id}{self.done_suffix}")
        return {"case_id": case.case_id, "labels_present": sorted(int(v) for v in np.unique(full) if v)}
