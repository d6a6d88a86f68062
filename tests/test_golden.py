"""Golden outputs: fixed-seed tiny networks predict a phantom scan through ``autoorgan_predict``, and the boxes
(``CASE_boxes.json``) and the label map must match stored expectations (small JSON under ``tests/golden/``).

This catches any unintended change of the whole prediction path (reading, preprocessing, resampling, the networks,
top-1 selection, mapping back, export) that the unit tests do not pin down. The networks are built from a seed and
random box-head weights (the planned zero init would make the boxes independent of the image). Tolerances cover
floating-point differences between machines and PyTorch versions, not behaviour changes.

After an intended change: ``AUTOORGAN_UPDATE_GOLDEN=1 pytest tests/test_golden.py`` rewrites the expectations; say
why in the commit.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import autoorgan
import learning_checks as lc
from conftest import run_cli, tiny_model_folder

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("AUTOORGAN_UPDATE_GOLDEN") == "1"
DATASET = "Dataset900_Phantom"
BOX_ATOL = 0.02        # voxels of the original image
COUNT_RTOL = 0.005     # label map: voxels per organ
CENTROID_ATOL = 0.1    # voxels


@pytest.fixture(scope="module")
def golden_roots(tmp_path_factory, phantom_template):
    roots = {k: tmp_path_factory.mktemp("golden") / k for k in ("raw", "preprocessed", "results")}
    shutil.copytree(phantom_template, roots["raw"] / DATASET)
    res = run_cli("autoorgan_plan_and_preprocess", "-d", "900", "-c", "organdetr", "ccq", "-device", "cpu",
                  "--no_pp", "-np", "1", "--quiet", env_roots=roots)
    assert res.returncode == 0, res.stderr
    return roots


def _shrink_organdetr(cfg):
    cfg["architecture"]["arch_kwargs"].update(backbone_widths=[8, 16, 32, 64, 64], hidden_dim=32, num_heads=4,
                                              decoder_layers=2, msa_depth=1, msa_dropout=0.0)


def _organdetr(cfg):
    from autoorgan.networks.organdetr import OrganDETR
    net = OrganDETR.from_plans(cfg, 1, 7)
    with torch.no_grad():
        for box_head in net.decoder.box_heads:     # image-dependent boxes (the planned zero init makes them fixed)
            torch.nn.init.normal_(box_head.layers[-1].weight, std=0.05)
    return net


def _shrink_ccq(cfg):
    lc.tiny_ccq_plans({"configurations": {"ccq": cfg}})  # the learning check's tiny ccq network


def _ccq(cfg):
    from autoorgan.networks.ccq import CCQ
    return CCQ.from_plans(cfg, 1, 7)


def _predict(roots, tmp_path, config: str, trainer: str) -> Path:
    out = tmp_path / f"pred_{config}"
    res = run_cli("autoorgan_predict", "-i", str(roots["raw"] / DATASET / "imagesTs"), "-o", str(out), "-d", "900",
                  "-c", config, "-tr", trainer, "-f", "0", "-device", "cpu", "--quiet", env_roots=roots)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def _compare(name: str, got: dict, check) -> None:
    path = GOLDEN / name
    if UPDATE or not path.is_file():
        if not UPDATE:
            pytest.fail(f"{path} is missing; create it with AUTOORGAN_UPDATE_GOLDEN=1")
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=1) + "\n")
        return
    check(json.loads(path.read_text()), got)


def test_golden_boxes(golden_roots, tmp_path):
    tiny_model_folder(golden_roots, DATASET, "Golden", "organdetr", _shrink_organdetr, _organdetr)
    out = _predict(golden_roots, tmp_path, "organdetr", "Golden")
    record = json.loads(next(out.glob("*_boxes.json")).read_text())
    got = {"case": record["case_id"], "shape": record["geometry"]["shape_array_order"],
           "organs": {o["name"]: {"box_voxel": o["box_voxel"], "score": o["score"]} for o in record["organs"]}}

    def check(want, got):
        assert got["case"] == want["case"] and got["shape"] == want["shape"]
        assert set(got["organs"]) == set(want["organs"])
        for name, w in want["organs"].items():
            g = got["organs"][name]
            np.testing.assert_allclose(g["box_voxel"], w["box_voxel"], atol=BOX_ATOL, err_msg=name)
            assert g["score"] == pytest.approx(w["score"], abs=1e-4), name
    _compare("organdetr_boxes.json", got, check)


def test_golden_label_map(golden_roots, tmp_path):
    tiny_model_folder(golden_roots, DATASET, "Golden", "ccq", _shrink_ccq, _ccq)
    out = _predict(golden_roots, tmp_path, "ccq", "Golden")
    path = next(out.glob("*.nii.gz"))
    image = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(image)
    boxes = json.loads(next(out.glob("*_boxes.json")).read_text())["organs"]
    got = {"case": path.name, "shape": list(arr.shape), "spacing_itk": list(image.GetSpacing()),
           "boxes": {o["name"]: o["box_voxel"] for o in boxes},
           "labels": {str(v): {"voxels": int((arr == v).sum()),
                               "centroid": np.argwhere(arr == v).mean(0).round(3).tolist()}
                      for v in np.unique(arr) if v}}

    def check(want, got):
        assert got["case"] == want["case"] and got["shape"] == want["shape"]
        np.testing.assert_allclose(got["spacing_itk"], want["spacing_itk"], rtol=1e-6)
        assert set(got["labels"]) == set(want["labels"]) and set(got["boxes"]) == set(want["boxes"])
        for name, box in want["boxes"].items():       # largest component: whole voxels, one of slack per edge
            np.testing.assert_allclose(got["boxes"][name], box, atol=1, err_msg=name)
        for v, w in want["labels"].items():
            g = got["labels"][v]
            assert abs(g["voxels"] - w["voxels"]) <= max(2, COUNT_RTOL * w["voxels"]), (v, g, w)
            np.testing.assert_allclose(g["centroid"], w["centroid"], atol=CENTROID_ATOL, err_msg=v)
    _compare("ccq_label_map.json", got, check)


def test_ensemble_of_model_folders_equals_the_fold_ensemble(golden_roots, tmp_path):
    """``-tr A B`` averages two model folders' networks exactly as ``-f 0 1`` averages two folds of one folder
    (label maps and boxes alike); a folder trained on other plans is refused with one line and nothing written."""
    a = tiny_model_folder(golden_roots, DATASET, "EnsA", "ccq", _shrink_ccq, _ccq)
    b = tiny_model_folder(golden_roots, DATASET, "EnsB", "ccq", _shrink_ccq, _ccq)
    cfg = json.loads((a / "plans.json").read_text())["configurations"]["ccq"]
    torch.manual_seed(1)     # B: another network on the same plans (a second seed)
    torch.save({"network": _ccq(cfg).state_dict()}, b / "fold_0" / "checkpoint_final.pth")
    folds = golden_roots["results"] / DATASET / "EnsAB__autoorganPlans__ccq"
    shutil.copytree(a, folds)
    (folds / "fold_1").mkdir()
    shutil.copy(b / "fold_0" / "checkpoint_final.pth", folds / "fold_1" / "checkpoint_final.pth")

    def predict(out, *trainers, folds=("0",)):
        return run_cli("autoorgan_predict", "-i", str(golden_roots["raw"] / DATASET / "imagesTs"), "-o", str(out),
                       "-d", "900", "-c", "ccq", "-tr", *trainers, "-f", *folds, "-device", "cpu", "--quiet",
                       env_roots=golden_roots)

    results = {}
    for name, trainers, fs in (("ens", ("EnsA", "EnsB"), ("0",)), ("folds", ("EnsAB",), ("0", "1")),
                               ("a", ("EnsA",), ("0",))):
        res = predict(tmp_path / name, *trainers, folds=fs)
        assert res.returncode == 0, res.stderr[-3000:]
        label_map = next((tmp_path / name).glob("*.nii.gz"))
        boxes = json.loads(next((tmp_path / name).glob("*_boxes.json")).read_text())["organs"]
        results[name] = (sitk.GetArrayFromImage(sitk.ReadImage(str(label_map))), boxes)
    np.testing.assert_array_equal(results["ens"][0], results["folds"][0])
    assert results["ens"][1] == results["folds"][1]
    assert (results["ens"][0] != results["a"][0]).any()        # B's network did change the result
    info = json.loads((tmp_path / "ens" / "prediction_info.json").read_text())
    assert [m["model_folder"] for m in info["ensemble"]] == [str(a), str(b)]
    # the Python API: a list of model folders is the same ensemble
    image = next((golden_roots["raw"] / DATASET / "imagesTs").glob("*_0000.nii.gz"))
    api = autoorgan.Predictor.from_model_folder([a, b], [0], device="cpu").predict(image).label_map
    np.testing.assert_array_equal(api, sitk.GetArrayFromImage(sitk.ReadImage(str(
        tmp_path / "ens" / image.name.replace("_0000", "")))))

    plans = json.loads((b / "plans.json").read_text())
    plans["configurations"]["ccq"]["spacing"] = [s * 1.5 for s in plans["configurations"]["ccq"]["spacing"]]
    (b / "plans.json").write_text(json.dumps(plans))
    res = predict(tmp_path / "refused", "EnsA", "EnsB")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "cannot ensemble" in res.stderr and "spacing" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "refused").exists()
