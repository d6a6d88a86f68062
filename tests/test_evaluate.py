"""autoorgan_evaluate: box metrics against hand-computed values, partial annotation, Dice/HD95, bad input."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from autoorgan.dataset.raw import ANNOTATION_KEY
from conftest import run_cli

SPACING_ITK = (0.8, 1.2, 2.5)  # ITK order; array order (2.5, 1.2, 0.8)


def _write_labels(path, arr):
    im = sitk.GetImageFromArray(arr.astype(np.uint8))
    im.SetSpacing(SPACING_ITK)
    sitk.WriteImage(im, str(path))


def _box_record(case_id, organs, shape):
    return {"case_id": case_id, "geometry": {"shape_array_order": list(shape), "spacing_itk_order": list(SPACING_ITK),
                                             "origin_lps_mm": [0, 0, 0], "direction_itk": [1, 0, 0, 0, 1, 0, 0, 0, 1]},
            "organs": [{"name": str(lab), "label": lab, "score": s, "box_voxel": list(map(float, b))}
                       for lab, (b, s) in organs.items()]}


@pytest.fixture
def dataset(roots):
    folder = roots["raw"] / "Dataset950_Eval"
    folder.mkdir(parents=True)
    ds = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "kidney": 2}, "numTraining": 0,
          "file_ending": ".nii.gz",
          ANNOTATION_KEY: {"cases": {"c2": ["liver"]}}}  # c2 annotates the liver only
    (folder / "dataset.json").write_text(json.dumps(ds))
    return folder


def test_box_metrics_match_hand_computation(roots, dataset, tmp_path):
    """Liver: c1 exact (score .9), c2 IoU 0.6 (score .8) -> AP50 1, AP75 = 51/101 (precision 1 up to recall .5).
    Kidney: c1 exact but c2 does not annotate kidney, so c2's kidney box is neither a miss nor a false positive."""
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir(), pred.mkdir()
    shape = (20, 30, 40)
    for cid in ("c1", "c2"):
        lab = np.zeros(shape, np.uint8)
        lab[2:12, 5:15, 10:30] = 1
        lab[14:18, 20:28, 5:9] = 2 if cid == "c1" else 0
        _write_labels(ref / f"{cid}.nii.gz", lab)
    liver, kidney = [2, 5, 10, 12, 15, 30], [14, 20, 5, 18, 28, 9]
    # IoU 0.6: same box shifted along axis 2 by 5 of its 20 voxels -> overlap 15/25 = 0.6
    shifted = [2, 5, 15, 12, 15, 35]
    (pred / "c1_boxes.json").write_text(json.dumps(_box_record("c1", {1: (liver, .9), 2: (kidney, .7)}, shape)))
    (pred / "c2_boxes.json").write_text(json.dumps(_box_record("c2", {1: (shifted, .8), 2: ([0] * 3 + [1] * 3, .99)},
                                                               shape)))
    res = run_cli("autoorgan_evaluate", "-ref", str(ref), "-pred", str(pred), "-d", "950", env_roots=roots)
    assert res.returncode == 0, res.stderr
    s = json.loads((pred / "summary.json").read_text())["boxes"]
    lv, kd = s["per_class"]["liver"], s["per_class"]["kidney"]
    assert lv["AP50"] == pytest.approx(1.0) and lv["AP75"] == pytest.approx(51 / 101)
    assert kd["num_reference"] == 1 and kd["AP75"] == pytest.approx(1.0)  # c2's kidney left out
    # COCO thresholds .50:.95: liver TP in c2 for t <= .6 (3 of 10 thresholds) -> AP = (3 * 1 + 7 * 51/101) / 10
    assert lv["AP"] == pytest.approx((3 + 7 * 51 / 101) / 10)
    assert s["mAP"] == pytest.approx((lv["AP"] + 1.0) / 2)
    # centre distance: c2 liver shifted 5 voxels along array axis 2 (0.8 mm) -> 4 mm; others 0
    assert lv["centre_distance_mm_mean"] == pytest.approx(2.0) and kd["centre_distance_mm_mean"] == 0.0
    assert "liver" in res.stdout and "mAP" in res.stdout


def test_mask_metrics_dice_hd95(roots, dataset, tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir(), pred.mkdir()
    shape = (10, 12, 14)
    r = np.zeros(shape, np.uint8)
    p = np.zeros(shape, np.uint8)
    r[2, 3, 4] = 1
    p[6, 3, 4] = 1        # one voxel each, 4 voxels apart along array axis 0 (2.5 mm) -> HD95 10 mm, Dice 0
    r[5:7, 5:7, 5:7] = 2
    p[5:7, 5:7, 5:7] = 2  # kidney identical -> Dice 1, HD95 0
    _write_labels(ref / "c1.nii.gz", r)
    _write_labels(pred / "c1.nii.gz", p)
    r2 = np.zeros(shape, np.uint8)
    r2[1:3, 1:3, 1:3] = 1
    _write_labels(ref / "c3.nii.gz", r2)
    _write_labels(pred / "c3.nii.gz", np.zeros(shape, np.uint8))  # missed liver, kidney absent in both
    out = tmp_path / "s.json"
    res = run_cli("autoorgan_evaluate", "-ref", str(ref), "-pred", str(pred), "-d", "950", "-o", str(out),
                  env_roots=roots)
    assert res.returncode == 0, res.stderr
    m = json.loads(out.read_text())["masks"]
    c1 = m["per_case"]["c1"]
    assert c1["liver"]["dice"] == 0.0 and c1["liver"]["hd95"] == pytest.approx(10.0)
    assert c1["kidney"]["dice"] == 1.0 and c1["kidney"]["hd95"] == 0.0
    c3 = m["per_case"]["c3"]
    assert c3["liver"]["dice"] == 0.0 and math.isnan(c3["liver"]["hd95"])
    assert math.isnan(c3["kidney"]["dice"])  # absent in both: not counted
    assert m["per_class"]["kidney"]["Dice"] == 1.0 and m["per_class"]["liver"]["num_inf_hd95"] == 1


def test_hd95_is_symmetric_percentile():
    from autoorgan.evaluation.segmentation import hd95
    a = np.zeros((30, 30, 30), bool)
    b = np.zeros_like(a)
    a[5:15, 5:15, 5:15] = True
    b[5:15, 5:15, 7:17] = True  # shifted by 2 voxels along axis 2
    d = hd95(a, b, (1.0, 1.0, 3.0))
    assert d == pytest.approx(hd95(b, a, (1.0, 1.0, 3.0)))
    assert d == pytest.approx(6.0)  # the 2-voxel shift along axis 2 (3 mm spacing); reversed spacing would give 2


@pytest.mark.parametrize("case, message", [
    ("missing_ref", "no reference for predicted case"),
    ("bad_label", "label value(s) [5] not in"),
    ("grid", "were they made from the same image"),
    ("empty_pred", "no predictions in"),
])
def test_evaluate_bad_input(roots, dataset, tmp_path, case, message):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir(), pred.mkdir()
    lab = np.zeros((8, 8, 8), np.uint8)
    lab[2:4, 2:4, 2:4] = 5 if case == "bad_label" else 1
    if case != "missing_ref":
        _write_labels(ref / "c1.nii.gz", lab)
    if case != "empty_pred":
        shape = (9, 8, 8) if case == "grid" else (8, 8, 8)
        (pred / "c1_boxes.json").write_text(json.dumps(_box_record("c1", {1: ([2] * 3 + [4] * 3, .5)}, shape)))
    res = run_cli("autoorgan_evaluate", "-ref", str(ref), "-pred", str(pred), "-d", "950", env_roots=roots)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (pred / "summary.json").exists()
