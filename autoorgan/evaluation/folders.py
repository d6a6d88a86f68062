"""Evaluate a prediction folder against a reference folder (what ``autoorgan_evaluate`` runs).

Reference folder: per case a label map ``CASE<file_ending>`` (as ``labelsTr``/``labelsTs``) or a box file
``CASE_boxes.json``. Prediction folder: ``CASE_boxes.json`` (boxes, from ``autoorgan_predict``) and/or label maps
``CASE<file_ending>`` (masks). Every predicted case needs a reference; reference cases without a prediction are
listed and left out. Boxes are compared in the original image's voxel frame (3D IoU does not depend on spacing);
centre distances are in mm. Organs a case does not annotate (dataset.json's partial-annotation key) are excluded
for that case, not counted as misses.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from autoorgan.boxes import Geometry, boxes_from_label_map
from autoorgan.dataset.raw import annotated_labels, foreground_labels
from autoorgan.evaluation.detection import CaseDetections, detection_metrics
from autoorgan.evaluation.segmentation import case_mask_metrics, summarize_masks
from autoorgan.utils.errors import UserError
from autoorgan.utils.fileio import load_json

BOX_SUFFIX = "_boxes.json"


@dataclass
class Pairing:
    box_cases: list[str] = field(default_factory=list)
    mask_cases: list[str] = field(default_factory=list)
    unpredicted: list[str] = field(default_factory=list)


def _ids(folder: Path, ending: str) -> tuple[set[str], set[str]]:
    boxes = {p.name[: -len(BOX_SUFFIX)] for p in folder.glob(f"*{BOX_SUFFIX}") if not p.name.startswith(".")}
    masks = {p.name[: -len(ending)] for p in folder.glob(f"*{ending}")
             if not p.name.startswith(".") and not p.name.endswith(f"_boxmask{ending}")}
    return boxes, masks


def pair_cases(ref: Path, pred: Path, file_ending: str, cases: list[str] | None = None) -> Pairing:
    for f, what in ((ref, "reference"), (pred, "prediction")):
        if not f.is_dir():
            raise UserError(f"{what} folder {f} does not exist")
    rb, rm = _ids(ref, file_ending)
    pb, pm = _ids(pred, file_ending)
    if cases is not None:  # only these cases (e.g. a fold's validation cases)
        keep = set(cases)
        rb, rm, pb, pm = rb & keep, rm & keep, pb & keep, pm & keep
    if not pb and not pm:
        raise UserError(f"no predictions in {pred} (expected CASE{BOX_SUFFIX} or CASE{file_ending} files)")
    missing = sorted((pb | pm) - (rb | rm))
    if missing:
        raise UserError(f"no reference for predicted case(s) {', '.join(missing[:5])}"
                        f"{' ...' if len(missing) > 5 else ''} in {ref} (expected CASE{file_ending} or "
                        f"CASE{BOX_SUFFIX})")
    nothing = sorted((rb | rm) - (pb | pm))
    masks_need = sorted(c for c in pm if c not in rm)
    if masks_need:
        raise UserError(f"predicted masks need reference label maps; missing for {', '.join(masks_need[:5])}")
    return Pairing(sorted(pb), sorted(pm), nothing)


def read_label_map(path: Path) -> tuple[np.ndarray, Geometry]:
    """A label map file -> (integer array in array order, its Geometry); one-line UserError when unusable."""
    import SimpleITK as sitk

    from autoorgan.dataset.integrity import truncation_problem
    if (why := truncation_problem(path)) is not None:
        raise UserError(f"{path} is damaged ({why}); replace the file")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unreadable"
        raise UserError(f"cannot read {path} ({first})") from None
    arr = sitk.GetArrayFromImage(img)
    if arr.ndim != 3:
        raise UserError(f"{path} is not a 3D label map (shape {arr.shape})")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(arr == np.round(arr)):
            raise UserError(f"{path} has non-integer values; a label map holds organ labels")
        arr = arr.astype(np.int32)
    return arr, Geometry.from_sitk(img)


def grid_mismatch(ref: Geometry, pred: Geometry) -> str | None:
    """Why two label maps do not lie on the same voxel grid in the world (shape, spacing, origin, direction)."""
    if tuple(ref.shape) != tuple(pred.shape):
        return f"shape {tuple(pred.shape)} vs {tuple(ref.shape)}"
    for what, a, b, tol in (("spacing", pred.spacing, ref.spacing, 1e-3 * max(ref.spacing)),
                            ("origin", pred.origin, ref.origin, 1e-2 * max(ref.spacing)),
                            ("direction", pred.direction, ref.direction, 1e-3)):
        if not np.allclose(a, b, rtol=0, atol=tol):
            return f"{what} {tuple(round(float(v), 4) for v in a)} vs {tuple(round(float(v), 4) for v in b)}"
    return None


def _record_geometry(geo: dict) -> Geometry:
    return Geometry(shape=tuple(int(v) for v in geo["shape_array_order"]),
                    spacing=tuple(float(v) for v in geo["spacing_itk_order"]),
                    origin=tuple(float(v) for v in geo.get("origin_lps_mm", (0.0, 0.0, 0.0))),
                    direction=tuple(float(v) for v in geo.get("direction_itk", (1, 0, 0, 0, 1, 0, 0, 0, 1))))


def ref_geometry(ref: Path, case: str, file_ending: str) -> Geometry | None:
    """The reference label map's geometry (header only), or None for box-file references."""
    lm = ref / f"{case}{file_ending}"
    if not lm.is_file():
        return None
    import SimpleITK as sitk
    r = sitk.ImageFileReader()
    r.SetFileName(str(lm))
    r.ReadImageInformation()
    return Geometry(shape=tuple(int(v) for v in r.GetSize()[::-1]), spacing=tuple(r.GetSpacing()),
                    origin=tuple(r.GetOrigin()), direction=tuple(r.GetDirection()))


def read_box_file(path: Path) -> dict:
    """A ``CASE_boxes.json`` file, checked: one-line UserError naming the file when it is not one."""
    try:
        rec = load_json(path)
        for o in rec["organs"]:
            int(o["label"])
            box = np.asarray(o["box_voxel"], np.float64)
            if box.shape != (6,) or not np.isfinite(box).all() or not np.isfinite(float(o.get("score", 0.0))):
                raise ValueError("box_voxel must be 6 finite numbers")
        geo = rec.get("geometry")
        if geo is not None:
            [int(v) for v in geo["shape_array_order"]], [float(v) for v in geo["spacing_itk_order"]]
        return rec
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not a valid CASE_boxes.json ({type(err).__name__}: {err}); recreate it with "
                        "autoorgan_predict") from None


def _reference_boxes(ref: Path, case: str, file_ending: str, labels: list[int]):
    """(``{label: box}`` in the original array frame, spacing in array order or None, annotated set or None,
    shape)."""
    lm = ref / f"{case}{file_ending}"
    if lm.is_file():
        arr, geo = read_label_map(lm)
        bad = sorted(set(np.unique(arr).tolist()) - {0, *labels})
        if bad:
            raise UserError(f"{lm} has label value(s) {bad} not in dataset.json's labels {labels}")
        return {k: np.asarray(v, np.float64) for k, v in boxes_from_label_map(arr, labels).items()}, \
            geo.spacing_array_order, None, geo.shape
    rec = read_box_file(ref / f"{case}{BOX_SUFFIX}")
    boxes = {int(o["label"]): np.asarray(o["box_voxel"], np.float64) for o in rec["organs"]}
    geo = rec.get("geometry")
    spacing = np.asarray(geo["spacing_itk_order"], np.float64)[::-1] if geo else None
    annotated = set(rec["annotated_labels"]) if "annotated_labels" in rec else None
    return boxes, spacing, annotated, tuple(geo["shape_array_order"]) if geo else None


def evaluate_folders(ref: Path, pred: Path, dataset_json: Mapping, cases: list[str] | None = None) -> dict:
    """Box metrics (when the prediction folder has box files) and mask metrics (when it has label maps);
    ``cases``: only these case ids."""
    ref, pred = Path(ref), Path(pred)
    ending = dataset_json["file_ending"]
    labels_by_name = foreground_labels(dataset_json)
    labels = sorted(labels_by_name.values())
    names = {v: k for k, v in labels_by_name.items()}
    pairing = pair_cases(ref, pred, ending, cases)
    out: dict = {"reference": str(ref), "prediction": str(pred), "cases_without_prediction": pairing.unpredicted}
    if pairing.box_cases:
        det_cases: list[CaseDetections] = []
        centre: dict[int, list[float]] = {lab: [] for lab in labels}
        for cid in pairing.box_cases:
            rboxes, spacing, annotated, shape = _reference_boxes(ref, cid, ending, labels)
            annotated = annotated if annotated is not None else set(annotated_labels(dataset_json, cid))
            rec = read_box_file(pred / f"{cid}{BOX_SUFFIX}")
            geo = rec.get("geometry")
            if shape is not None and geo and tuple(geo["shape_array_order"]) != tuple(shape):
                raise UserError(f"case {cid}: prediction is on a {tuple(geo['shape_array_order'])} grid but the "
                                f"reference on {tuple(shape)}; were they made from the same image?")
            ref_geo = ref_geometry(ref, cid, ending)
            if ref_geo is not None and geo and (why := grid_mismatch(ref_geo, _record_geometry(geo))) is not None:
                raise UserError(f"case {cid}: the prediction's image grid differs from the reference's ({why}); "
                                "were they made from the same image?")
            predicted = {int(o["label"]): (np.asarray(o["box_voxel"], np.float64), float(o["score"]))
                         for o in rec["organs"] if int(o["label"]) in labels}
            det_cases.append(CaseDetections(rboxes, predicted, annotated, cid))
            for lab, (box, _) in predicted.items():
                if lab in rboxes and lab in annotated and spacing is not None:
                    d = ((box[:3] + box[3:]) - (rboxes[lab][:3] + rboxes[lab][3:])) / 2 * spacing
                    centre[lab].append(float(np.linalg.norm(d)))
        det = detection_metrics(det_cases, names)
        for lab, name in names.items():
            c = centre[lab]
            det["per_class"][name]["centre_distance_mm_mean"] = float(np.mean(c)) if c else float("nan")
            det["per_class"][name]["centre_distance_mm_median"] = float(np.median(c)) if c else float("nan")
        allc = [v for c in centre.values() for v in c]
        det["centre_distance_mm_mean"] = float(np.mean(allc)) if allc else float("nan")
        out["boxes"] = det
    if pairing.mask_cases:
        per_case = {}
        for cid in pairing.mask_cases:
            r, rgeo = read_label_map(ref / f"{cid}{ending}")
            p, pgeo = read_label_map(pred / f"{cid}{ending}")
            if (why := grid_mismatch(rgeo, pgeo)) is not None:
                raise UserError(f"case {cid}: the prediction's grid differs from the reference's ({why}); were "
                                "they made from the same image?")
            per_case[cid] = case_mask_metrics(r, p, labels, rgeo.spacing_array_order,
                                              set(annotated_labels(dataset_json, cid)))
        masks = summarize_masks(per_case, names)
        masks["per_case"] = {cid: {names[lab]: v for lab, v in m.items()} for cid, m in per_case.items()}
        out["masks"] = masks
    return out


def format_table(summary: dict) -> str:
    """The printed table of :func:`evaluate_folders`' result."""
    lines = []
    if "boxes" in summary:
        b = summary["boxes"]
        lines.append(f"boxes ({b['num_cases']} cases): mAP {b['mAP']:.3f}  mAR {b['mAR']:.3f}  AP10 {b['AP10']:.3f}  "
                     f"AP50 {b['AP50']:.3f}  AP75 {b['AP75']:.3f}  mAP.10:.50 {b['mAP_10_50']:.3f}  "
                     f"centre {b['centre_distance_mm_mean']:.1f} mm")
        lines.append(f"  {'organ':<20}{'n':>5}{'AP':>8}{'AP50':>8}{'AP75':>8}{'AR':>8}{'IoU':>8}{'centre mm':>11}")
        for name, v in b["per_class"].items():
            lines.append(f"  {name:<20}{v['num_reference']:>5}{v['AP']:>8.3f}{v['AP50']:>8.3f}{v['AP75']:>8.3f}"
                         f"{v['AR']:>8.3f}{v['mean_IoU']:>8.3f}{v['centre_distance_mm_mean']:>11.1f}")
    if "masks" in summary:
        m = summary["masks"]
        lines.append(f"masks: mean Dice {m['mean_Dice']:.3f}  mean HD95 {m['mean_HD95']:.1f} mm")
        lines.append(f"  {'organ':<20}{'n':>5}{'Dice':>8}{'HD95 mm':>10}")
        for name, v in m["per_class"].items():
            lines.append(f"  {name:<20}{v['num_cases']:>5}{v['Dice']:>8.3f}{v['HD95']:>10.1f}")
    if summary.get("cases_without_prediction"):
        lines.append(f"reference cases without prediction (left out): {len(summary['cases_without_prediction'])}")
    return "\n".join(lines)
