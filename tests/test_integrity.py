"""Every kind of bad input gets its own one-line error, exit code 2, no traceback, nothing written."""
import gzip
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import assert_one_line_error, edit_json, run_cli, run_main

CASE = "phantom_003"


def _img(folder, case=CASE):
    return folder / "imagesTr" / f"{case}_0000.nii.gz"


def _lab(folder, case=CASE):
    return folder / "labelsTr" / f"{case}.nii.gz"


def _rewrite(path, fn):
    img = sitk.ReadImage(str(path))
    out = fn(img)
    sitk.WriteImage(out, str(path))


def _with_array(img, arr):
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return out


def _set(attr, value):
    def fn(img):
        getattr(img, f"Set{attr}")(value)
        return img
    return fn


BREAKERS = {
    "missing_channel": (lambda d: edit_json(d / "dataset.json", lambda j: j["channel_names"].update({"1": "PET"})),
                        "channel file phantom_000_0001.nii.gz is missing"),
    "extra_channel": (lambda d: shutil.copy(_img(d), d / "imagesTr" / f"{CASE}_0001.nii.gz"),
                      f"case {CASE}: extra channel file {CASE}_0001.nii.gz"),
    "shape_mismatch": (lambda d: _rewrite(_lab(d), lambda im: sitk.Image([s + 1 for s in im.GetSize()],
                                                                          im.GetPixelID())),
                       "label map does not match the image geometry (size"),
    "spacing_mismatch": (lambda d: _rewrite(_lab(d), _set("Spacing", (9.0, 9.0, 9.0))),
                         "label map does not match the image geometry (spacing"),
    "origin_mismatch": (lambda d: _rewrite(_lab(d), _set("Origin", (1.0, 2.0, 3.0))),
                        "label map does not match the image geometry (origin"),
    "direction_mismatch": (lambda d: _rewrite(_lab(d), _set("Direction", (0, 1, 0, 1, 0, 0, 0, 0, 1.0))),
                           "label map does not match the image geometry (direction"),
    "label_value_unknown": (lambda d: _rewrite(_lab(d), lambda im: _with_array(
        im, np.where(sitk.GetArrayFromImage(im) == 1, 9, sitk.GetArrayFromImage(im)).astype(np.uint8))),
        "label value(s) [9] are not in dataset.json labels"),
    "label_not_integer": (lambda d: _rewrite(_lab(d), lambda im: _with_array(
        im, sitk.GetArrayFromImage(im).astype(np.float32) * 0.5)), "non-integer values"),
    "empty_folder": (lambda d: [p.unlink() for p in (d / "imagesTr").iterdir()], "imagesTr is empty"),
    "truncated_file": (lambda d: _img(d).write_bytes(_img(d).read_bytes()[:2000]),
                       f"case {CASE}: channel 0 image {CASE}_0000.nii.gz cannot be read"),
    "corrupt_file": (lambda d: _img(d).write_bytes(gzip.compress(b"not an image at all")),
                     "cannot be read (unreadable or truncated"),
    "nan_intensity": (lambda d: _rewrite(_img(d), lambda im: _with_array(
        im, np.where(sitk.GetArrayFromImage(im) > 100, np.nan, sitk.GetArrayFromImage(im)).astype(np.float32))),
        "NaN/inf voxel"),
    "image_2d": (lambda d: _rewrite(_img(d), lambda im: im[:, :, 3]), "is 2D"),
    "image_4d": (lambda d: _rewrite(_img(d), lambda im: sitk.JoinSeries([im, im])),
                 "is 4D"),
    "duplicate_case_id": (lambda d: shutil.copy(_img(d), d / "imagesTr" / "PHANTOM_003_0000.nii.gz"),
                          "differ only in upper/lower case (duplicate case id)"),
    "duplicate_case_other_ending": (lambda d: shutil.copy(_img(d), d / "imagesTr" / f"{CASE}_0000.nrrd"),
                                    "ends with .nrrd but dataset.json says file_ending '.nii.gz'"),
    "label_without_image": (lambda d: shutil.copy(_lab(d), d / "labelsTr" / "orphan.nii.gz"),
                            "label orphan.nii.gz"),
    "missing_label": (lambda d: _lab(d).unlink(), f"case {CASE}: label file {CASE}.nii.gz is missing"),
    "dataset_json_not_json": (lambda d: (d / "dataset.json").write_text("{not json"), "is not valid JSON"),
    "dataset_json_missing_key": (lambda d: edit_json(d / "dataset.json", lambda j: j.pop("file_ending")),
                                 "has no 'file_ending' entry"),
    "dataset_json_bad_labels": (lambda d: edit_json(d / "dataset.json", lambda j: j["labels"].update({"x": 12})),
                                "label values must be unique and consecutive"),
    "dataset_json_wrong_count": (lambda d: edit_json(d / "dataset.json", lambda j: j.update(numTraining=99)),
                                 "numTraining 99"),
    "annotation_unknown_label": (lambda d: edit_json(d / "dataset.json", lambda j: j.update(
        annotated_labels={"cases": {CASE: ["liver", "pancreas"]}})), "lists 'pancreas', which is not a label"),
}


@pytest.mark.parametrize("kind", sorted(BREAKERS))
def test_bad_input_gets_one_line_error(kind, phantom, roots, capsys):
    """In this process (the installed scripts' exit status and stderr: test_hostile_inputs)."""
    from autoorgan.cli.plan_and_preprocess import main
    breaker, expected = BREAKERS[kind]
    breaker(phantom)
    assert_one_line_error(*run_main(capsys, main, "-d", "900", "-np", "1", "--quiet"), expected)
    assert not (roots["preprocessed"] / phantom.name).exists(), "nothing may be written on bad input"


def test_unknown_dataset_id_and_unset_paths(roots):
    res = run_cli("autoorgan_plan_and_preprocess", "-d", "123")
    assert res.returncode == 2 and "no dataset with id 123" in res.stderr and "Traceback" not in res.stderr


def test_valid_dataset_passes_the_check(phantom):
    from autoorgan.dataset.raw import list_cases, load_dataset_json
    from autoorgan.planning.fingerprint import extract_fingerprint
    ds = load_dataset_json(phantom)
    fp = extract_fingerprint(list_cases(phantom, ds), ds, num_processes=1, progress=False)
    assert fp["autoorgan"]["num_cases"] == 8


def test_a_contoured_list_without_annotated_labels_is_warned_about(phantom, roots, capsys):
    """A dataset shipped with a per-case organ list (OpenKBP's contoured.json) that was not recorded in dataset.json
    would silently train uncontoured organs as background: the fingerprint step says so and names the fix."""
    from autoorgan.cli.plan_and_preprocess import main_fingerprint
    (phantom / "contoured.json").write_text(json.dumps({"contoured": {CASE: ["liver"]}}))
    code, err = run_main(capsys, main_fingerprint, "-d", "900", "-np", "1", "--quiet")
    assert code == 0 and "warning" in err and "autoorgan_convert_contoured_json -i" in err, err
    edit_json(phantom / "dataset.json", lambda j: j.update(annotated_labels={"cases": {CASE: ["liver"]}}))
    code, err = run_main(capsys, main_fingerprint, "-d", "900", "-np", "1", "--quiet")
    assert code == 0 and "warning" not in err, err
