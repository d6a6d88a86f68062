"""autoorgan_train ... ccq / dodnet: learning check on a partially annotated phantom, prediction with -c ccq."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli, untrained_validation

DATASET = "Dataset930_PhantomPartial"
LEARNED_DICE = 0.2  # every organ, after 600 iterations of the tiny network
LEARNED_MEAN = 0.40
# Measured (2 threads, seed 12345) training every patch on all 7 classes: per organ 0.27-0.90, mean 0.52. With the
# planner's default of 2 classes per patch the same 600 iterations miss the two low-contrast organs annotated in one
# member only (stomach 5 HU, bladder -5 HU inside a 15 HU wall): Dice 0.00 in 5 of 5 seeds, mean 0.18-0.44. The
# default is for real budgets (docs/ccq.md); this check gives the class conditioning the most signal per iteration.
# Those two organs are learned last: with all 7 classes but seeds 1 and 2 (one thread) they also stayed at 0.00.


def tiny_ccq_plans(plans: dict) -> None:
    """Shrink the ccq configuration to a network that learns in minutes on 2 CPU cores."""
    c = plans["configurations"]["ccq"]
    c["patch_size"] = [32, 32, 32]
    c["architecture"]["arch_kwargs"].update(
        n_stages=4, features_per_stage=[8, 16, 32, 32], kernel_sizes=[[3, 3, 3]] * 4,
        strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]], n_conv_per_stage=[1, 1, 1, 1],
        n_conv_per_stage_decoder=[1, 1, 1])
    c["ccq"].update(num_class_queries=8, hidden_dim=32, num_heads=4)


@pytest.fixture(scope="module")
def ccq_roots(tmp_path_factory):
    from autoorgan.dataset.phantom import write_phantom_dataset
    base = tmp_path_factory.mktemp("ccq")
    roots = {k: base / k for k in ("raw", "preprocessed", "results")}
    write_phantom_dataset(roots["raw"], 930, num_cases=16, num_test=2, partial=True, spacing_scale=1.6,
                          progress=False)
    res = run_cli("autoorgan_plan_and_preprocess", "-d", "930", "-c", "ccq", "-np", "2", "--quiet", env_roots=roots)
    assert res.returncode == 0, res.stderr
    path = roots["preprocessed"] / DATASET / "autoorganPlans.json"
    plans = json.loads(path.read_text())
    assert plans["configurations"]["ccq"]["ccq"]["train_classes_per_patch"] == 2  # the planner's default
    tiny_ccq_plans(plans)
    plans["configurations"]["ccq"]["ccq"]["train_classes_per_patch"] = 7  # see LEARNED_* above
    path.write_text(json.dumps(plans))
    return roots


def _untrained_dice(roots, monkeypatch):
    from autoorgan.trainers.ccq import CCQTrainer
    return untrained_validation(roots, monkeypatch, CCQTrainer, DATASET)["per_class"]


def test_ccq_learning_check_segments_every_organ(ccq_roots, monkeypatch, tmp_path):
    """A fixed number of iterations on the partial phantom (3 member datasets; spleen, stomach, bladder and the
    aorta are annotated in one member only) must segment every organ far better than the untrained network."""
    res = run_cli("autoorgan_train", "930", "ccq", "all", "-device", "cpu", "--epochs", "24", "--iters_per_epoch",
                  "25", "--val_every", "100", "--lr", "3e-3", "--warmup_iters", "20", "-num_workers", "1",
                  env_roots=ccq_roots, timeout=1500)
    assert res.returncode == 0, res.stderr[-3000:]
    fold = ccq_roots["results"] / DATASET / "CCQTrainer__autoorganPlans__ccq" / "fold_all"
    summary = json.loads((fold / "validation" / "summary.json").read_text())["metrics"]
    untrained = _untrained_dice(ccq_roots, monkeypatch)
    for organ, m in summary["per_class"].items():
        before = untrained[organ]["Dice"]
        assert m["Dice"] >= LEARNED_DICE and m["Dice"] >= before + 0.15, (organ, m["Dice"], before)
        assert np.isfinite(m["HD95"]), organ
    assert summary["mean_Dice"] >= LEARNED_MEAN, summary["per_class"]
    # prediction of new scans with -c ccq: one label map per case on the input grid, evaluated with Dice/HD95
    out = tmp_path / "pred"
    raw = ccq_roots["raw"] / DATASET
    res = run_cli("autoorgan_predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", "930", "-c", "ccq", "-f",
                  "all", "-device", "cpu", "--quiet", env_roots=ccq_roots)
    assert res.returncode == 0, res.stderr[-3000:]
    import SimpleITK as sitk
    for ref in sorted((raw / "labelsTs").glob("*.nii.gz")):
        pred = sitk.ReadImage(str(out / ref.name))
        assert pred.GetSize() == sitk.ReadImage(str(ref)).GetSize()
    res = run_cli("autoorgan_evaluate", "-ref", str(raw / "labelsTs"), "-pred", str(out), "-d", "930",
                  env_roots=ccq_roots)
    assert res.returncode == 0, res.stderr
    masks = json.loads((out / "summary.json").read_text())["masks"]
    assert masks["mean_Dice"] >= LEARNED_DICE, masks["per_class"]


def test_dodnet_baseline_trains_on_the_same_plans(ccq_roots):
    res = run_cli("autoorgan_train", "930", "dodnet", "0", "-device", "cpu", "--epochs", "1", "--iters_per_epoch",
                  "3", "-num_workers", "0", env_roots=ccq_roots)
    assert res.returncode == 0, res.stderr[-3000:]
    fold = ccq_roots["results"] / DATASET / "DoDNetTrainer__autoorganPlans__ccq" / "fold_0"
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert set(summary["metrics"]["per_class"]) == {"liver", "spleen", "kidney_right", "kidney_left", "stomach",
                                                    "bladder", "aorta"}
