"""autoorgan_merge_datasets: labels matched by name, per-case annotation sets kept, images not copied."""
from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from conftest import run_cli


def _dataset(root, did, name, labels, n=2, per_case=None):
    folder = root / f"Dataset{did:03d}_{name}"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for i in range(n):
        img = np.full((8, 9, 10), -1000, np.int16)
        img[1:7, 1:8, 1:9] = 40
        seg = np.zeros((8, 9, 10), np.uint8)
        for j, value in enumerate(v for k, v in labels.items() if v):
            seg[1 + j, 2:4, 2:4] = value
        for arr, path in ((img, folder / "imagesTr" / f"c{i}_0000.nii.gz"),
                          (seg, folder / "labelsTr" / f"c{i}.nii.gz")):
            im = sitk.GetImageFromArray(arr)
            im.SetSpacing((1.0, 1.5, 2.0))
            sitk.WriteImage(im, str(path))
    ds = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": n, "file_ending": ".nii.gz"}
    if per_case:
        ds["annotated_labels"] = {"cases": per_case}
    (folder / "dataset.json").write_text(json.dumps(ds))
    return folder


def test_merge_maps_labels_by_name_and_keeps_annotation(roots):
    a = _dataset(roots["raw"], 801, "Liv", {"background": 0, "Liver": 1, "Kidney": 2},
                 per_case={"c1": ["Kidney"]})
    b = _dataset(roots["raw"], 802, "Spl", {"background": 0, "Kidney": 1, "Spleen": 2})
    res = run_cli("autoorgan_merge_datasets", "-d", "801", "802", "-o", "810", env_roots=roots)
    assert res.returncode == 0, res.stderr
    merged = roots["raw"] / "Dataset810_Merged"
    ds = json.loads((merged / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "Liver": 1, "Kidney": 2, "Spleen": 3}
    assert ds["numTraining"] == 4 and not (merged / "imagesTr").exists()  # images are referenced, not copied
    entry = ds["dataset"]["Spl_c0"]
    assert entry["images"] == [str((b / "imagesTr" / "c0_0000.nii.gz").resolve())]
    from autoorgan.dataset.raw import annotated_labels, list_cases, load_dataset_json
    ds_loaded = load_dataset_json(merged)
    assert annotated_labels(ds_loaded, "Liv_c0") == [1, 2]
    assert annotated_labels(ds_loaded, "Liv_c1") == [2]            # the source's per-case annotation, by name
    assert annotated_labels(ds_loaded, "Spl_c0") == [2, 3]
    cases = list_cases(merged, ds_loaded)
    spl = sitk.GetArrayFromImage(sitk.ReadImage(str(cases["Spl_c0"].label)))
    src = sitk.GetArrayFromImage(sitk.ReadImage(str(b / "labelsTr" / "c0.nii.gz")))
    assert (spl[src == 1] == 2).all() and (spl[src == 2] == 3).all() and (spl[src == 0] == 0).all()
    assert str(cases["Liv_c0"].label) == str((a / "labelsTr" / "c0.nii.gz").resolve())  # values unchanged: referenced
    # the merged dataset passes the integrity check and is planned like any other
    res = run_cli("autoorgan_plan_and_preprocess", "-d", "810", "-c", "ccq", "--no_pp", "-np", "1", "--quiet",
                  env_roots=roots)
    assert res.returncode == 0, res.stderr
    again = run_cli("autoorgan_merge_datasets", "-d", "801", "802", "-o", "810", env_roots=roots)
    assert again.returncode == 2 and "is taken" in again.stderr
