"""Preprocessing: transpose -> body crop -> normalize -> resample, stored as nnU-Net's blosc2 case files.

Per case ``$autoorgan_preprocessed/DatasetXXX/<data_identifier>/CASE.b2nd`` (image ``[C, n0, n1, n2]`` float32),
``CASE_seg.b2nd`` (label map ``[1, n0, n1, n2]``) and ``CASE.pkl`` (nnU-Net's properties plus ours), readable by
nnunetv2's ``nnUNetDatasetBlosc2``. Our additions to the properties (key ``autoorgan``):

* ``boxes``: ``{label: [lo0, lo1, lo2, hi0, hi1, hi2]}`` tight voxel box of every annotated organ present, in the
  preprocessed array (transposed axes, target spacing; edge convention of autoorgan.boxes);
* ``annotated_labels``: label values annotated in this case (partial annotation; others are unknown);
* ``present_labels``: annotated labels that occur in the case.

nnU-Net's steps are reused (reader, normalization classes, resampling functions, foreground-location sampling,
blosc2 storage). The crop is ours: a body mask instead of nnU-Net's nonzero mask, which does nothing on CT.

Resumable: each case is written under temporary names and renamed, the ``.pkl`` last, so a case counts as done
only when complete; rerunning after an interruption redoes only unfinished cases. A change of the plans that
affects the data (spacing, normalization, transpose) starts the folder afresh.
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Mapping

import numpy as np
from tqdm import tqdm

from autoorgan.boxes import boxes_from_label_map
from autoorgan.dataset.raw import RawCase, annotated_labels, foreground_labels
from autoorgan.planning.fingerprint import body_mask, is_ct_channel, mask_bbox
from autoorgan.utils.errors import UserError
from autoorgan.utils.fileio import atomic_output, load_json, to_jsonable, write_json_atomic

STAMP_NAME = "autoorgan_preprocessing.json"


def _managers(plans: dict, configuration: str):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    pm = PlansManager(plans)
    return pm, pm.get_configuration(configuration)


def preprocess_case_arrays(data: np.ndarray, seg: np.ndarray | None, properties: dict, plans: dict,
                           configuration: str, dataset_json: Mapping, case_id: str) -> tuple[np.ndarray, np.ndarray,
                                                                                               dict]:
    """Preprocess one case given as arrays (``data [C, n0, n1, n2]``, ``seg [1, n0, n1, n2]`` or None, nnU-Net
    reader properties). Returns ``(data float32, seg int8/int16 [1, ...], properties)``."""
    pm, cm = _managers(plans, configuration)
    return _preprocess(data, seg, properties, pm, cm, dataset_json, case_id)


def preprocess_for_inference(data: np.ndarray, properties: dict, plans: dict, configuration: str,
                             dataset_json: Mapping) -> tuple[np.ndarray, dict]:
    """The image half of :func:`preprocess_case_arrays` for prediction: no label map is made or resampled, and
    ``data`` (float32 ``[C, n0, n1, n2]`` from a reader) is normalized in place to keep memory near one copy of the
    scan. Returns ``(preprocessed data [C, ...] float32, properties)`` with the crop/shape keys the export needs."""
    pm, cm = _managers(plans, configuration)
    out, _, props = _preprocess(data, None, properties, pm, cm, dataset_json, "", inference=True)
    return out, props


def _preprocess(data, seg, properties, pm, cm, dataset_json: Mapping, case_id: str, inference: bool = False):
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    from autoorgan.preprocessing.resampling import resample_image

    tf = pm.transpose_forward
    data = data.astype(np.float32, copy=not inference).transpose([0, *[i + 1 for i in tf]])
    if not inference:
        seg = np.zeros((1, *data.shape[1:]), np.int16) if seg is None else \
            np.asarray(seg).astype(np.int16).transpose([0, *[i + 1 for i in tf]])
    spacing = [properties["spacing"][i] for i in tf]
    properties["shape_before_cropping"] = data.shape[1:]
    ct = [int(c) for c, n in dataset_json["channel_names"].items() if is_ct_channel(n)]
    mask = body_mask(data, ct)
    box = mask_bbox(mask)
    slicer = tuple(slice(lo, hi) for lo, hi in zip(box[:3], box[3:]))
    data, mask = data[(slice(None), *slicer)], mask[slicer]
    properties["bbox_used_for_cropping"] = [[lo, hi] for lo, hi in zip(box[:3], box[3:])]
    properties["shape_after_cropping_and_before_resampling"] = data.shape[1:]
    # normalization (nnU-Net's classes); 'use_mask_for_norm' sees -1 outside the body as nnU-Net's crop would set
    if inference:
        norm_seg = np.where(mask, 0, -1).astype(np.int8)[None]
    else:
        exact_before_crop = boxes_from_label_map(seg[0], labels=annotated_labels(dataset_json, case_id))
        seg = seg[(slice(None), *slicer)]
        norm_seg = np.where(mask[None], seg, -1).astype(np.int16)
    del mask
    pre = DefaultPreprocessor(verbose=False)
    data = pre._normalize(data, norm_seg, cm, pm.foreground_intensity_properties_per_channel)
    del norm_seg
    target = cm.spacing
    new_shape = compute_new_shape(data.shape[1:], spacing, target)
    data = resample_image(data, new_shape, spacing, target, cm.configuration["resampling_fn_data"],
                          cm.configuration["resampling_fn_data_kwargs"], cm.resampling_fn_data)
    if inference:
        return data, None, properties
    seg = cm.resampling_fn_seg(seg, new_shape, spacing, target)
    annotated = annotated_labels(dataset_json, case_id)
    labels = sorted(foreground_labels(dataset_json).values())
    properties["class_locations"] = pre._sample_foreground_locations(seg, labels, verbose=False)
    boxes = boxes_from_label_map(seg[0], labels=annotated)
    # the original label map's boxes carried exactly (continuously) through crop and resampling: no quantisation,
    # and organs too thin to survive resampling keep their box
    scale = np.asarray(new_shape, np.float64) / np.asarray(properties["shape_after_cropping_and_before_resampling"])
    lo = np.tile(np.asarray(box[:3], np.float64), 2)
    exact = {k: ((np.asarray(v, np.float64) - lo) * np.tile(scale, 2)).round(4).tolist()
             for k, v in exact_before_crop.items()}
    vanished = sorted(set(exact) - set(boxes))
    if vanished:
        print(f"autoorgan: warning: case {case_id}: annotated label(s) {vanished} vanish when the label map is "
              f"resampled to {[round(float(t), 3) for t in target]} mm (too thin); their boxes are kept (boxes_exact)",
              file=sys.stderr)
    properties["autoorgan"] = {"case_id": case_id, "annotated_labels": annotated,
                               "present_labels": sorted(boxes), "boxes": boxes, "boxes_exact": exact,
                               "vanished_labels": vanished,
                               "spacing_after_resampling": [float(s) for s in target],
                               "box_convention": "array axes after transpose_forward, voxels, edge convention "
                                                 "[lo0,lo1,lo2,hi0,hi1,hi2] (docs/conventions.md)"}
    seg = seg.astype(np.int16 if seg.max(initial=0) > 127 else np.int8)
    return data.astype(np.float32, copy=False), seg, properties


def case_done(out_dir: Path, case_id: str) -> bool:
    return all((out_dir / f"{case_id}{s}").is_file() for s in (".b2nd", "_seg.b2nd", ".pkl"))


def preprocess_case_to_disk(case: RawCase, plans: dict, configuration: str, dataset_json: Mapping,
                            out_dir: Path) -> str:
    """Read, preprocess and store one case atomically. Returns the case id."""
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
    pm, cm = _managers(plans, configuration)
    rw = pm.image_reader_writer_class()
    data, props = rw.read_images([str(p) for p in case.images])
    seg = rw.read_seg(str(case.label))[0] if case.label is not None else None
    data, seg, props = _preprocess(data, seg, props, pm, cm, dataset_json, case.case_id)
    tmp_dir = out_dir / f".tmp_{case.case_id}_{os.getpid()}"
    tmp_dir.mkdir(exist_ok=True)
    try:
        patch = tuple(cm.patch_size)
        blocks, chunks = comp_blosc2_params(data.shape, patch, data.itemsize)
        blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, patch, seg.itemsize)
        try:
            nnUNetDatasetBlosc2.save_case(data, seg, props, str(tmp_dir / case.case_id), chunks=chunks,
                                          blocks=blocks, chunks_seg=chunks_seg, blocks_seg=blocks_seg)
        except RuntimeError as err:  # blosc2 reports a full disk or a read-only folder this way
            raise UserError(f"cannot write the preprocessed case {case.case_id} into {out_dir} "
                            f"({str(err).strip().splitlines()[0] if str(err).strip() else 'write failed'}); is the "
                            "disk full or the folder read-only?") from None
        for suffix in (".b2nd", "_seg.b2nd", ".pkl"):  # the .pkl last: it marks the case as complete
            os.replace(tmp_dir / f"{case.case_id}{suffix}", out_dir / f"{case.case_id}{suffix}")
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return case.case_id


def _job(args):
    return preprocess_case_to_disk(*args)


def preprocessing_stamp(plans: dict, configuration: str) -> dict:
    """What the stored data depends on; a mismatch with an existing folder's stamp restarts it."""
    cfg = plans["configurations"][configuration]
    keys = ("spacing", "normalization_schemes", "use_mask_for_norm", "resampling_fn_data",
            "resampling_fn_data_kwargs", "resampling_fn_seg", "resampling_fn_seg_kwargs")
    return {"format": 2,  # 2: properties hold boxes_exact (older folders are preprocessed again)
            "data_identifier": cfg["data_identifier"], "transpose_forward": plans["transpose_forward"],
            "foreground_intensity_properties_per_channel": plans["foreground_intensity_properties_per_channel"],
            **{k: cfg[k] for k in keys}}


def preprocess(cases: Mapping[str, RawCase], plans: dict, configuration: str, dataset_json: Mapping,
               preprocessed_dataset_folder: Path, num_processes: int = 2, progress: bool = True) -> Path:
    """Preprocess all ``cases`` for one configuration (skipping finished ones). Returns the output folder."""
    cfg = plans["configurations"][configuration]
    out_dir = Path(preprocessed_dataset_folder) / cfg["data_identifier"]
    stamp = preprocessing_stamp(plans, configuration)
    stamp_file = out_dir / STAMP_NAME
    if out_dir.is_dir() and (not stamp_file.is_file() or
                             load_json(stamp_file) != to_jsonable(stamp)):
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not stamp_file.is_file():
        write_json_atomic(stamp, stamp_file)
    todo = [c for cid, c in sorted(cases.items()) if not case_done(out_dir, cid)]
    bar = tqdm(total=len(cases), initial=len(cases) - len(todo), unit="case", disable=not progress,
               desc=f"Preprocessing {cfg['data_identifier']}")
    jobs = [(c, plans, configuration, dict(dataset_json), out_dir) for c in todo]
    if num_processes <= 1 or len(jobs) <= 1:
        for job in jobs:
            _job(job)
            bar.update()
    else:
        with ProcessPoolExecutor(num_processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            for _ in pool.map(_job, jobs, chunksize=1):
                bar.update()
    bar.close()
    copy_reference_label_maps(cases, dataset_json, preprocessed_dataset_folder)
    return out_dir


def copy_reference_label_maps(cases: Mapping[str, RawCase], dataset_json: Mapping,
                              preprocessed_dataset_folder: Path) -> Path:
    """The raw label maps, copied to ``gt_segmentations/CASE<file_ending>`` (nnU-Net's folder): what validation
    scores against, in the original image frame. A copy is refreshed when the raw file changed size or time."""
    gt = Path(preprocessed_dataset_folder) / "gt_segmentations"
    gt.mkdir(parents=True, exist_ok=True)
    for cid, case in cases.items():
        if case.label is None:
            continue
        dst = gt / f"{cid}{dataset_json['file_ending']}"
        src = Path(case.label).stat()
        if dst.is_file() and dst.stat().st_size == src.st_size and dst.stat().st_mtime_ns == src.st_mtime_ns:
            continue
        with atomic_output(dst) as tmp:
            shutil.copy2(case.label, tmp)
    return gt
