"""Hostile inputs and faults, one test per kind (the table is docs/reliability.md).

The rule every kind checks: a one-line error that names the file or option and the fix, a non-zero exit, no
traceback, nothing half-written, the other cases of a batch unaffected; and nothing read from a dataset, plans
file, model folder or checkpoint runs code or writes outside the folders the user named. Most commands run in this
process (``main(argv)``, fast); those that could take the whole process down run as subprocesses.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import assert_one_line_error, cli_env, edit_json, run_cli, run_main, tiny_model_folder
from learning_checks import tiny_ccq_plans, tiny_organdetr_plans

DATASET = "Dataset900_Phantom"
MARKER = "PAYLOAD_RAN"
SHORT = ("--epochs", "1", "--iters_per_epoch", "1", "--val_every", "1")  # bounded even where the code under test fails


class Payload:
    """Unpickling this runs ``touch MARKER``: what a malicious checkpoint would do."""

    def __init__(self, folder: Path):
        self.cmd = f"touch {folder / MARKER}"

    def __reduce__(self):
        return os.system, (self.cmd,)


# ---------------------------------------------------------------------------------------------------------------
# fixtures
@pytest.fixture
def raw(roots, phantom_template):
    """A private copy of the 8-case phantom in this test's raw root: (roots, dataset folder)."""
    folder = roots["raw"] / DATASET
    shutil.copytree(phantom_template, folder)
    return roots, folder


def pp_main():
    from autoorgan.cli.plan_and_preprocess import main
    return main


def plan(capsys, *extra):
    return run_main(capsys, pp_main(), "-d", "900", "-np", "1", "--quiet", "-c", "organdetr", "-device", "cpu",
                    "--no_pp", *extra)


@pytest.fixture(scope="module")
def planned(tmp_path_factory, phantom_template):
    """Planned and preprocessed (organdetr, tiny network) phantom: roots."""
    roots = {k: tmp_path_factory.mktemp("hostile_planned") / k for k in ("raw", "preprocessed", "results")}
    shutil.copytree(phantom_template, roots["raw"] / DATASET)
    res = run_cli("autoorgan_plan_and_preprocess", "-d", "900", "-c", "organdetr", "ccq", "-device", "cpu", "-np",
                  "2", "--quiet", env_roots=roots)
    assert res.returncode == 0, res.stderr
    path = roots["preprocessed"] / DATASET / "autoorganPlans.json"
    plans = json.loads(path.read_text())
    tiny_organdetr_plans(plans)
    tiny_ccq_plans(plans)
    path.write_text(json.dumps(plans))
    return roots


@pytest.fixture
def env(planned, monkeypatch):
    for kind, path in planned.items():
        monkeypatch.setenv(f"autoorgan_{kind}", str(path))
    return planned


@pytest.fixture(scope="module")
def models(planned):
    """Untrained tiny model folders (organdetr ``Tiny``, ccq ``TinyCCQ``) on the planned phantom."""
    return {"organdetr": tiny_model_folder(planned, DATASET, "Tiny", "organdetr"),
            "ccq": tiny_model_folder(planned, DATASET, "TinyCCQ", "ccq")}


def train_main():
    from autoorgan.cli.train import main
    return main


def train(capsys, *args):
    return run_main(capsys, train_main(), "900", "organdetr", *args)


def predict_main():
    from autoorgan.cli.predict import main
    return main


def evaluate_main():
    from autoorgan.cli.evaluate import main
    return main


def _volume(spacing=(3.0, 3.0, 4.0), shape=(24, 30, 28), dtype=np.int16, value=30):
    """A small CT-like image (body in air) as a SimpleITK image."""
    arr = np.full(shape, -1000, dtype)
    arr[4:-4, 5:-5, 5:-5] = value
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    return img


def _inputs(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sitk.WriteImage(_volume(), str(folder / f"good{i}_0000.nii.gz"))
    return folder


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ---------------------------------------------------------------------------------------------------------------
# raw datasets: autoorgan_plan_and_preprocess
class Replace:
    """Returned by a dataset.json edit: write this instead of the edited object (a str is written verbatim)."""

    def __init__(self, content):
        self.content = content


def _break_dataset_json(fn):
    def setup(folder: Path):
        path = folder / "dataset.json"
        ds = json.loads(path.read_text())
        out = fn(ds)
        if isinstance(out, Replace):
            path.write_text(out.content if isinstance(out.content, str) else json.dumps(out.content))
        else:
            path.write_text(json.dumps(ds))
    return setup


RAW_KINDS = {
    "dataset.json missing": (lambda f: (f / "dataset.json").unlink(), "dataset.json is missing"),
    "dataset.json not JSON": (_break_dataset_json(lambda ds: Replace("{not json")), "not valid JSON"),
    "dataset.json not an object": (_break_dataset_json(lambda ds: Replace([1, 2])), "must hold a JSON object"),
    "no channel_names": (_break_dataset_json(lambda ds: ds.pop("channel_names")), "'channel_names'"),
    "labels without background": (_break_dataset_json(lambda ds: ds["labels"].pop("background")),
                                  "background"),
    "labels not consecutive": (_break_dataset_json(lambda ds: ds["labels"].update(aorta=9)), "consecutive"),
    "file_ending is a path": (_break_dataset_json(lambda ds: ds.update(file_ending="/../../x.nii.gz")),
                              "file_ending"),
    "numTraining wrong": (_break_dataset_json(lambda ds: ds.update(numTraining=99)), "numTraining"),
    "annotated_labels is a list": (_break_dataset_json(lambda ds: ds.update(annotated_labels=["liver"])),
                                   "annotated_labels"),
    "annotated_labels.cases is a list": (
        _break_dataset_json(lambda ds: ds.update(annotated_labels={"cases": ["phantom_000"]})), "must be an object"),
    "annotated_labels names an unknown organ": (
        _break_dataset_json(lambda ds: ds.update(annotated_labels={"cases": {"phantom_000": ["pancreas"]}})),
        "pancreas"),
    "annotated_labels names a case that does not exist": (
        _break_dataset_json(lambda ds: ds.update(annotated_labels={"cases": {"phantom_0000": ["liver"]}})),
        "phantom_0000"),
    "channel file missing": (lambda f: (f / "imagesTr" / "phantom_001_0000.nii.gz").unlink(), "phantom_001"),
    "label file missing": (lambda f: (f / "labelsTr" / "phantom_001.nii.gz").unlink(), "phantom_001"),
    "stray file in imagesTr": (lambda f: (f / "imagesTr" / "notes.txt").write_text("x"), "notes.txt"),
    "truncated image": (lambda f: _truncate(f / "imagesTr" / "phantom_002_0000.nii.gz"), "truncated"),
    "truncated label map": (lambda f: _truncate(f / "labelsTr" / "phantom_002.nii.gz"), "truncated"),
}


def _set_image(folder: Path, case: str, fn) -> None:
    path = folder / "imagesTr" / f"{case}_0000.nii.gz"
    img = fn(sitk.ReadImage(str(path)))
    sitk.WriteImage(img, str(path))


def _nan_image(img):
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    arr[2, 2, 2] = np.nan
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return out


def _spacing(value):
    def fn(folder: Path):
        for sub, name in (("imagesTr", "phantom_003_0000.nii.gz"), ("labelsTr", "phantom_003.nii.gz")):
            img = sitk.ReadImage(str(folder / sub / name))
            img.SetSpacing((value,) * 3)
            sitk.WriteImage(img, str(folder / sub / name))
    return fn


def _bad_label_value(folder: Path):
    path = folder / "labelsTr" / "phantom_004.nii.gz"
    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img)
    arr[0, 0, 0] = 42
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(path))


def _label_spacing(folder: Path):
    path = folder / "labelsTr" / "phantom_004.nii.gz"
    img = sitk.ReadImage(str(path))
    img.SetSpacing(tuple(s * 1.5 for s in img.GetSpacing()))
    sitk.WriteImage(img, str(path))


def _two_d(folder: Path):
    for sub, name in (("imagesTr", "phantom_005_0000.nii.gz"), ("labelsTr", "phantom_005.nii.gz")):
        img = sitk.ReadImage(str(folder / sub / name))
        sitk.WriteImage(img[:, :, 3], str(folder / sub / name))


RAW_KINDS.update({
    "NaN voxels": (lambda f: _set_image(f, "phantom_002", _nan_image), "NaN"),
    "label value not in labels": (_bad_label_value, "42"),
    "label map on another grid": (_label_spacing, "label map does not match"),
    "2D image": (_two_d, "2D"),
    "spacing 1e4 mm": (_spacing(1e4), "spacing"),
    "spacing 0.001 mm": (_spacing(0.001), "spacing"),
})


@pytest.mark.parametrize("kind", sorted(RAW_KINDS))
def test_raw_dataset_defects_are_one_line_errors(kind, raw, capsys):
    roots, folder = raw
    setup, needle = RAW_KINDS[kind]
    setup(folder)
    code, err = plan(capsys)
    assert_one_line_error(code, err, needle)
    assert not (roots["preprocessed"] / DATASET / "autoorganPlans.json").exists()  # nothing half-written


def test_file_replaced_after_the_first_run_is_checked_again(raw, capsys):
    roots, folder = raw
    assert plan(capsys)[0] == 0
    _truncate(folder / "imagesTr" / "phantom_006_0000.nii.gz")
    code, err = plan(capsys)
    assert_one_line_error(code, err, "phantom_006", "truncated")


def test_non_utf8_file_name_does_not_abort(raw):
    roots, folder = raw
    bad = os.fsencode(folder / "imagesTr") + b"/phantom_\xff_0000.nii.gz"
    shutil.copy(folder / "imagesTr" / "phantom_000_0000.nii.gz", bad)
    res = run_cli("autoorgan_plan_and_preprocess", "-d", "900", "-np", "1", "--quiet", "--no_pp", env_roots=roots)
    assert res.returncode == 2 and "not valid UTF-8" in res.stderr and "Traceback" not in res.stderr, res.stderr


@pytest.mark.parametrize("args, needle", [
    (("-overwrite_target_spacing", "0", "0", "0"), "-overwrite_target_spacing"),
    (("-overwrite_target_spacing", "1", "nan", "1"), "-overwrite_target_spacing"),
    (("-gpu_memory_target", "-1"), "-gpu_memory_target"),
    (("-cpu_memory_target", "-1"), "-cpu_memory_target"),
    (("--rho", "1"), "--rho"),
    (("--lambda", "nan"), "--lambda"),
    (("-np", "0"), "-np"),
])
def test_planning_options_out_of_range(args, needle, raw, capsys):
    code, err = plan(capsys, *args)
    assert_one_line_error(code, err, needle)


def test_unknown_dataset_id(raw, capsys):
    code, err = run_main(capsys, pp_main(), "-d", "977", "--quiet")
    assert_one_line_error(code, err, "977")


# ---------------------------------------------------------------------------------------------------------------
# plans files (shared and edited by hand): never a path, never code
def _edited_plans(roots, fn) -> Path:
    path = roots["preprocessed"] / DATASET / "autoorganPlans.json"
    plans = json.loads(path.read_text())
    fn(plans)
    path.write_text(json.dumps(plans))
    return path


@pytest.mark.parametrize("identifier", ["../../victim", "/tmp/autoorgan_victim_abs", ".."])
def test_plans_data_identifier_cannot_escape(identifier, raw, capsys, tmp_path):
    roots, _ = raw
    assert plan(capsys)[0] == 0
    victim = roots["preprocessed"] / DATASET / identifier if not identifier.startswith("/") else Path(identifier)
    victim = victim.resolve()
    victim.mkdir(parents=True, exist_ok=True)
    (victim / "keep.txt").write_text("precious")
    before = sorted(p.name for p in victim.iterdir())
    _edited_plans(roots, lambda p: p["configurations"]["organdetr"].update(data_identifier=identifier))
    from autoorgan.cli.plan_and_preprocess import main_preprocess
    code, err = run_main(capsys, main_preprocess, "-d", "900", "-c", "organdetr", "-np", "1", "--quiet")
    assert_one_line_error(code, err, "data_identifier")
    assert (victim / "keep.txt").read_text() == "precious" and sorted(p.name for p in victim.iterdir()) == before
    (victim / "keep.txt").unlink()


@pytest.mark.parametrize("edit, needle", [
    (lambda p: p["configurations"]["organdetr"].update(spacing=[-1, 2, 2]), "spacing"),
    (lambda p: p["configurations"]["organdetr"].update(input_shape=[0, 32, 32]), "input_shape"),
    (lambda p: p["configurations"]["organdetr"].update(batch_size=-2), "batch_size"),
    (lambda p: p.update(transpose_forward=[0, 0, 1]), "transpose"),
    (lambda p: p.pop("configurations"), "configurations"),
])
def test_plans_with_impossible_numbers(edit, needle, raw, capsys):
    roots, _ = raw
    assert plan(capsys)[0] == 0
    _edited_plans(roots, edit)
    from autoorgan.cli.plan_and_preprocess import main_preprocess
    code, err = run_main(capsys, main_preprocess, "-d", "900", "-c", "organdetr", "-np", "1", "--quiet")
    assert_one_line_error(code, err, needle)


def test_plans_not_json(raw, capsys):
    roots, _ = raw
    assert plan(capsys)[0] == 0
    (roots["preprocessed"] / DATASET / "autoorganPlans.json").write_text("{broken")
    from autoorgan.cli.plan_and_preprocess import main_preprocess
    code, err = run_main(capsys, main_preprocess, "-d", "900", "-c", "organdetr", "-np", "1", "--quiet")
    assert_one_line_error(code, err, "not valid JSON")


# ---------------------------------------------------------------------------------------------------------------
# training
@pytest.mark.parametrize("args, needle", [
    (("0", "--batch_size", "-2"), "--batch_size"),
    (("0", "--lr", "nan"), "--lr"),
    (("0", "--lr", "1e9"), "--lr"),
    (("0", "-num_workers", "-1"), "-num_workers"),
    (("0", "--epochs", "0"), "--epochs"),
    (("0", "--max_minutes", "-5"), "--max_minutes"),
    (("0", "--lr", "abc"), "--lr"),
    (("0", "-tr", "../../escape"), "trainer name"),
    (("x",), "fold must be a number"),
])
def test_training_options_out_of_range(args, needle, env, capsys):
    bounded = () if "--epochs" in args else SHORT
    code, err = train(capsys, *args, "-device", "cpu", *bounded)
    assert_one_line_error(code, err, needle)
    assert not (env["results"].parent / "escape").exists()


@pytest.mark.parametrize("config, args, needle", [
    ("masked_sigmoid", ("--patch_size", "50", "50", "50"), "does not fit the planned network"),
    ("masked_sigmoid", ("--oversample_foreground", "1.5"), "--oversample_foreground"),
    ("organdetr", ("--patch_size", "32", "32", "32"), "is for the patch-based segmentation"),
    ("organdetr", ("--oversample_foreground", "1"), "is for the patch-based segmentation"),
    ("dodnet", ("--deep_supervision",), "is for masked_sigmoid"),
    ("ccq", ("--no_deep_supervision",), "is for masked_sigmoid"),
    ("dodnet", ("--classes_per_patch", "3"), "is for ccq"),
    ("ccq", ("--classes_per_patch", "0"), "--classes_per_patch"),
    ("organdetr", ("--lateral_mirror",), "are for the segmentation configurations"),
    ("organdetr", ("--base_width", "16"), "is for the segmentation configurations"),
    ("masked_sigmoid", ("--base_width", "0"), "--base_width"),
])
def test_segmentation_training_options_that_cannot_apply(config, args, needle, env, capsys):
    code, err = run_main(capsys, train_main(), "900", config, "0", "-device", "cpu", *SHORT, *args)
    assert_one_line_error(code, err, needle)


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not valid JSON"),
    (json.dumps({"train": []}), "must be a list"),
    (json.dumps([{"train": ["phantom_000"], "val": []}]), "no validation cases"),
])
def test_broken_splits_file(content, needle, env, capsys):
    path = env["preprocessed"] / DATASET / "splits_final.json"
    saved = path.read_text() if path.is_file() else None
    path.write_text(content)
    try:
        code, err = train(capsys, "0", "-device", "cpu", "--epochs", "1", "--iters_per_epoch", "1")
        assert_one_line_error(code, err, needle, "splits_final.json")
    finally:
        path.unlink()
        if saved is not None:
            path.write_text(saved)


def _fold(roots, trainer, fold="0"):
    return roots["results"] / DATASET / f"{trainer}__autoorganPlans__organdetr" / f"fold_{fold}"


def test_payload_checkpoint_does_not_run_when_continuing(env, capsys):
    fold = _fold(env, "Payload")
    fold.mkdir(parents=True)
    torch.save({"network": {}, "evil": Payload(fold)}, fold / "checkpoint_latest.pth")
    code, err = train(capsys, "0", "-device", "cpu", "--c", "-tr", "Payload", "-num_workers", "0", *SHORT)
    assert_one_line_error(code, err, "cannot read checkpoint", "checkpoint_latest.pth")
    assert not (fold / MARKER).exists()


def test_damaged_checkpoint_when_continuing(env, capsys):
    fold = _fold(env, "Damaged")
    fold.mkdir(parents=True)
    (fold / "checkpoint_latest.pth").write_bytes(b"\x80\x02 not a checkpoint")
    code, err = train(capsys, "0", "-device", "cpu", "--c", "-tr", "Damaged", "-num_workers", "0", *SHORT)
    assert_one_line_error(code, err, "cannot read checkpoint")


def test_second_training_in_the_same_fold_is_refused(env, capsys):
    from autoorgan.utils.locks import folder_lock
    fold = _fold(env, "Busy")
    with folder_lock(fold, "training"):
        code, err = train(capsys, "0", "-device", "cpu", "-tr", "Busy", "-num_workers", "0", *SHORT)
    assert_one_line_error(code, err, "in use by", str(fold))


def test_plans_naming_code_as_a_layer_are_refused(env, capsys, tmp_path):
    """Before the allow-list, this plans file ran ``touch`` when the network was built (checked once)."""
    path = env["preprocessed"] / DATASET / "autoorganPlans.json"
    saved = path.read_text()
    plans = json.loads(saved)
    marker = tmp_path / MARKER
    plans["configurations"]["ccq"]["architecture"]["arch_kwargs"].update(nonlin="os.system",
                                                                         nonlin_kwargs={"command": f"touch {marker}"})
    path.write_text(json.dumps(plans))
    try:
        code, err = run_main(capsys, train_main(), "900", "ccq", "0", "-device", "cpu", "-num_workers", "0",
                             "-tr", "CodeInPlans", *SHORT)
        assert_one_line_error(code, err, "os.system")
        assert not marker.exists()
    finally:
        path.write_text(saved)


def test_disk_full_while_writing_a_checkpoint(env, capsys, monkeypatch):
    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 512 vs 448")
    monkeypatch.setattr(torch, "save", full)
    code, err = train(capsys, "0", "-device", "cpu", "--epochs", "1", "--iters_per_epoch", "1", "-num_workers", "0",
                      "-tr", "DiskFull")
    assert_one_line_error(code, err, "cannot write checkpoint", "disk full")
    assert not [p for p in _fold(env, "DiskFull").glob(".*tmp*")]


def test_divergence_is_a_one_line_error(env, capsys, monkeypatch):
    from autoorgan.losses import detection
    monkeypatch.setattr(detection.OrganDETRLoss, "__call__",
                        lambda self, out, t, s: (out["boxes"].sum() * float("nan"), {"total": float("nan")}))
    code, err = train(capsys, "0", "-device", "cpu", "--epochs", "1", "--iters_per_epoch", "1", "-num_workers", "0",
                      "-tr", "Diverged")
    assert_one_line_error(code, err, "diverged", "--lr")


def test_interrupting_training_says_how_to_continue(capsys):
    from autoorgan.utils.errors import cli_entry

    @cli_entry(interrupted="rerun the same command with --c to continue")
    def main(argv=None):
        raise KeyboardInterrupt
    code, err = run_main(capsys, main)
    assert code == 130 and "--c" in err


# ---------------------------------------------------------------------------------------------------------------
# prediction: untrusted model folders and checkpoints
def _copy_model(models, kind, tmp_path) -> Path:
    dst = tmp_path / "model" / models[kind].name
    shutil.copytree(models[kind], dst)
    return dst


def predict_from(capsys, model: Path, inputs: Path, out: Path, *extra):
    from autoorgan.cli.predict import main_from_modelfolder
    return run_main(capsys, main_from_modelfolder, "-i", inputs, "-o", out, "-m", model, "-device", "cpu", "--quiet",
                    *extra)


def test_payload_checkpoint_does_not_run_in_prediction(models, env, capsys, tmp_path):
    model = _copy_model(models, "organdetr", tmp_path)
    state = torch.load(model / "fold_0" / "checkpoint_final.pth", weights_only=True)
    state["evil"] = Payload(tmp_path)
    torch.save(state, model / "fold_0" / "checkpoint_final.pth")
    code, err = predict_from(capsys, model, _inputs(tmp_path / "in", 1), tmp_path / "out")
    assert_one_line_error(code, err, "cannot read checkpoint")
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d.update(file_ending="/../../ESCAPED.nii.gz"), "file_ending"),
    (lambda d: d.pop("labels"), "'labels'"),
])
def test_model_folder_dataset_json_cannot_escape(edit, needle, models, env, capsys, tmp_path):
    model = _copy_model(models, "ccq", tmp_path)
    edit_json(model / "dataset.json", edit)
    code, err = predict_from(capsys, model, _inputs(tmp_path / "in", 1), tmp_path / "deep" / "out")
    assert_one_line_error(code, err, needle)
    assert not list(tmp_path.rglob("ESCAPED*"))


@pytest.mark.parametrize("edit, needle", [
    (lambda p: p["configurations"]["organdetr"]["architecture"].update(network_class_name="os.system"),
     "does not provide"),
    (lambda p: p["configurations"]["organdetr"].update(input_shape=[-1, 4, 4]), "input_shape"),
])
def test_model_folder_plans_naming_code_or_nonsense(edit, needle, models, env, capsys, tmp_path):
    model = _copy_model(models, "organdetr", tmp_path)
    edit_json(model / "plans.json", edit)
    code, err = predict_from(capsys, model, _inputs(tmp_path / "in", 1), tmp_path / "out")
    assert_one_line_error(code, err, needle)


def test_model_folder_plans_not_json(models, env, capsys, tmp_path):
    model = _copy_model(models, "organdetr", tmp_path)
    (model / "plans.json").write_text("[")
    code, err = predict_from(capsys, model, _inputs(tmp_path / "in", 1), tmp_path / "out")
    assert_one_line_error(code, err, "not valid JSON")


def test_trainer_name_cannot_escape_the_results_root(models, env, capsys, tmp_path):
    code, err = run_main(capsys, predict_main(), "-i", _inputs(tmp_path / "in", 1), "-o", tmp_path / "out", "-d",
                         "900", "-tr", "../../x", "-device", "cpu")
    assert_one_line_error(code, err, "trainer name")


def test_busy_output_folder(models, env, capsys, tmp_path):
    from autoorgan.utils.locks import folder_lock
    out = tmp_path / "out"
    with folder_lock(out, "prediction"):
        code, err = predict_from(capsys, models["organdetr"], _inputs(tmp_path / "in", 1), out)
    assert_one_line_error(code, err, "in use by")


def test_box_outputs_refused_for_label_maps(models, env, capsys, tmp_path):
    code, err = predict_from(capsys, models["ccq"], _inputs(tmp_path / "in", 1), tmp_path / "out", "--save_png")
    assert_one_line_error(code, err, "--save_png")


def test_output_equal_to_input(models, env, capsys, tmp_path):
    inputs = _inputs(tmp_path / "in", 1)
    code, err = predict_from(capsys, models["organdetr"], inputs, inputs)
    assert_one_line_error(code, err, "output folder must differ")


def _dicom_with_gap(folder: Path) -> None:
    from test_predict import write_dicom_series
    write_dicom_series(_volume(), folder)
    files = sorted(folder.glob("*.dcm"))
    files[len(files) // 2].unlink()


BAD_SCANS = {
    "truncated": (lambda d: (sitk.WriteImage(_volume(), str(d / "truncated_0000.nii.gz")),
                             _truncate(d / "truncated_0000.nii.gz")), "damaged"),
    "nanvoxels": (lambda d: sitk.WriteImage(_nan_image(_volume(dtype=np.float32)), str(d / "nanvoxels_0000.nii.gz")),
                  "NaN"),
    "spacing500": (lambda d: sitk.WriteImage(_volume(spacing=(500.0, 500.0, 500.0)), str(d / "spacing500_0000.nii.gz")),
                   "implausible"),
    "spacing001": (lambda d: sitk.WriteImage(_volume(spacing=(0.01, 0.01, 0.01)), str(d / "spacing001_0000.nii.gz")),
                   "implausible"),
    "symloop": (lambda d: os.symlink(d / "symloop_0000.nii.gz", d / "symloop_0000.nii.gz"), "symloop"),
    "empty": (lambda d: (d / "empty_0000.nii.gz").write_bytes(b""), "empty"),
    "notimage": (lambda d: (d / "notimage_0000.nii.gz").write_bytes(gzip.compress(b"hello" * 100)), "damaged"),
    "twodim": (lambda d: sitk.WriteImage(_volume()[:, :, 3], str(d / "twodim_0000.nii.gz")), "3D"),
    "dicomgap": (lambda d: _dicom_with_gap(d / "dicomgap"), "missing slice"),
    "emptydicom": (lambda d: (d / "emptydicom").mkdir(), "no DICOM series"),
}


def test_a_batch_with_bad_scans_predicts_every_good_scan_and_resumes(models, env, tmp_path):
    """Every kind of bad scan among good ones: the good ones are predicted, each bad one is listed with its
    reason in prediction_info.json, the exit status is 1, and --continue_prediction resumes (run as a subprocess:
    a scan that crashed the reader would take the test down with it)."""
    inputs = _inputs(tmp_path / "in", 2)
    for make, _ in BAD_SCANS.values():
        make(inputs)
    bad_name = os.fsencode(inputs) + b"/latin\xe9_0000.nii.gz"
    shutil.copy(inputs / "good0_0000.nii.gz", bad_name)
    out = tmp_path / "out"
    argv = ["-i", str(inputs), "-o", str(out), "-m", str(models["organdetr"]), "-device", "cpu", "--quiet"]
    for attempt in ("first", "resumed"):
        extra = ["--continue_prediction"] if attempt == "resumed" else []
        res = run_cli("autoorgan_predict_from_modelfolder", *argv, *extra, env_roots=env)
        assert res.returncode == 1, res.stderr[-3000:]
        assert "Traceback" not in res.stderr
        info = json.loads((out / "prediction_info.json").read_text())
        failed = info["failed"]
        for name, (_, reason) in BAD_SCANS.items():
            assert name in failed and reason in failed[name], (attempt, name, failed.get(name))
        assert any("UTF-8" in why for cid, why in failed.items() if cid.startswith("latin")), failed
        assert sorted(p.name for p in out.glob("*_boxes.json")) == ["good0_boxes.json", "good1_boxes.json"]
        assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert "2 already done" in res.stdout


# ---------------------------------------------------------------------------------------------------------------
# evaluation
@pytest.fixture
def label_pair(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    arr = np.zeros((24, 30, 28), np.uint8)
    arr[4:-4, 5:-5, 5:-5] = 1
    lab = sitk.GetImageFromArray(arr)
    lab.SetSpacing((3.0, 3.0, 4.0))
    sitk.WriteImage(lab, str(ref / "case.nii.gz"))
    return ref, pred, lab


def _evaluate(capsys, ref, pred):
    return run_main(capsys, evaluate_main(), "-ref", ref, "-pred", pred, "-d", "900", "--quiet")


@pytest.mark.parametrize("change, needle", [
    (lambda im: im.SetOrigin((500.0, 0.0, 0.0)), "origin"),
    (lambda im: im.SetDirection((-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)), "direction"),
    (lambda im: im.SetSpacing((3.0, 3.0, 8.0)), "spacing"),
])
def test_evaluate_refuses_a_moved_or_flipped_prediction(change, needle, label_pair, raw, capsys):
    ref, pred, lab = label_pair
    moved = sitk.Image(lab)
    change(moved)
    sitk.WriteImage(moved, str(pred / "case.nii.gz"))
    code, err = _evaluate(capsys, ref, pred)
    assert_one_line_error(code, err, needle, "case")


def test_evaluate_refuses_a_truncated_reference(label_pair, raw, capsys):
    ref, pred, lab = label_pair
    sitk.WriteImage(lab, str(pred / "case.nii.gz"))
    _truncate(ref / "case.nii.gz")
    code, err = _evaluate(capsys, ref, pred)
    assert_one_line_error(code, err, "damaged")


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not a valid CASE_boxes.json"),
    (json.dumps({"organs": [{"label": 1}]}), "not a valid CASE_boxes.json"),
    (json.dumps({"organs": [{"label": 1, "box_voxel": [0, 0, 0, 1, 1], "score": 1}]}), "box_voxel"),
])
def test_evaluate_broken_box_files(content, needle, label_pair, raw, capsys):
    ref, pred, _ = label_pair
    (pred / "case_boxes.json").write_text(content)
    code, err = _evaluate(capsys, ref, pred)
    assert_one_line_error(code, err, needle)


# ---------------------------------------------------------------------------------------------------------------
# merging and converting
def _second_dataset(roots, template, did, name, edit=None) -> Path:
    folder = roots["raw"] / f"Dataset{did}_{name}"
    shutil.copytree(template, folder)
    if edit:
        edit_json(folder / "dataset.json", edit)
    return folder


def merge(capsys, *argv):
    from autoorgan.cli.merge import main
    return run_main(capsys, main, *argv)


def test_merge_labels_differing_only_in_case(raw, phantom_template, capsys):
    roots, _ = raw
    _second_dataset(roots, phantom_template, 902, "Other",
                    lambda d: d.__setitem__("labels", {("Liver" if k == "liver" else k): v
                                                       for k, v in d["labels"].items()}))
    code, err = merge(capsys, "-d", "900", "902", "-o", "910")
    assert_one_line_error(code, err, "'liver'", "'Liver'")
    assert not list(roots["raw"].glob("*910*"))


def test_merge_label_value_missing_from_a_source(raw, phantom_template, capsys):
    roots, _ = raw
    other = _second_dataset(roots, phantom_template, 902, "Other")
    _bad_label_value(other)
    code, err = merge(capsys, "-d", "900", "902", "-o", "910")
    assert_one_line_error(code, err, "42", "phantom_004")
    assert not list(roots["raw"].glob("*910*"))


def test_merge_needs_two_and_a_free_id(raw, capsys):
    assert_one_line_error(*merge(capsys, "-d", "900", "-o", "910"), "at least two")
    assert_one_line_error(*merge(capsys, "-d", "900", "900", "-o", "900"), "taken")


def _msd(tmp_path, dataset_json) -> Path:
    task = tmp_path / "Task09_Spleen"
    for sub in ("imagesTr", "labelsTr"):
        (task / sub).mkdir(parents=True)
    (task / "dataset.json").write_text(json.dumps(dataset_json))
    return task


@pytest.mark.parametrize("dataset_json, needle", [
    ({"labels": {"0": "background"}}, "'modality'"),
    ({"modality": {"0": "CT"}}, "'labels'"),
    ([1], "'modality'"),
])
def test_convert_msd_without_modality_or_labels(dataset_json, needle, roots, tmp_path, capsys):
    from autoorgan.cli.convert import main_msd
    code, err = run_main(capsys, main_msd, "-i", _msd(tmp_path, dataset_json))
    assert_one_line_error(code, err, needle)


def test_convert_msd_folder_name(roots, tmp_path, capsys):
    from autoorgan.cli.convert import main_msd
    task = _msd(tmp_path, {"modality": {"0": "CT"}, "labels": {"0": "background"}})
    renamed = task.rename(tmp_path / "Spleen")
    code, err = run_main(capsys, main_msd, "-i", renamed)
    assert_one_line_error(code, err, "TaskXX_Name")


@pytest.mark.parametrize("contoured, needle", [
    ({"phantom_000": "liver"}, "must be a list"),
    ({"phantom_0000": ["liver"]}, "phantom_0000"),
    ({"phantom_000": ["pancreas"]}, "pancreas"),
    ("{not json", "not valid JSON"),
])
def test_convert_contoured_lists(contoured, needle, raw, capsys, tmp_path):
    from autoorgan.cli.convert import main_contoured
    roots, folder = raw
    path = tmp_path / "contoured.json"
    path.write_text(contoured if isinstance(contoured, str) else json.dumps({"contoured": contoured}))
    before = (folder / "dataset.json").read_text()
    code, err = run_main(capsys, main_contoured, "-i", folder, "-j", path)
    assert_one_line_error(code, err, needle)
    assert (folder / "dataset.json").read_text() == before


# ---------------------------------------------------------------------------------------------------------------
# interrupted writes and file modes
def test_failed_phantom_write_leaves_nothing_and_does_not_block(roots, monkeypatch):
    from autoorgan.dataset import phantom
    calls = {"n": 0}
    original = phantom.make_case

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise MemoryError("simulated")
        return original(*a, **k)
    monkeypatch.setattr(phantom, "make_case", flaky)
    with pytest.raises(MemoryError):
        phantom.write_phantom_dataset(roots["raw"], 950, num_cases=3, num_test=0, spacing_scale=2.5, progress=False)
    assert not list(roots["raw"].iterdir())
    (roots["raw"] / "Dataset950_Phantom.partial_write").mkdir()   # left by an older version
    monkeypatch.setattr(phantom, "make_case", original)
    folder = phantom.write_phantom_dataset(roots["raw"], 950, num_cases=2, num_test=0, spacing_scale=2.5,
                                           progress=False)
    assert folder.name == "Dataset950_Phantom" and [p.name for p in roots["raw"].iterdir()] == [folder.name]


def test_json_outputs_keep_their_permissions(tmp_path):
    from autoorgan.utils.fileio import write_json_atomic
    path = tmp_path / "plans.json"
    path.write_text("{}")
    os.chmod(path, 0o644)
    write_json_atomic({"a": 1}, path)
    assert (path.stat().st_mode & 0o777) == 0o644
    new = tmp_path / "new.json"
    mask = os.umask(0o022)
    try:
        write_json_atomic({"a": 1}, new)
    finally:
        os.umask(mask)
    assert (new.stat().st_mode & 0o777) == 0o644


def test_file_system_errors_are_one_line(capsys):
    import errno

    from autoorgan.utils.errors import cli_entry
    for number, needle in ((errno.ENOSPC, "free disk space"), (errno.EROFS, "read-only"),
                           (errno.EACCES, "permissions")):
        @cli_entry
        def main(argv=None, number=number):
            raise OSError(number, os.strerror(number), "/data/out/case.nii.gz")
        code, err = run_main(capsys, main)
        assert_one_line_error(code, err, "/data/out/case.nii.gz", needle)


def test_bad_command_line_is_one_line(capsys):
    code, err = run_main(capsys, train_main(), "900", "organdetr", "0", "--no_such_option")
    assert_one_line_error(code, err, "--no_such_option", "--help")


def test_subprocess_exit_codes_and_no_traceback(planned, tmp_path):
    """The same rules hold for the installed console scripts (exit status and stderr as a user sees them)."""
    res = subprocess.run([str(Path(sys.executable).with_name("autoorgan_train")), "900", "organdetr", "0", "--lr",
                          "nan"], capture_output=True, text=True, env=cli_env(planned), timeout=300)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--lr" in res.stderr, res.stderr


def test_masked_sigmoid_trains_the_plans_recipe_and_options_override_it(env, capsys):
    """Without options masked_sigmoid trains the plans' recipe (MaskedSigmoidTrainer; its patch lands in the model
    folder's plans, so prediction slides the same window); each option that departs from the recipe names its own
    folder."""
    from autoorgan.trainers.ccq import MaskedSigmoidTrainer
    from autoorgan.training.options import TrainOptions
    cfg = json.loads((env["preprocessed"] / DATASET / "autoorganPlans.json").read_text())["configurations"]["ccq"]
    recipe = cfg["masked_sigmoid"]
    assert recipe["patch_size"] != cfg["patch_size"]
    code, err = run_main(capsys, train_main(), "900", "masked_sigmoid", "0", "-device", "cpu", *SHORT, "--no_val",
                         "-num_workers", "0")
    assert code == 0, err
    folder = env["results"] / DATASET / "MaskedSigmoidTrainer__autoorganPlans__ccq"
    saved = json.loads((folder / "plans.json").read_text())["configurations"]["ccq"]
    assert saved["patch_size"] == recipe["patch_size"] and (folder / "fold_0" / "checkpoint_final.pth").is_file()
    # the recipe's post-processing is the model's default: each organ one component, the one where the training
    # cases have it (their locations are in the model folder's plans); --components all keeps every island
    organs = {str(v) for k, v in json.loads((folder / "dataset.json").read_text())["labels"].items() if v}
    assert saved["components"] == "located" and set(saved["organ_locations"]) == organs   # the phantom's 7
    from scipy import ndimage
    inputs = _inputs(env["results"].parent / "klc_in", 1)
    for flag, rule in (((), "located"), (("--components", "all"), "all")):
        out = env["results"].parent / f"components_{rule}"
        code, err = predict_from(capsys, folder, inputs, out, "-f", "0", "-chk", "final", *flag)
        assert code == 0, err
        assert json.loads((out / "prediction_info.json").read_text())["components"] == rule
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "good0.nii.gz")))
        parts = [ndimage.label(seg == v, np.ones((3, 3, 3)))[1] for v in np.unique(seg) if v]   # 26-connected
        assert parts and (max(parts) == 1) == (rule == "located"), parts

    def trainer(**extra):
        return MaskedSigmoidTrainer(DATASET, 0, TrainOptions(extra=extra), "cpu")
    t = trainer()
    assert t.recipe == {**{k: recipe[k] for k in ("patch_size", "oversample_foreground", "deep_supervision")},
                        "lateral_mirror": False,   # not mirrored unless asked (--lateral_mirror)
                        "base_width": cfg["architecture"]["arch_kwargs"]["features_per_stage"][0]}
    assert t.make_training_stream(4).oversample == recipe["oversample_foreground"]
    t = trainer(deep_supervision=True, patch_size=list(recipe["patch_size"]))   # the recipe's own values
    assert t.trainer_name == "MaskedSigmoidTrainer" and t.opt.extra == {}   # --c with or without them: the same run
    patch = [int(v) for v in cfg["patch_size"]]
    t = trainer(patch_size=patch, oversample_foreground=0.5, deep_supervision=False)
    assert t.trainer_name == f"MaskedSigmoidTrainer_fg50_p{'x'.join(map(str, patch))}_nods"
    assert t.make_training_stream(4).oversample == 0.5 and t.plans["configurations"]["ccq"]["patch_size"] == patch


def test_ccq_classes_per_patch_comes_from_the_plans_and_the_option_names_its_folder(env):
    """ccq decodes the plans' ``train_classes_per_patch`` classes per training patch; ``--classes_per_patch K``
    overrides it in its own results folder (``CCQTrainer_kK``), the planned value is no option at all."""
    from autoorgan.trainers.ccq import CCQTrainer, DoDNetTrainer
    from autoorgan.training.options import TrainOptions
    planned = json.loads((env["preprocessed"] / DATASET / "autoorganPlans.json").read_text()
                         )["configurations"]["ccq"]["ccq"]["train_classes_per_patch"]

    def trainer(cls=CCQTrainer, **extra):
        return cls(DATASET, 0, TrainOptions(extra=extra), "cpu")
    t = trainer()
    assert (t.classes_per_patch, t.trainer_name) == (planned, "CCQTrainer")
    t = trainer(classes_per_patch=planned)
    assert (t.trainer_name, t.opt.extra) == ("CCQTrainer", {})
    t = trainer(classes_per_patch=planned + 1)
    assert (t.classes_per_patch, t.trainer_name) == (planned + 1, f"CCQTrainer_k{planned + 1}")
    assert trainer(classes_per_patch=99).classes_per_patch == len(t.label_values)   # at most every organ
    assert trainer(DoDNetTrainer).classes_per_patch is None   # every annotated class of every patch
    # another seed trains in its own folder (two seeds side by side never share one); the default seed adds nothing
    assert CCQTrainer(DATASET, 0, TrainOptions(seed=2), "cpu").trainer_name == "CCQTrainer_seed2"
    assert CCQTrainer(DATASET, 0, TrainOptions(seed=TrainOptions.seed), "cpu").trainer_name == "CCQTrainer"
    assert CCQTrainer(DATASET, 0, TrainOptions(seed=2), "cpu", trainer_name="Mine").trainer_name == "Mine"


def test_base_width_names_its_folder_and_the_model_plans_rebuild_the_trained_network(env):
    """``--base_width W`` trains stage widths W, 2W, ... (capped at 320) in ``<Trainer>_wW``; the plans copied into
    the model folder (what prediction builds its network from) hold those widths, so a checkpoint loads there; the
    planned width is no option at all."""
    from autoorgan.configurations import network_class
    from autoorgan.trainers.ccq import DoDNetTrainer, MaskedSigmoidTrainer, stage_widths
    from autoorgan.training.options import TrainOptions
    assert stage_widths(100, 4) == [100, 200, 320, 320]
    planned = MaskedSigmoidTrainer(DATASET, 0, TrainOptions(), "cpu").cfg["architecture"]["arch_kwargs"]
    t = MaskedSigmoidTrainer(DATASET, 0, TrainOptions(extra={"base_width": planned["features_per_stage"][0]}), "cpu")
    assert (t.trainer_name, t.opt.extra) == ("MaskedSigmoidTrainer", {})
    for cls, name in ((MaskedSigmoidTrainer, "MaskedSigmoidTrainer_w12"), (DoDNetTrainer, "DoDNetTrainer_w12")):
        t = cls(DATASET, 0, TrainOptions(extra={"base_width": 12}), "cpu")
        assert t.trainer_name == name
        widths = t.model_plans["configurations"][t.section]["architecture"]["arch_kwargs"]["features_per_stage"]
        assert widths == stage_widths(12, len(planned["features_per_stage"])) != planned["features_per_stage"]
        trained = t.build_network()
        rebuilt = network_class(t.entry.network).from_plans(t.model_plans["configurations"][t.section], 1,
                                                            len(t.label_values))
        rebuilt.load_state_dict(trained.state_dict())   # strict: every shape agrees
        first = next(m for m in trained.modules() if isinstance(m, torch.nn.Conv3d))
        assert first.out_channels == 12


def test_lateral_mirror_names_its_folder_and_a_mirrored_patch_annotates_the_partner_organs(env):
    """``--lateral_mirror`` (results in ``<Trainer>_lm``): a patch mirrored left-right has its case's lateral organs
    annotated on the other side: a case annotating only the left kidney trains, on a mirrored patch, the right
    kidney's channel and not the left one's; unmirrored patches are unchanged."""
    from autoorgan.dataset.phantom import LABELS
    from autoorgan.trainers.ccq import DoDNetTrainer, MaskedSigmoidTrainer
    from autoorgan.training.options import TrainOptions
    assert DoDNetTrainer(DATASET, 0, TrainOptions(extra={"lateral_mirror": True}), "cpu").trainer_name == \
        "DoDNetTrainer_lm"
    t = MaskedSigmoidTrainer(DATASET, 0, TrainOptions(extra={"lateral_mirror": False}), "cpu")
    assert (t.trainer_name, t.opt.extra) == ("MaskedSigmoidTrainer", {})   # the recipe's value is no option
    t = DoDNetTrainer(DATASET, 0, TrainOptions(extra={"lateral_mirror": True}), "cpu")
    left, right = LABELS["kidney_left"], LABELS["kidney_right"]
    assert t.lateral_pairs == [(right, left)]
    case = t.train_ids[0]
    t.annotated[case] = {left, LABELS["liver"]}
    k = len(t.label_values)
    t.network = lambda image, classes=None: torch.zeros((image.shape[0], k, *image.shape[2:]), requires_grad=True)
    seen = []
    t.loss = lambda logits, targets, annotated: seen.append(annotated.tolist()) or logits.sum()
    batch = {"image": torch.zeros((2, 1, 8, 8, 8)), "seg": torch.zeros((2, 1, 8, 8, 8), dtype=torch.int16),
             "case_id": [case, case], "index": [0, 1], "forced_class": [-1, -1], "mirrored": [False, True]}
    t.compute_loss(batch)
    flags = {name: [row[t.label_values.index(LABELS[name])] for row in seen[0]]
             for name in ("kidney_left", "kidney_right", "liver")}
    assert flags == {"kidney_left": [True, False], "kidney_right": [False, True], "liver": [True, True]}
