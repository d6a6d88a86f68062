"""What limits a prediction folder's box mAP: the ranking, the extent along the patient's long axis, or in-plane?

    python bench/box_limits.py -d 501 -pred PRED_FOLDER -ref REF_FOLDER

``PRED_FOLDER`` holds ``CASE_boxes.json`` files (``autoorgan_predict``, any configuration), ``REF_FOLDER`` the
reference label maps. Scored as ``autoorgan_evaluate`` scores boxes (the largest component's box of each reference
organ, cases that do not contour an organ left out), five ways:

* as predicted;
* ranked by the true IoU instead of the score (the best any score could do with these boxes);
* with each box's extent along the long axis (the image axis closest to world z, from each reference's direction)
  taken from the reference: what is left when where an organ starts and stops is known, as for contours whose length
  depends on the treatment plan;
* with the in-plane extents taken from the reference instead (what is left when only the long axis is predicted);

each printed with its mean IoU. A folder whose boxes miss mostly along the long axis gains most from the third line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def swap_axes(box: np.ndarray, ref: np.ndarray, axes: list[int]) -> np.ndarray:
    """``box [6]`` with its extent along ``axes`` replaced by the reference's ``[6]`` (array axes, edge coordinates)."""
    out = np.asarray(box, np.float64).copy()
    for a in axes:
        out[a], out[a + 3] = ref[a], ref[a + 3]
    return out


def iou_ranked(cases: list) -> list:
    """The same cases with every predicted box scored by its true IoU with the reference (perfect ranking)."""
    from autoorgan.boxes import box_iou
    from autoorgan.evaluation.detection import CaseDetections

    def iou(box, ref):
        return float(box_iou(box[None], ref[None])[0, 0]) if ref is not None else 0.0
    return [CaseDetections(c.reference, {k: (b, iou(b, c.reference.get(k))) for k, (b, _) in c.predicted.items()},
                           c.annotated, c.case_id) for c in cases]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", required=True, help="dataset id or name (its dataset.json: labels, partial annotation)")
    p.add_argument("-pred", required=True)
    p.add_argument("-ref", required=True)
    args = p.parse_args()
    import SimpleITK as sitk

    from autoorgan.boxes import boxes_from_label_map
    from autoorgan.dataset.raw import annotated_labels, foreground_labels
    from autoorgan.evaluation.detection import CaseDetections, detection_metrics
    from autoorgan.utils.paths import find_dataset_name, raw_root
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from slice_extent import long_axis  # bench/slice_extent.py: the image axis closest to world z
    ds = json.loads((raw_root() / find_dataset_name(args.d) / "dataset.json").read_text())
    names = {v: k for k, v in foreground_labels(ds).items()}
    labels = sorted(names)
    ending = ds["file_ending"]
    variants = ("as predicted", "ranked by true IoU", "long axis from the reference",
                "in-plane from the reference")
    cases: dict[str, list] = {v: [] for v in variants}
    for ref_path in sorted(Path(args.ref).glob(f"*{ending}")):
        case = ref_path.name[: -len(ending)]
        box_file = Path(args.pred) / f"{case}_boxes.json"
        if not box_file.is_file():
            continue
        img = sitk.ReadImage(str(ref_path))
        ref = {k: np.asarray(v, np.float64) for k, v in boxes_from_label_map(sitk.GetArrayFromImage(img),
                                                                               labels).items()}
        axis, _ = long_axis(img.GetDirection())
        pred = {int(o["label"]): (np.asarray(o["box_voxel"], np.float64), float(o["score"]))
                for o in json.loads(box_file.read_text())["organs"]}
        annotated = set(annotated_labels(ds, case))
        in_plane = [a for a in range(3) if a != axis]
        cases["as predicted"].append(CaseDetections(ref, pred, annotated, case))
        cases["ranked by true IoU"] += iou_ranked([cases["as predicted"][-1]])
        for name, axes in (("long axis from the reference", [axis]), ("in-plane from the reference", in_plane)):
            swapped = {k: (swap_axes(b, ref[k], axes) if k in ref else b, s) for k, (b, s) in pred.items()}
            cases[name].append(CaseDetections(ref, swapped, annotated, case))
    print(f"{len(cases['as predicted'])} cases")
    print(f"{'':<30} {'mAP':>6} {'AP50':>6} {'AP75':>6} {'mAR':>6} {'mean IoU':>9}  (IoU-ranked mAP)")
    for name, c in cases.items():
        m = detection_metrics(c, names)
        swapped = name not in ("as predicted", "ranked by true IoU")
        ranked = f"  ({detection_metrics(iou_ranked(c), names)['mAP']:.3f})" if swapped else ""
        print(f"{name:<30} {m['mAP']:>6.3f} {m['AP50']:>6.3f} {m['AP75']:>6.3f} {m['mAR']:>6.3f} "
              f"{m['mean_IoU']:>9.3f}{ranked}")


if __name__ == "__main__":
    main()
