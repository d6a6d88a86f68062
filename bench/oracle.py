"""The resolution ceiling of an organdetr plan: a perfect predictor of its own training targets, scored like
``autoorgan_evaluate`` against the boxes of the original label maps.

    python bench/oracle.py -d 501 [-c organdetr] [--cases N]

For every case of the preprocessed data, the targets training uses are taken exactly as the data loader makes them
(the case fitted to the network input, boxes from the label map at that resolution; no augmentation), mapped back to
the original image (input frame -> preprocessed -> original, the predictor's own maps), and compared with the box of
the original label map. Ranking is perfect (score = IoU), so mAP_coco here is the best any network trained on these
targets can score at this plan. The same is reported for the exact targets (``boxes_exact``: the original boxes
carried continuously through crop and resampling), whose ceiling is set only by what the network can resolve.
"""
from __future__ import annotations

import argparse
import json

import numpy as np


def _scored(pred: dict, ref: dict) -> dict:
    """Each predicted box scored by its IoU with the reference: perfect ranking."""
    from autoorgan.boxes import box_iou
    return {k: (b, float(box_iou(b[None], ref[k][None])[0, 0]) if k in ref else 0.0) for k, b in pred.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", required=True)
    p.add_argument("-c", default="organdetr")
    p.add_argument("--cases", type=int, default=None, help="only the first N cases")
    args = p.parse_args()
    from autoorgan.boxes import boxes_from_label_map, normalized_to_voxel, preprocessed_to_original
    from autoorgan.configurations import get_configuration
    from autoorgan.dataset.raw import annotated_labels, foreground_labels
    from autoorgan.evaluation.detection import CaseDetections, detection_metrics
    from autoorgan.evaluation.folders import read_label_map
    from autoorgan.planning.plans import load_plans
    from autoorgan.training.validation import reference_path
    from autoorgan.training.whole_volume import WholeVolumeCases
    from autoorgan.utils.fileio import load_json
    from autoorgan.utils.paths import find_dataset_name, preprocessed_root
    name = find_dataset_name(args.d)
    pre = preprocessed_root() / name
    plans = load_plans(pre)
    cfg = plans["configurations"][get_configuration(args.c).plans_section]
    ds = load_json(pre / "dataset.json")
    labels = sorted(foreground_labels(ds).values())
    names = {v: k for k, v in foreground_labels(ds).items()}
    folder = pre / cfg["data_identifier"]
    ids = sorted(f.stem for f in folder.glob("*.pkl"))[: args.cases]
    shape = tuple(int(s) for s in cfg["input_shape"])
    cases = WholeVolumeCases(folder, ids, shape, labels)
    tb = plans["transpose_backward"]
    quantised, exact = [], []
    for ident in ids:
        item = cases.item(ident, augment=False)
        data, _, props = cases.load(ident)
        ref_map, _ = read_label_map(reference_path(pre, ident, ds))
        ref = {k: np.asarray(v, np.float64) for k, v in boxes_from_label_map(ref_map, labels).items()}
        annotated = set(annotated_labels(ds, ident))
        vox = normalized_to_voxel(item["boxes"].numpy(), shape)
        q = {}
        for k, box in zip(item["classes"].tolist(), vox, strict=True):
            back = preprocessed_to_original(item["fit"].box_to_case(box[None])[0], props, data.shape[1:], tb)
            q[labels[k]] = back
        e = {int(k): preprocessed_to_original(np.asarray(v), props, data.shape[1:], tb)
             for k, v in props["autoorgan"].get("boxes_exact", {}).items()}

        quantised.append(CaseDetections(ref, _scored(q, ref), annotated, ident))
        exact.append(CaseDetections(ref, _scored(e, ref), annotated, ident))
    print(f"{name}, {args.c} plan: spacing {cfg['spacing']} mm, input {shape}, {len(ids)} cases")
    for what, cs in (("training targets (quantised at the input resolution)", quantised),
                     ("exact targets (boxes_exact)", exact)):
        m = detection_metrics(cs, names)
        print(f"{what}: mAP_coco {m['mAP']:.3f}  AP50 {m['AP50']:.3f}  AP75 {m['AP75']:.3f}  mean IoU "
              f"{m['mean_IoU']:.3f}")
        print("  " + "  ".join(f"{k} {v['AP']:.2f}" for k, v in m["per_class"].items()))
    print(json.dumps({"cases": len(ids)}))


if __name__ == "__main__":
    main()
