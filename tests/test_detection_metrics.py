"""3D COCO metrics against hand computations (101-point interpolated AP, one detection per organ per case)."""
import math

import numpy as np
import pytest

from autoorgan.evaluation.detection import CaseDetections, average_precision, detection_metrics

BOX = np.array([0, 0, 0, 10, 10, 10.0])


def shifted(dx):  # IoU with BOX: (10 - dx) / (10 + dx)
    return BOX + np.array([dx, 0, 0, dx, 0, 0])


def test_perfect_detections_score_one():
    cases = [CaseDetections({0: BOX, 1: BOX * 2}, {0: (BOX, 0.9), 1: (BOX * 2, 0.8)}) for _ in range(3)]
    m = detection_metrics(cases, {0: "a", 1: "b"})
    assert m["mAP"] == pytest.approx(1) and m["mAR"] == pytest.approx(1) and m["AP75"] == pytest.approx(1)


def test_hand_computed_ap_with_a_false_positive_ranked_first():
    # scores: FP (0.9), TP (0.8), TP (0.7); 2 references -> precision at recall 0.5 is 1/2, at 1.0 is 2/3
    # -> monotone precision 2/3 for every recall point -> AP = 2/3 (COCO's 101-point interpolation)
    cases = [CaseDetections({}, {0: (BOX, 0.9)}), CaseDetections({0: BOX}, {0: (BOX, 0.8)}),
             CaseDetections({0: BOX}, {0: (BOX, 0.7)})]
    m = detection_metrics(cases, {0: "a"})
    assert m["AP50"] == pytest.approx(2 / 3) and m["mAR"] == pytest.approx(1)


def test_hand_computed_ap_with_iou_thresholds():
    # case 1 exact (IoU 1), case 2 shifted by 2 voxels (IoU 8/12 = 0.667): TP up to threshold 0.65
    cases = [CaseDetections({0: BOX}, {0: (BOX, 0.9)}), CaseDetections({0: BOX}, {0: (shifted(2), 0.8)})]
    m = detection_metrics(cases, {0: "a"})
    assert m["AP50"] == pytest.approx(1)
    # at 0.7 .. 0.95 (6 thresholds): recall 0.5 with precision 1 -> 51/101
    assert m["AP75"] == pytest.approx(51 / 101)
    assert m["mAP"] == pytest.approx((4 * 1 + 6 * 51 / 101) / 10)
    assert m["mAR"] == pytest.approx((4 * 1 + 6 * 0.5) / 10)
    assert m["mAP_10_50"] == pytest.approx(1)


def test_missed_organ_counts_against_recall_but_unannotated_organ_does_not():
    missed = [CaseDetections({0: BOX}, {0: (BOX, 0.9)}), CaseDetections({0: BOX}, {})]
    assert detection_metrics(missed, {0: "a"})["mAR"] == pytest.approx(0.5)
    # the second case does not annotate organ 0: its (wrong) detection and missing reference are ignored
    partial = [CaseDetections({0: BOX}, {0: (BOX, 0.9)}), CaseDetections({}, {0: (shifted(8), 0.95)}, annotated={1})]
    m = detection_metrics(partial, {0: "a"})
    assert m["mAP"] == pytest.approx(1) and m["per_class"]["a"]["num_reference"] == 1


def test_class_without_references_is_nan_and_skipped():
    cases = [CaseDetections({0: BOX}, {0: (BOX, 0.9), 1: (BOX, 0.1)})]
    m = detection_metrics(cases, {0: "a", 1: "b"})
    assert math.isnan(m["per_class"]["b"]["AP"]) and m["mAP"] == pytest.approx(1)


def test_average_precision_of_nothing():
    ap, rec = average_precision(np.zeros(0), np.zeros(0, bool), 3)
    assert ap == 0 and rec == 0
