"""Prediction: read -> preprocess -> network(s) -> back to the original image -> output files.

One predictor class per kind of output, both on :class:`Predictor`:

* :class:`OrganDETRPredictor` (``boxes``): top-1 box per organ (``CASE_boxes.json``, Slicer ``CASE.mrk.json``,
  optional box masks and PNG); several folds are fused per organ (score-weighted mean box, mean score);
* :class:`SegmentationPredictor` (``masks``, ccq / dodnet): sliding window, per-class probabilities averaged over
  folds, classes combined, label map ``CASE<file_ending>`` on the input grid.

A predictor holds networks and the plans they were trained with. :func:`load_predictor` builds one from a model
folder (``$autoorgan_results/DatasetXXX/<Trainer>__<Plans>__<section>`` with ``plans.json``, ``dataset.json`` and
``fold_F/checkpoint_*.pth``; the network is the one the folder's plans name, looked up in
:data:`autoorgan.configurations.NETWORKS`; checkpoints are read without unpickling code); :func:`load_ensemble`
one from several folders trained on the same plans (their networks averaged like folds). Trainers build one around
the network they train (``Predictor(plans, dataset_json, section, [network], device)``) and validate through
:meth:`Predictor.predict_preprocessed`, the same path ``autoorgan_predict`` takes after preprocessing (as nnU-Net's
``perform_actual_validation`` does with its predictor).

Memory: one scan at a time; the image is normalized in place and resampled slab by slab
(:mod:`autoorgan.preprocessing.resampling`), so a 512 x 512 x 600 CT needs about two copies of the float32 scan.
"""
from __future__ import annotations

import contextlib
import glob
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from autoorgan.boxes import Geometry, geometry_from_props, preprocessed_to_original
from autoorgan.configurations import PLANS_SECTIONS, network_class
from autoorgan.dataset.raw import foreground_labels, read_model_dataset_json
from autoorgan.inference.detect import Detections, detect_case, fuse_detections
from autoorgan.inference.export import case_box_record
from autoorgan.inference.inputs import CaseError, InputCase, find_input_cases, read_input_case
from autoorgan.inference.outputs import box_label_map, save_png, slicer_markups, write_image_atomic
from autoorgan.planning.laterality import case_lateral_axis, configured_pairs, swap_order
from autoorgan.planning.plans import get_configuration, read_plans
from autoorgan.utils.checkpoints import load_checkpoint, load_network_state
from autoorgan.utils.device import conv_memory_format, select_device
from autoorgan.utils.errors import UserError
from autoorgan.utils.fileio import write_json_atomic

CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_latest.pth")
MAX_RESAMPLED_VOXELS = 1e9  # 4 GB of float32: far above any CT at a planned spacing

Organs = dict[int, tuple[np.ndarray, float]]  # label value -> (voxel box [6] in the original array, score)


def available_folds(model_folder: Path, checkpoint: str) -> list[str]:
    return sorted(p.parent.name[len("fold_"):] for p in Path(model_folder).glob(f"fold_*/{checkpoint}"))


def build_network(plans: dict, section: str, dataset_json: dict) -> torch.nn.Module:
    """The network the plans' ``section`` names (``architecture.network_class_name``), built from the plans."""
    cfg = get_configuration(plans, section)
    name = cfg.get("architecture", {}).get("network_class_name", "")
    return network_class(name).from_plans(cfg, len(dataset_json["channel_names"]),
                                          len(foreground_labels(dataset_json)))


@contextlib.contextmanager
def eval_mode(networks: Sequence[torch.nn.Module]) -> Iterator[None]:
    """Networks in eval mode for the block, their previous mode restored afterwards (validation during training)."""
    was = [n.training for n in networks]
    for n in networks:
        n.eval()
    try:
        yield
    finally:
        for n, w in zip(networks, was, strict=True):
            n.train(w)


class Predictor:
    """Networks of one plans section (e.g. the folds of a model folder) and everything needed to predict with them.

    Args:
        plans: the plans the networks were trained with (a model folder's ``plans.json``).
        dataset_json: the dataset's ``dataset.json`` (labels, channels, file ending).
        section: the plans section (``organdetr`` or ``ccq``).
        networks: one or more networks (ensembled).
        device: where the networks run.
        mirror_axes: test-time mirroring along these preprocessed-array axes (boxes only).
    """

    output = ""

    def __init__(self, plans: dict, dataset_json: dict, section: str, networks: Sequence[torch.nn.Module],
                 device: torch.device, mirror_axes: Sequence[int] = ()):
        self.plans, self.dataset_json, self.section = plans, dataset_json, section
        self.cfg = get_configuration(plans, section)
        self.networks = list(networks)
        self.device = device
        self.mirror_axes = tuple(int(a) for a in mirror_axes)
        self.num_channels = len(dataset_json["channel_names"])
        labels = foreground_labels(dataset_json)
        self.label_values = sorted(labels.values())
        self.label_names = {v: k for k, v in labels.items()}
        self.model_folder: Path | None = None
        self.folds: list[str] = []
        self.members: list[tuple[Path | None, list[str]]] = []   # (model folder, folds) of every folder ensembled
        self.checkpoint = ""
        self._reader = None
        self.output_types: tuple[str, ...] = ("nifti",)  # of autoorgan.inference.dicom_out.OUTPUT_TYPES
        self.backend = "torch"
        self.refine_masks: Path | None = None  # boxes: folder of label maps of the same scans (--refine_with_masks)

    @property
    def reader(self) -> Any:
        if self._reader is None:
            from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
            self._reader = PlansManager(self.plans).image_reader_writer_class()
        return self._reader

    @property
    def done_suffix(self) -> str:
        """The file whose presence marks a finished case (written last)."""
        raise NotImplementedError

    def write_dicom(self, case_id: str, label_map: np.ndarray | None, organs: Organs, geometry: Geometry,
                    out_dir: Path, dicom_dir: Path | None) -> None:
        """The DICOM outputs of :attr:`output_types` (``CASE_seg.dcm``, ``CASE_rtstruct.dcm``) referencing the series
        in ``dicom_dir`` (the case's input series or its ``--dicom_reference`` series)."""
        from autoorgan import __version__
        from autoorgan.inference import dicom_out
        wanted = [t for t in self.output_types if t in dicom_out.DICOM_SUFFIX]
        if not wanted:
            return
        if dicom_dir is None or not dicom_dir.is_dir():
            raise CaseError(f"no DICOM series to reference{f' ({dicom_dir} is not a folder)' if dicom_dir else ''}; "
                            f"--output_type {' '.join(wanted)} needs the series the image was made from")
        files = dicom_out.check_reference(dicom_dir, geometry)
        masks = dicom_out.organ_masks(label_map, organs, geometry.shape, self.label_values)
        colors = dicom_out.organ_colors(self.dataset_json, self.label_names)
        if "dicom_seg" in wanted:
            dicom_out.write_dicom_seg(masks, files, self.label_names, colors, out_dir / f"{case_id}_seg.dcm",
                                      __version__)
        if "rtstruct" in wanted:
            dicom_out.write_rtstruct(masks, dicom_dir, files, self.label_names, colors,
                                     out_dir / f"{case_id}_rtstruct.dcm")

    def predict_preprocessed(self, data: np.ndarray, props: dict) -> tuple[Any, Geometry | None]:
        """Preprocessed ``data [C, n0, n1, n2]`` and its properties -> (prediction in the original image frame,
        the original image's geometry)."""
        raise NotImplementedError

    def predict_arrays(self, data: np.ndarray, props: dict) -> tuple[Any, Geometry | None]:
        """Reader output (``data [C, n0, n1, n2]``, nnU-Net properties) -> :meth:`predict_preprocessed`'s result."""
        from autoorgan.preprocessing.preprocess import preprocess_for_inference
        self.check_resampled_size(data.shape[1:], props["spacing"])
        pre, props = preprocess_for_inference(data, props, self.plans, self.section, self.dataset_json)
        return self.predict_preprocessed(pre, props)

    def check_resampled_size(self, shape: Sequence[int], spacing: Sequence[float]) -> None:
        """CaseError when the scan's header spacing would make resampling absurd (a 500 mm or 0.01 mm voxel): the
        resampled volume would need tens of GB, or shrink to nothing."""
        tf = self.plans["transpose_forward"]
        new = np.asarray(shape, np.float64)[tf] * np.asarray(spacing, np.float64)[tf] / np.asarray(self.cfg["spacing"])
        if new.min() < 2 or float(np.prod(new)) > MAX_RESAMPLED_VOXELS:
            raise CaseError(f"its voxel spacing {[round(float(s), 4) for s in spacing]} mm (array order) would "
                            f"resample its {tuple(int(v) for v in shape)} voxels to {tuple(int(v) for v in new)} at "
                            f"the planned {self.cfg['spacing']} mm; the header's spacing is implausible: fix it")

    def refine_case(self, case_id: str, prediction: Any, geometry: Geometry) -> Any:
        """A case's prediction after refinement by other outputs (boxes: ``--refine_with_masks``); as is here."""
        return prediction

    def write_case(self, case_id: str, prediction: Any, geometry: Geometry, out_dir: Path, image0=None,
                   save_box_masks: bool = False, dicom_dir: Path | None = None) -> dict:
        """Write one case's files (the ``done_suffix`` file last); returns its record."""
        raise NotImplementedError

    @classmethod
    def from_model_folder(cls, model_folder: str | Path | Sequence[str | Path],
                          folds: Sequence[str | int] | None = None, checkpoint: str = "checkpoint_final.pth",
                          device: str | None = None, tta: bool = False, backend: str = "torch") -> Predictor:
        """Load a trained model folder once (what :func:`load_predictor` does; the CLI's path); a list of folders
        is one ensemble (:func:`load_ensemble`, ``autoorgan_predict -tr A B``)."""
        if isinstance(model_folder, (list, tuple)):
            return load_ensemble([Path(f) for f in model_folder], folds, checkpoint, device, tta, backend)
        return load_predictor(Path(model_folder), folds, checkpoint, device, tta, backend)

    def predict(self, image: Any, spacing: Sequence[float] | None = None, origin: Sequence[float] | None = None,
                direction: Sequence[float] | None = None, case_id: str = "image", keep_image: bool = False
                ) -> Prediction:
        """Predict one image, with the CLI's reading, preprocessing and mapping back.

        ``image``: a file path (``.nii.gz``, ``.nrrd``, ``.mha``; a folder = one DICOM series; a list of paths = one
        per channel), a SimpleITK image (or a list, one per channel), or a numpy array ``[n0, n1, n2]`` /
        ``[C, n0, n1, n2]`` in SimpleITK's array order with ``spacing``/``origin``/``direction`` in ITK order.
        Returns a :class:`Prediction` (boxes in the image's voxels and in world mm; the label map for segmentation
        configurations; ``keep_image``: also the first channel as read, for previews). Raises
        :class:`~autoorgan.utils.errors.UserError` (one line) for an unusable image."""
        from autoorgan.inference.inputs import arrays_from_memory
        if isinstance(image, InputCase):
            data, props = read_input_case(image, self.reader, self.num_channels)
        elif isinstance(image, (str, Path)) or (isinstance(image, (list, tuple)) and image
                                                and all(isinstance(f, (str, Path)) for f in image)):
            files = [Path(f) for f in ([image] if isinstance(image, (str, Path)) else image)]
            case = InputCase(case_id, dicom_dir=files[0]) if files[0].is_dir() else InputCase(case_id, files=files)
            if not files[0].exists():
                raise CaseError(f"{files[0]} does not exist")
            data, props = read_input_case(case, self.reader, self.num_channels)
        else:
            data, props = arrays_from_memory(image, self.num_channels, spacing, origin, direction)
        image0 = data[0].copy() if keep_image else None
        prediction, geometry = self.predict_arrays(data, props)
        del data
        return Prediction(case_id, prediction, geometry, self.output, self.label_names, image0)

    def predict_case(self, case: InputCase, out_dir: Path, save_box_masks: bool = False,
                     save_png_file: bool = False, dicom_reference: Path | None = None) -> dict:
        """Read, predict and write one case (through :meth:`predict`); returns its record. Raises CaseError.
        DICOM outputs reference the case's own series, else ``dicom_reference/CASE``."""
        dicom_dir = case.dicom_dir or (Path(dicom_reference) / case.case_id if dicom_reference else None)
        result = self.predict(case, case_id=case.case_id, keep_image=save_png_file)
        raw = self.refine_case(case.case_id, result.raw, result.geometry)
        (out_dir / f"{case.case_id}{self.done_suffix}").unlink(missing_ok=True)  # a rerun: done once all are new
        return self.write_case(case.case_id, raw, result.geometry, out_dir,
                               result.image0 if save_png_file else None, save_box_masks, dicom_dir)


class OrganDETRPredictor(Predictor):
    """Organ boxes (top-1 query per organ) from Organ-DETR networks."""

    output = "boxes"
    done_suffix = "_boxes.json"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.input_shape = tuple(int(v) for v in self.cfg["input_shape"])
        # how the trainer fitted over-size cases (model folders from before the key: per axis, as they trained)
        self.isotropic = self.cfg.get("organdetr", {}).get("fit", "per_axis") == "isotropic"

    def refine_case(self, case_id: str, prediction: Organs, geometry: Geometry) -> Organs:
        """With :attr:`refine_masks`: each box refined by the organ's largest component in ``CASE<file_ending>``
        of that folder near the box (:func:`autoorgan.inference.refine.refine_organs`)."""
        if self.refine_masks is None:
            return prediction
        from autoorgan.inference.refine import margin_voxels, read_refinement_mask, refine_organs
        if geometry is None:
            raise CaseError("the scan's geometry is unknown, so no label map can be matched to it for refinement")
        mask = read_refinement_mask(self.refine_masks, case_id, self.dataset_json["file_ending"], geometry)
        margin = margin_voxels(self.cfg["spacing"], self.plans["transpose_backward"], geometry.spacing)
        return refine_organs(prediction, mask, margin)[0]

    def detect_preprocessed(self, data: np.ndarray) -> Detections:
        """Preprocessed ``data [C, n0, n1, n2]`` -> fused detections (preprocessed frame, classes 0-based)."""
        with eval_mode(self.networks):
            runs = [detect_case(net, data, self.input_shape, self.device, self.mirror_axes, self.isotropic)
                    for net in self.networks]
        return fuse_detections(runs)

    def predict_preprocessed(self, data: np.ndarray, props: dict) -> tuple[Organs, Geometry | None]:
        tb = self.plans["transpose_backward"]
        organs = {self.label_values[k]: (preprocessed_to_original(box, props, data.shape[1:], tb), score)
                  for k, (box, score) in self.detect_preprocessed(data).items()}
        return organs, geometry_from_props(props, tb)

    def write_case(self, case_id: str, prediction: Organs, geometry: Geometry, out_dir: Path, image0=None,
                   save_box_masks: bool = False, dicom_dir: Path | None = None) -> dict:
        record = case_box_record(case_id, prediction, self.label_names, geometry)
        self.write_dicom(case_id, None, prediction, geometry, out_dir, dicom_dir)  # boxes as filled regions
        write_json_atomic(slicer_markups(record), out_dir / f"{case_id}.mrk.json")
        if save_box_masks:
            write_image_atomic(box_label_map(prediction, geometry.shape), geometry,
                               out_dir / f"{case_id}_boxmask.nii.gz")
        if image0 is not None:
            ct = str(self.dataset_json["channel_names"].get("0", "")).strip().lower() == "ct"
            save_png(image0, prediction, self.label_names, geometry, out_dir / f"{case_id}_boxes.png", ct)
        write_json_atomic(record, out_dir / f"{case_id}{self.done_suffix}")  # last: marks the case as done
        return record


@dataclass
class Prediction:
    """One image's prediction in its own frame (what :meth:`Predictor.predict` returns).

    Attributes:
        case_id: the name given (file outputs use it).
        raw: the predictor's own result (organ boxes ``{label: (box [6] voxels, score)}``, or a :class:`Segmentation`).
        geometry: the input image's grid (shape in array order; spacing, origin, direction in ITK order).
        output: ``boxes`` (organdetr) or ``masks`` (segmentation configurations).
    """

    case_id: str
    raw: Any
    geometry: Geometry
    output: str
    label_names: dict[int, str]
    image0: np.ndarray | None = field(default=None, repr=False)  # first channel as read (previews)

    @property
    def organs(self) -> Organs:
        """``{label value: (box [lo0, lo1, lo2, hi0, hi1, hi2] in the input array's voxels, score)}``."""
        return self.raw.organs if isinstance(self.raw, Segmentation) else self.raw

    @property
    def record(self) -> dict:
        """The ``CASE_boxes.json`` content: per organ ``box_voxel`` and ``world`` (LPS mm corners, centre, size)."""
        return case_box_record(self.case_id, self.organs, self.label_names, self.geometry)

    @property
    def boxes(self) -> list[dict]:
        """The organs of :attr:`record` (name, label, score, box_voxel, world)."""
        return self.record["organs"]

    @property
    def label_map(self) -> np.ndarray | None:
        """Label map ``[n0, n1, n2]`` on the input grid (segmentation configurations), else None."""
        return self.raw.labels if isinstance(self.raw, Segmentation) else None

    def label_image(self) -> Any:
        """:attr:`label_map` as a SimpleITK image with the input's geometry (None for box models)."""
        from autoorgan.inference.outputs import to_sitk
        return None if self.label_map is None else to_sitk(self.label_map, self.geometry)


@dataclass
class Segmentation:
    """A segmentation prediction in the original image frame: the label map ``[n0, n1, n2]`` and, per organ
    present, the box of its largest connected component with the mean probability there
    (:mod:`autoorgan.inference.mask_boxes`)."""

    labels: np.ndarray
    organs: Organs


def raw_body_box(bbox_used_for_cropping: Sequence[Sequence[int]], transpose_backward: Sequence[int]) -> list[int]:
    """The body box (preprocessing's crop, ``[[lo, hi]] x 3`` in the transposed array frame) as ``[lo0, lo1, lo2,
    hi0, hi1, hi2]`` voxels in the raw image's array frame (axis ``j`` of the raw array is axis
    ``transpose_backward[j]`` of the transposed one)."""
    return [int(bbox_used_for_cropping[b][0]) for b in transpose_backward] + \
        [int(bbox_used_for_cropping[b][1]) for b in transpose_backward]


class SegmentationPredictor(Predictor):
    """Label maps (``CASE<file_ending>`` on the input image's grid) from ccq or dodnet networks: sliding window over
    the preprocessed scan, per-class probabilities averaged over networks and resampled to the scan's spacing
    (nnU-Net's probability resampling, one class at a time), classes combined (highest probability above the plans'
    threshold), un-cropped and un-transposed. Every organ also gets a box (``CASE_boxes.json``, Slicer markups): its
    largest component's, scored by the mean probability over it, so segmentation models are detectors scored like
    Organ-DETR."""

    output = "masks"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.mirror_axes:
            raise UserError("test-time mirroring is for boxes (organdetr) only")
        self.threshold = float(self.cfg.get("ccq", {}).get("combine_threshold", 0.5))
        for net in self.networks:  # the layout of the sliding window's tiles (in place; a no-op when it is already)
            net.to(memory_format=conv_memory_format(self.device))
        self.patch_size = [int(p) for p in self.cfg["patch_size"]]
        # the trainer's choice (model folder plans; masked_sigmoid's CPU recipe: located); --components overrides it
        self.components = str(self.cfg.get("components", "largest" if self.cfg.get("keep_largest_component")
                                           else "all"))   # model folders from before 'components' had a bool
        self.organ_locations = dict(self.cfg.get("organ_locations", {}))
        # --tta: one more pass mirrored along the patient's left-right axis, left/right labels swapped
        self.lateral_tta = False
        self.lateral_pairs = configured_pairs(self.cfg, foreground_labels(self.dataset_json))
        from autoorgan.inference.mask_boxes import COMPONENT_RULES
        if self.components not in COMPONENT_RULES:
            raise UserError(f"the model's plans ask for components {self.components!r}, which this version does not "
                            f"know ({', '.join(COMPONENT_RULES)}); predict with --components RULE or retrain")

    @property
    def done_suffix(self) -> str:
        if "nifti" in self.output_types or not self.output_types:
            return self.dataset_json["file_ending"]
        return "_rtstruct.dcm" if "rtstruct" in self.output_types else "_seg.dcm"

    def predict_preprocessed(self, data: np.ndarray, props: dict) -> tuple[Segmentation, Geometry | None]:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        from autoorgan.inference.mask_boxes import boxes_from_label_map, component_scores, reduce_components
        from autoorgan.inference.segment import combine_classes, combine_resampled
        from autoorgan.inference.sliding import sliding_window_probs
        def ensemble_probs(image: np.ndarray) -> torch.Tensor:   # [K, n0, n1, n2], mean over the networks
            return sum(sliding_window_probs(net, image, self.patch_size, self.device, len(self.label_values))
                       for net in self.networks) / len(self.networks)

        with eval_mode(self.networks):
            probs = ensemble_probs(data)
            geometry = geometry_from_props(props, self.plans["transpose_backward"])
            axis = case_lateral_axis(self.cfg.get("lateral_axis"),   # plans from before it: no mirroring
                                     geometry.direction if geometry is not None else None,
                                     self.plans["transpose_forward"]) if self.lateral_tta else None
            if axis is not None:   # the mirrored scan's probabilities, flipped back, each left/right pair swapped
                back = ensemble_probs(np.ascontiguousarray(np.flip(np.asarray(data), axis + 1)))
                probs = (probs + back.flip(axis + 1)[swap_order(self.label_values, self.lateral_pairs)]) / 2
        labels = combine_classes(probs, self.label_values, self.threshold)[None]
        crop_shape = [int(s) for s in props["shape_after_cropping_and_before_resampling"]]
        spacing = [props["spacing"][i] for i in self.plans["transpose_forward"]]
        # as nnU-Net: the probabilities go back to the scan's grid, then become labels (not the label map)
        resample = PlansManager(self.plans).get_configuration(self.section).resampling_fn_probabilities
        back = combine_resampled(probs, self.label_values, self.threshold,
                                 lambda p: resample(p, crop_shape, self.cfg["spacing"], spacing))
        full = np.zeros([int(s) for s in props["shape_before_cropping"]], labels.dtype)
        full[tuple(slice(lo, hi) for lo, hi in props["bbox_used_for_cropping"])] = back
        backward = self.plans["transpose_backward"]
        full = full.transpose(backward)
        if self.components != "all":   # in the raw image's array frame, where the trainer measured the locations
            full = reduce_components(full, self.label_values, self.components,
                                     raw_body_box(props["bbox_used_for_cropping"], backward), props["spacing"],
                                     self.organ_locations)
        scores = component_scores(labels[0], probs, self.label_values)
        organs = {lab: (np.asarray(box, np.float64), scores.get(lab, 0.0))
                  for lab, box in boxes_from_label_map(full, self.label_values).items()}
        return Segmentation(full, organs), geometry

    def write_case(self, case_id: str, prediction: Segmentation, geometry: Geometry, out_dir: Path, image0=None,
                   save_box_masks: bool = False, dicom_dir: Path | None = None) -> dict:
        if save_box_masks or image0 is not None:
            raise UserError("--save_box_masks and --save_png are for boxes (organdetr) only")
        record = case_box_record(case_id, prediction.organs, self.label_names, geometry)
        write_json_atomic(slicer_markups(record), out_dir / f"{case_id}.mrk.json")
        write_json_atomic(record, out_dir / f"{case_id}_boxes.json")
        self.write_dicom(case_id, prediction.labels, prediction.organs, geometry, out_dir, dicom_dir)
        if "nifti" in self.output_types:
            write_image_atomic(prediction.labels, geometry, out_dir / f"{case_id}{self.done_suffix}")  # last: done
        return {"case_id": case_id, "labels_present": sorted(prediction.organs)}


PREDICTOR_CLASSES = {"boxes": OrganDETRPredictor, "masks": SegmentationPredictor}


def load_predictor(model_folder: Path, folds: Sequence[str | int] | None = None,
                   checkpoint: str = "checkpoint_final.pth", device: str | None = None, tta: bool = False,
                   backend: str = "torch") -> Predictor:
    """The predictor of a trained model folder with the given folds (default: every fold with ``checkpoint``);
    ``backend="onnx"`` runs each fold's exported ``network.onnx`` in onnxruntime instead (same pre/post-processing)."""
    from autoorgan.configurations import configurations_of_section
    model_folder = Path(model_folder)
    for f in ("plans.json", "dataset.json"):
        if not (model_folder / f).is_file():
            raise UserError(f"{model_folder} is not a trained model folder (no {f}); train one with "
                            "autoorgan_train DATASET CONFIGURATION FOLD")
    if checkpoint not in CHECKPOINTS:
        raise UserError(f"unknown checkpoint {checkpoint!r}; choose {', '.join(CHECKPOINTS)}")
    section = model_folder.name.split("__")[-1]
    if section not in PLANS_SECTIONS:
        raise UserError(f"{model_folder.name} is not named <Trainer>__<Plans>__<{'|'.join(PLANS_SECTIONS)}>; is it "
                        "a model folder made by autoorgan_train?")
    plans = read_plans(model_folder / "plans.json")
    dataset_json = read_model_dataset_json(model_folder / "dataset.json")
    have = available_folds(model_folder, checkpoint)
    chosen = [str(f) for f in folds] if folds else have
    missing = [f for f in chosen if f not in have]
    if missing or not chosen:
        raise UserError(f"no {checkpoint} for fold(s) {', '.join(missing) or '(any)'} in {model_folder} "
                        f"(available: {', '.join(have) or 'none'}); finish training first or choose "
                        f"-f {' '.join(have) or 'FOLD'}")
    dev = select_device(device)
    kind = PREDICTOR_CLASSES[configurations_of_section(section)[0].output]
    networks: list[torch.nn.Module] = []
    if backend == "onnx":
        from autoorgan.inference.onnx_backend import onnx_networks
        networks = onnx_networks(model_folder, chosen, kind.output == "boxes", len(foreground_labels(dataset_json)),
                                 dev)
    elif backend != "torch":
        raise UserError(f"unknown backend {backend!r}; choose torch or onnx")
    for fold in chosen if backend == "torch" else []:
        path = model_folder / f"fold_{fold}" / checkpoint
        state = load_checkpoint(path, "is the file complete, and was it written by autoorgan_train?")["network"]
        net = build_network(plans, section, dataset_json)
        load_network_state(net, state, path, "retrain, or predict with the version that trained it")
        networks.append(net.to(dev).eval())
    cfg = get_configuration(plans, section)
    mirror = tuple(int(a) for a in cfg.get("mirror_axes", ())) if tta and kind.output == "boxes" else ()
    predictor = kind(plans, dataset_json, section, networks, dev, mirror)
    if isinstance(predictor, SegmentationPredictor):
        predictor.lateral_tta = tta
    predictor.model_folder, predictor.folds, predictor.checkpoint = model_folder, chosen, checkpoint
    predictor.members = [(model_folder, list(chosen))]
    predictor.backend = backend
    return predictor


def _prediction_inputs(predictor: Predictor) -> dict:
    """What preprocessing, fusing and writing a case use from a model folder's plans and dataset.json: every
    network of an ensemble must have been trained on these same values."""
    cfg, plans = predictor.cfg, predictor.plans
    keys = ("spacing", "input_shape", "patch_size", "normalization_schemes", "use_mask_for_norm", "resampling_fn_data",
            "resampling_fn_data_kwargs", "resampling_fn_probabilities", "resampling_fn_probabilities_kwargs",
            "mirror_axes", "lateral_axis", "lateral_pairs")
    out = {f"plans' {k}": cfg.get(k) for k in keys}
    out["plans' organdetr.fit"] = cfg.get("organdetr", {}).get("fit")
    out["plans' ccq.combine_threshold"] = cfg.get("ccq", {}).get("combine_threshold")
    out["plans' transpose_forward"] = plans.get("transpose_forward")
    out["plans' foreground intensity properties"] = plans.get("foreground_intensity_properties_per_channel")
    for k in ("labels", "channel_names", "file_ending"):
        out[f"dataset.json's {k}"] = predictor.dataset_json.get(k)
    out["configuration"] = predictor.section
    return json.loads(json.dumps(out))   # tuples and lists compare alike


def load_ensemble(model_folders: Sequence[Path], folds: Sequence[str | int] | None = None,
                  checkpoint: str = "checkpoint_final.pth", device: str | None = None, tta: bool = False,
                  backend: str = "torch") -> Predictor:
    """One predictor that averages the networks of several model folders (e.g. the same fold trained with two seeds
    side by side), exactly as the folds of one folder are averaged; ``folds`` applies to each folder. The first
    folder's plans and dataset.json drive preprocessing and outputs (and, for label maps, its ``organ_locations``
    and ``components``), so the others must agree on everything :func:`_prediction_inputs` lists: otherwise a
    one-line UserError names the first difference."""
    if not model_folders:
        raise UserError("no model folder given")
    predictors = [load_predictor(Path(f), folds, checkpoint, device, tta, backend) for f in model_folders]
    first = predictors[0]
    want = _prediction_inputs(first)
    for other in predictors[1:]:
        got = _prediction_inputs(other)
        diff = next((k for k in want if want[k] != got[k]), None)
        if diff is not None:
            raise UserError(f"cannot ensemble {other.model_folder} with {first.model_folder}: their {diff} differ "
                            "(an ensemble needs models trained on the same plans and dataset); predict them "
                            "separately")
        first.networks += other.networks
    first.members = [(p.model_folder, list(p.folds)) for p in predictors]
    return first


@dataclass
class FolderResult:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def predict_folder(predictor: Predictor, input_folder: Path, output_folder: Path,
                   continue_prediction: bool = False, save_box_masks: bool = False, save_png_file: bool = False,
                   progress: bool = True, output_types: Sequence[str] = ("nifti",),
                   dicom_reference: Path | None = None) -> FolderResult:
    """Predict every case of ``input_folder`` into ``output_folder``. A case that fails (unreadable, damaged,
    implausible, out of memory, or any unexpected error) is reported and skipped; the others go on, and
    ``prediction_info.json`` lists every failure with its reason even when the run is interrupted.
    ``output_types``: of ``nifti`` (label maps), ``dicom_seg``, ``rtstruct``; the DICOM ones reference each case's
    input series, or ``dicom_reference/CASE/`` for cases given as image files."""
    from autoorgan.inference.dicom_out import DICOM_SUFFIX, OUTPUT_TYPES
    from autoorgan.utils.locks import folder_lock
    input_folder, output_folder = Path(input_folder), Path(output_folder)
    if output_folder.resolve() == input_folder.resolve():
        raise UserError("the output folder must differ from the input folder")
    if predictor.output != "boxes" and (save_box_masks or save_png_file):
        raise UserError("--save_box_masks and --save_png are for boxes (organdetr) only")
    if unknown := sorted(set(output_types) - set(OUTPUT_TYPES)):
        raise UserError(f"unknown output type(s) {', '.join(unknown)}; choose from {', '.join(OUTPUT_TYPES)}")
    predictor.output_types = tuple(output_types)
    cases, notes = find_input_cases(input_folder, predictor.num_channels)
    dicom_types = [t for t in output_types if t in DICOM_SUFFIX]
    if dicom_reference is not None and not Path(dicom_reference).is_dir():
        raise UserError(f"--dicom_reference {dicom_reference} is not a folder (it holds one series folder per case)")
    if dicom_types and dicom_reference is None and (files := [c.case_id for c in cases if c.dicom_dir is None]):
        raise UserError(f"--output_type {' '.join(dicom_types)} references the DICOM series each scan came from, but "
                        f"{len(files)} case(s) ({', '.join(files[:3])}{', ...' if len(files) > 3 else ''}) are image "
                        "files: give DICOM series folders as input, or their series with --dicom_reference REF "
                        "(REF/CASE/)")
    with folder_lock(output_folder, "prediction"):
        for stale in output_folder.glob(".*.tmp*"):  # left by a kill while writing (nobody else writes here now)
            stale.unlink(missing_ok=True)
        for note in notes:
            print(f"autoorgan: {note}", file=sys.stderr)
        result = FolderResult()
        t0 = time.time()
        try:
            bar = tqdm(cases, unit="case", desc="Predicting", disable=not progress)
            for case in bar:
                if continue_prediction and (output_folder / f"{case.case_id}{predictor.done_suffix}").is_file():
                    result.skipped.append(case.case_id)
                    continue
                bar.set_postfix_str(case.case_id)
                reason = _predict_one(predictor, case, output_folder, save_box_masks, save_png_file,
                                      dicom_reference)
                if reason is None:
                    result.done.append(case.case_id)
                else:
                    result.failed[case.case_id] = reason
                    tqdm.write(f"autoorgan: case {case.case_id} failed: {reason}", file=sys.stderr)
            bar.close()
        finally:
            result.seconds = time.time() - t0
            info = {"model_folder": str(predictor.model_folder), "folds": predictor.folds,
                    "ensemble": [{"model_folder": str(f), "folds": k} for f, k in predictor.members],
                    "backend": predictor.backend,
                    "checkpoint": predictor.checkpoint, "mirror_axes": list(predictor.mirror_axes),
                    "lateral_tta": getattr(predictor, "lateral_tta", False),
                    "device": str(predictor.device), "input_folder": str(input_folder), "failed": result.failed,
                    "output_types": list(output_types),
                    "refine_with_masks": str(predictor.refine_masks) if predictor.refine_masks else None,
                    "components": getattr(predictor, "components", None),
                    "done": len(result.done) + len(result.skipped), "configuration": predictor.section,
                    "box_convention": "docs/conventions.md; CASE_boxes.json box_voxel is in the input image's array "
                                      "order"}
            write_json_atomic(info, output_folder / "prediction_info.json")
    return result


def _predict_one(predictor: Predictor, case: InputCase, out_dir: Path, save_box_masks: bool,
                 save_png_file: bool, dicom_reference: Path | None = None) -> str | None:
    """Predict one case; None when done, else the one-line reason it failed (it never stops the batch)."""
    from autoorgan.utils.errors import os_error_message
    try:
        predictor.predict_case(case, out_dir, save_box_masks, save_png_file, dicom_reference)
        return None
    except CaseError as err:
        return str(err)
    except MemoryError:
        return "ran out of memory (is the scan's header spacing or size implausible?)"
    except OSError as err:
        return os_error_message(err)
    except Exception as err:  # noqa: BLE001 - one case's unexpected failure must not sink the batch
        text = str(err).strip().splitlines()
        return f"unexpected {type(err).__name__}: {text[0] if text else ''} (please report it)"
    finally:
        for stale in out_dir.glob(f".{glob.escape(case.case_id)}*.tmp*"):  # nothing half-written stays behind
            stale.unlink(missing_ok=True)
