"""Would a field of view planned from the organs, instead of the body, buy Organ-DETR a finer spacing?

    python bench/field_of_view.py -d 501

Reads the dataset fingerprint (``autoorgan_plan_and_preprocess``) and prints, per array axis of the raw images (mm):
the body extent the organdetr planner fits today (median over cases); the extent of the union of each case's organ
boxes (median, p95); how far the union's centre lies from the body box's centre (median, spread = (p95 - p05) /
3.29); and an organ field of view that would hold the union in 95 % of cases wherever it lies (p95 extent + 2
spreads of the centre offset on each side, at most the body's median extent, since the body is cropped anyway).
The last line is the gain: the ratio of the two fields' volumes, and the factor by which every axis's spacing could
shrink at the same number of input voxels (its cube root). The union is taken over the organs each case holds, so
partially annotated cases give a smaller union: p95 is the figure to plan with.
"""
from __future__ import annotations

import argparse

import numpy as np


def fov_rows(cases: dict) -> dict[str, np.ndarray]:
    """Per case (fingerprint ``cases`` entries: ``boxes``, ``body_bbox``, ``spacing``): body extent, organ-union
    extent, and union-centre offset from the body centre, in mm per raw array axis; arrays ``[num_cases, 3]``."""
    body, union, offset = [], [], []
    for case in cases.values():
        if not case.get("boxes"):
            continue
        boxes = np.asarray(list(case["boxes"].values()), np.float64)
        bb = np.asarray(case["body_bbox"], np.float64)
        sp = np.asarray(case["spacing"], np.float64)
        lo, hi = boxes[:, :3].min(0), boxes[:, 3:].max(0)
        body.append((bb[3:] - bb[:3]) * sp)
        union.append((hi - lo) * sp)
        offset.append(((lo + hi) - (bb[:3] + bb[3:])) / 2 * sp)
    return {"body": np.asarray(body), "union": np.asarray(union), "offset": np.asarray(offset)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", required=True, help="dataset id or name (its fingerprint in autoorgan_preprocessed)")
    args = p.parse_args()
    from autoorgan.utils.fileio import load_json
    from autoorgan.utils.paths import find_dataset_name, preprocessed_root
    name = find_dataset_name(args.d)
    fp = load_json(preprocessed_root() / name / "dataset_fingerprint.json")["autoorgan"]
    rows = fov_rows(fp["cases"])
    body = np.median(rows["body"], 0)
    union_med, union_p95 = np.median(rows["union"], 0), np.percentile(rows["union"], 95, 0)
    p05, med, p95 = np.percentile(rows["offset"], [5, 50, 95], 0)
    spread = (p95 - p05) / 3.29
    fov = np.minimum(union_p95 + 4 * spread, body)
    gain = float(np.prod(body) / np.prod(fov))

    def fmt(a):
        return "[" + ", ".join(f"{v:6.1f}" for v in a) + "]"
    print(f"{name}: {len(rows['body'])} cases with organs; mm per raw array axis")
    print(f"body extent, median (today's field of view) {fmt(body)}")
    print(f"organ union extent, median                  {fmt(union_med)}")
    print(f"organ union extent, p95                     {fmt(union_p95)}")
    print(f"union centre - body centre, median / spread {fmt(med)} / {fmt(spread)}")
    print(f"organ field of view (p95 + 2 spreads a side) {fmt(fov)}")
    print(f"volume ratio body / organ field {gain:.2f}: at the same input voxels each axis's spacing could be "
          f"{gain ** (1 / 3):.2f}x finer")


if __name__ == "__main__":
    main()
