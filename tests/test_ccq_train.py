"""autoorgan_train ... ccq / dodnet: learning checks on a partially annotated phantom, prediction with -c ccq."""
from __future__ import annotations

import json

import numpy as np
import pytest

import learning_checks as lc
from conftest import run_cli

CCQ, DODNET = lc.CHECKS["ccq"], lc.CHECKS["dodnet"]
DATASET = CCQ.dataset


@pytest.fixture(scope="module")
def ccq_roots(learning_runs):
    """The partial phantom's roots (ccq and dodnet are trained on it side by side with the organdetr check, one
    OpenMP thread each: conftest.LearningRuns; the thresholds hold for 1 and 2 threads: bench/learning_checks.py)."""
    roots = learning_runs.roots["ccq"]
    plans = json.loads((roots["preprocessed"] / DATASET / "autoorganPlans.json").read_text())
    assert plans["configurations"]["ccq"]["ccq"]["train_classes_per_patch"] == 2  # the planner's default is trained
    return roots


@pytest.fixture(scope="module")
def learned(learning_runs):
    return {name: learning_runs.get(name)[1:] for name in ("ccq", "dodnet")}


@pytest.mark.parametrize("name", ["ccq", "dodnet"])
def test_learning_check_segments_every_organ(name, ccq_roots, learned):
    """A fixed number of iterations on the partial phantom (3 member datasets; spleen, stomach, bladder and the
    aorta are annotated in one member only) must segment every organ far better than the untrained network."""
    check = lc.CHECKS[name]
    res, metrics = learned[name]
    assert res.returncode == 0, res.stderr[-3000:]
    fails = lc.failures(check, metrics, lc.untrained_metrics(check, ccq_roots))
    assert not fails, (fails, metrics["per_class"])
    assert all(np.isfinite(m["HD95"]) for m in metrics["per_class"].values()), metrics["per_class"]


def test_predict_ccq_label_maps_and_evaluate(ccq_roots, learned, tmp_path):
    """Prediction of new scans with -c ccq: one label map per case on the input grid, evaluated with Dice/HD95."""
    assert learned["ccq"][0].returncode == 0
    out = tmp_path / "pred"
    raw = ccq_roots["raw"] / DATASET
    res = run_cli("autoorgan_predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", "930", "-c", "ccq", "-f",
                  "all", "-tr", "Check_ccq", "-device", "cpu", "--quiet", env_roots=ccq_roots)
    assert res.returncode == 0, res.stderr[-3000:]
    import SimpleITK as sitk
    for ref in sorted((raw / "labelsTs").glob("*.nii.gz")):
        pred = sitk.ReadImage(str(out / ref.name))
        assert pred.GetSize() == sitk.ReadImage(str(ref)).GetSize()
    res = run_cli("autoorgan_evaluate", "-ref", str(raw / "labelsTs"), "-pred", str(out), "-d", "930",
                  env_roots=ccq_roots)
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    masks = summary["masks"]
    assert masks["mean_Dice"] >= CCQ.min_mean, masks["per_class"]
    # boxes from the masks (largest component per organ), scored by the same evaluation as Organ-DETR's
    record = json.loads(next(out.glob("*_boxes.json")).read_text())
    assert record["organs"] and all(0 < o["score"] <= 1 for o in record["organs"])
    assert summary["boxes"]["AP10"] >= summary["boxes"]["AP50"] > 0.2, summary["boxes"]
