"""Real data from ../shared/data (skipped with a reason where absent): small linked subsets, the real converters."""
import json

import pytest

from conftest import SHARED_DATA, run_cli

HIPPO = SHARED_DATA / "Task04_Hippocampus"
OPENKBP = SHARED_DATA / "Dataset501_OpenKBP"


@pytest.mark.skipif(not HIPPO.is_dir(), reason=f"{HIPPO} is absent (real data lives in ../shared/data)")
def test_msd_hippocampus_subset_converts_and_plans(tmp_path, roots):
    src = tmp_path / "Task04_Hippocampus"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (src / sub).mkdir(parents=True)
    cases = sorted(p.name for p in (HIPPO / "labelsTr").glob("*.nii.gz"))[:6]
    for c in cases:
        (src / "imagesTr" / c).symlink_to(HIPPO / "imagesTr" / c)
        (src / "labelsTr" / c).symlink_to(HIPPO / "labelsTr" / c)
    ds = json.loads((HIPPO / "dataset.json").read_text())
    ds["numTraining"] = len(cases)
    (src / "dataset.json").write_text(json.dumps(ds))
    res = run_cli("autoorgan_convert_MSD_dataset", "-i", str(src), "-d", "4")
    assert res.returncode == 0, res.stderr
    assert len(list((roots["raw"] / "Dataset004_Hippocampus" / "imagesTr").glob("*_0000.nii.gz"))) == 6
    res = run_cli("autoorgan_plan_and_preprocess", "-d", "4", "-np", "1", "--quiet")
    assert res.returncode == 0, res.stderr
    plans = json.loads((roots["preprocessed"] / "Dataset004_Hippocampus" / "autoorganPlans.json").read_text())
    assert plans["configurations"]["organdetr"]["organdetr"]["num_queries"] == 20  # rho 10 x 2 classes
    res = run_cli("autoorgan_convert_MSD_dataset", "-i", str(src), "-d", "4")
    assert res.returncode == 2 and "is taken" in res.stderr


@pytest.mark.skipif(not OPENKBP.is_dir(), reason=f"{OPENKBP} is absent (real data lives in ../shared/data)")
def test_openkbp_subset_partial_annotation(tmp_path, roots):
    src = tmp_path / "Dataset501_OpenKBP"
    for sub in ("imagesTr", "labelsTr"):
        (src / sub).mkdir(parents=True)
    contoured = json.loads((OPENKBP / "contoured.json").read_text())["contoured"]
    cases = sorted(contoured, key=lambda c: (len(contoured[c]), c))[:5]  # the most partially labeled cases
    for c in cases:
        (src / "imagesTr" / f"{c}_0000.nii.gz").symlink_to(OPENKBP / "imagesTr" / f"{c}_0000.nii.gz")
        (src / "labelsTr" / f"{c}.nii.gz").symlink_to(OPENKBP / "labelsTr" / f"{c}.nii.gz")
    ds = json.loads((OPENKBP / "dataset.json").read_text())
    ds["numTraining"] = len(cases)
    (src / "dataset.json").write_text(json.dumps(ds))
    (src / "contoured.json").write_text(json.dumps({"contoured": {c: contoured[c] for c in cases}}))
    res = run_cli("autoorgan_convert_contoured_json", "-i", str(src))
    assert res.returncode == 0, res.stderr
    res = run_cli("autoorgan_plan_and_preprocess", "-d", "501", "-np", "1", "--quiet")
    assert res.returncode == 0, res.stderr
    fp = json.loads((roots["preprocessed"] / "Dataset501_OpenKBP" / "dataset_fingerprint.json").read_text())
    for c in cases:
        names = {v: k for k, v in ds["labels"].items()}
        assert [names[v] for v in fp["autoorgan"]["cases"][c]["annotated"]] == \
            sorted(contoured[c], key=lambda n: ds["labels"][n])
    # OpenKBP's headers put the parotids apart along world y; the plans mirror left-right along the array axis they
    # lie apart along (pt_53 contours both), found here from its label map
    import numpy as np
    import SimpleITK as sitk
    plans = json.loads((roots["preprocessed"] / "Dataset501_OpenKBP" / "autoorganPlans.json").read_text())
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(OPENKBP / "labelsTr" / "pt_53.nii.gz")))
    apart = np.argwhere(seg == ds["labels"]["LeftParotid"]).mean(0) - \
        np.argwhere(seg == ds["labels"]["RightParotid"]).mean(0)
    ccq = plans["configurations"]["ccq"]
    assert ccq["lateral_pairs"] == [[ds["labels"]["RightParotid"], ds["labels"]["LeftParotid"]]]
    assert ccq["lateral_axis"] == plans["transpose_forward"].index(int(np.argmax(np.abs(apart)))), ccq["_why"]
    assert "headers put their separation along world x in only 0%" in ccq["_why"]["lateral_axis"]
    # body-mask intensity statistics: fat to bone, not only the contoured organs
    ct = fp["foreground_intensity_properties_per_channel"]["0"]
    assert ct["percentile_00_5"] < -50 and ct["percentile_99_5"] > 300
