"""How much of a segmentation's Dice is lost to where an organ starts and stops along the patient's long axis?

    python bench/slice_extent.py -d 501 -pred PRED_FOLDER -ref REF_FOLDER [--organs Esophagus Larynx]

Per organ, over the cases that contour it (the dataset's partial annotation; a contoured organ absent from the
reference is skipped): Dice as predicted; Dice over the axial slices that both the prediction and the reference
contain (what remains when the extent along the long axis is taken from the reference); and by how many slices the
prediction starts before and ends after the reference (positive: longer; "low" is the end with the lower slice
index). Tubular organs (esophagus, spinal cord) are contoured over lengths that depend on the treatment plan rather
than on the image, so the first two numbers say whether a model's error lies in the organ's outline or in its
length. The long axis is the image axis closest to world z, read from each reference's direction matrix, which
also says which end it calls superior (printed; a dataset's headers can be wrong: check with an organ you know).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def long_axis(direction_itk) -> tuple[int, str]:
    """(numpy axis closest to world z, which end the header calls superior: "high" or "low" slice index)."""
    d = np.asarray(direction_itk, np.float64).reshape(3, 3)
    m = int(np.argmax(np.abs(d[2])))
    return 2 - m, "high" if d[2, m] > 0 else "low"


def extent_row(pred: np.ndarray, ref: np.ndarray, axis: int) -> dict:
    """Dice, Dice over the shared slices, and the prediction's overhang (slices) at the low- and high-index ends."""
    dice = 2 * float((pred & ref).sum()) / max(float(pred.sum() + ref.sum()), 1.0)
    other = tuple(a for a in range(3) if a != axis)
    zr = np.flatnonzero(ref.any(other))
    zp = np.flatnonzero(pred.any(other))
    if not len(zp):
        return {"dice": dice, "dice_shared": 0.0, "longer_low": np.nan, "longer_high": np.nan}
    lo, hi = max(zr[0], zp[0]), min(zr[-1], zp[-1])
    take = [slice(None)] * 3
    take[axis] = slice(lo, hi + 1) if lo <= hi else slice(0, 0)
    p, r = pred[tuple(take)], ref[tuple(take)]
    shared = 2 * float((p & r).sum()) / max(float(p.sum() + r.sum()), 1.0)
    return {"dice": dice, "dice_shared": shared, "longer_low": float(zr[0] - zp[0]),
            "longer_high": float(zp[-1] - zr[-1])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", required=True, help="dataset id or name (its dataset.json: labels, partial annotation)")
    p.add_argument("-pred", required=True)
    p.add_argument("-ref", required=True)
    p.add_argument("--organs", nargs="+", default=None, help="organ names (default: all)")
    args = p.parse_args()
    import SimpleITK as sitk

    from autoorgan.dataset.raw import annotated_labels, foreground_labels
    from autoorgan.utils.paths import find_dataset_name, raw_root
    ds = json.loads((raw_root() / find_dataset_name(args.d) / "dataset.json").read_text())
    labels = foreground_labels(ds)
    organs = args.organs or list(labels)
    unknown = [o for o in organs if o not in labels]
    if unknown:
        sys.exit(f"unknown organ(s) {', '.join(unknown)}; the dataset has {', '.join(labels)}")
    ending = ds["file_ending"]
    rows: dict[str, list[dict]] = {o: [] for o in organs}
    ends: set[str] = set()
    for ref_path in sorted(Path(args.ref).glob(f"*{ending}")):
        case = ref_path.name[: -len(ending)]
        pred_path = Path(args.pred) / ref_path.name
        if not pred_path.is_file():
            continue
        ref_img = sitk.ReadImage(str(ref_path))
        ref, pred = sitk.GetArrayFromImage(ref_img), sitk.GetArrayFromImage(sitk.ReadImage(str(pred_path)))
        axis, superior = long_axis(ref_img.GetDirection())
        ends.add(superior)
        contoured = set(annotated_labels(ds, case))
        for organ in organs:
            value = labels[organ]
            if value in contoured and (ref == value).any():
                rows[organ].append(extent_row(pred == value, ref == value, axis))
    print(f"headers: superior at the {' / '.join(sorted(ends))} slice-index end")
    print(f"{'organ':<14} {'n':>3} {'Dice':>6} {'shared slices':>14} {'longer low':>11} {'longer high':>12}")
    for organ, r in rows.items():
        if not r:
            continue
        mean = {k: float(np.nanmean([x[k] for x in r])) for k in r[0]}
        print(f"{organ:<14} {len(r):>3} {mean['dice']:>6.3f} {mean['dice_shared']:>14.3f} "
              f"{mean['longer_low']:>11.1f} {mean['longer_high']:>12.1f}")


if __name__ == "__main__":
    main()
