"""COCO-style 3D detection metrics for organs, with at most one detection and one reference box per organ per case.

Per organ class and IoU threshold ``t``: detections of all cases that annotate the class are sorted by score; a
detection is a true positive when its 3D IoU with the case's reference box of that class is ``>= t`` (one reference
per class per case, so no duplicate bookkeeping is needed). AP uses COCO's 101-point interpolated precision
(precision made monotone, sampled at recall 0, 0.01, ..., 1); recall is true positives / references. Cases that do
not annotate a class (partial annotation) are left out for that class: neither their detections nor their
(missing) references count. A class with no reference anywhere has AP = NaN and is skipped in the means, as COCO
does.

Reported: ``mAP`` (IoU 0.50:0.05:0.95), ``mAR`` (same thresholds), ``AP10``, ``AP50``, ``AP75``, ``mAP_10_50``
(nnDetection's IoU 0.10:0.05:0.50) and per-class AP/recall.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autoorgan.boxes import box_iou

COCO_IOUS = np.round(np.arange(0.5, 0.951, 0.05), 2)
NNDET_IOUS = np.round(np.arange(0.1, 0.501, 0.05), 2)
RECALL_POINTS = np.linspace(0, 1, 101)


@dataclass
class CaseDetections:
    """One case: reference boxes ``{class: [6]}``, predictions ``{class: ([6], score)}`` (voxel boxes, same frame),
    and the annotated classes (None = all)."""

    reference: dict[int, np.ndarray]
    predicted: dict[int, tuple[np.ndarray, float]]
    annotated: set[int] | None = None
    case_id: str = ""


def average_precision(scores: np.ndarray, is_tp: np.ndarray, num_reference: int) -> tuple[float, float]:
    """COCO 101-point AP and recall of one class at one threshold."""
    if num_reference == 0:
        return float("nan"), float("nan")
    if len(scores) == 0:
        return 0.0, 0.0
    order = np.argsort(-scores, kind="mergesort")
    tp = np.cumsum(is_tp[order])
    fp = np.cumsum(~is_tp[order])
    recall = tp / num_reference
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
    return float(sampled.mean()), float(recall[-1])


def class_ious(cases: list[CaseDetections], cls: int) -> tuple[np.ndarray, np.ndarray, int]:
    """For one class: (scores, IoU with the reference or 0, number of references) over cases annotating it."""
    scores, ious, n_ref = [], [], 0
    for case in cases:
        if case.annotated is not None and cls not in case.annotated:
            continue
        ref = case.reference.get(cls)
        n_ref += ref is not None
        if cls in case.predicted:
            box, score = case.predicted[cls]
            scores.append(score)
            ious.append(float(box_iou(np.asarray(box)[None], np.asarray(ref)[None])[0, 0]) if ref is not None else 0.)
    return np.asarray(scores, np.float64), np.asarray(ious, np.float64), n_ref


def mean_iou(cases: list[CaseDetections], cls: int) -> float:
    """Mean IoU of the predicted box with the reference over the cases that annotate ``cls`` and hold it (a missing
    prediction counts 0); NaN when no case holds it."""
    values = []
    for case in cases:
        ref = case.reference.get(cls)
        if ref is None or (case.annotated is not None and cls not in case.annotated):
            continue
        pred = case.predicted.get(cls)
        values.append(float(box_iou(np.asarray(pred[0])[None], np.asarray(ref)[None])[0, 0]) if pred else 0.0)
    return float(np.mean(values)) if values else float("nan")


def detection_metrics(cases: list[CaseDetections], classes: dict[int, str]) -> dict:
    """Metrics over ``cases`` for ``classes`` ``{class id: name}``; see the module docstring."""
    thresholds = np.unique(np.concatenate([COCO_IOUS, NNDET_IOUS]))  # includes 0.1
    ap = np.full((len(classes), len(thresholds)), np.nan)
    rec = np.full_like(ap, np.nan)
    n_refs = {}
    for ci, cls in enumerate(classes):
        scores, ious, n_ref = class_ious(cases, cls)
        n_refs[cls] = n_ref
        for ti, t in enumerate(thresholds):
            ap[ci, ti], rec[ci, ti] = average_precision(scores, ious >= t - 1e-9, n_ref)

    def cols(ts):
        return [int(np.argmin(np.abs(thresholds - t))) for t in ts]

    def mean(a):
        return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")

    coco, nndet = cols(COCO_IOUS), cols(NNDET_IOUS)
    out = {"mAP": mean(ap[:, coco]), "mAR": mean(rec[:, coco]), "AP10": mean(ap[:, cols([0.1])]),
           "AP50": mean(ap[:, cols([0.5])]), "AP75": mean(ap[:, cols([0.75])]), "mAP_10_50": mean(ap[:, nndet]),
           "per_class": {}}
    for ci, (cls, name) in enumerate(classes.items()):
        out["per_class"][name] = {"label": cls, "AP": mean(ap[ci, coco]), "AR": mean(rec[ci, coco]),
                                  "AP50": mean(ap[ci, cols([0.5])]), "AP75": mean(ap[ci, cols([0.75])]),
                                  "mean_IoU": mean_iou(cases, cls), "num_reference": n_refs[cls]}
    out["mean_IoU"] = mean(np.asarray([v["mean_IoU"] for v in out["per_class"].values()], np.float64))
    out["num_cases"] = len(cases)
    return out
