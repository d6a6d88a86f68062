"""autoorgan_predict / autoorgan_evaluate: geometry round trips (NIfTI and DICOM), outputs, bad inputs, resume."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import assert_one_line_error, cli_env, run_cli, run_main

DATASET = "Dataset900_Phantom"
MODEL = "OrganDETRTrainer__autoorganPlans__organdetr"
# a proper rotation (DICOM needs a right-handed frame): 30 degrees about an oblique axis, then axes permuted
_R = sitk.VersorTransform((1.0, 0.3, 0.2), np.pi / 6).GetMatrix()
DIRECTION = tuple(np.asarray(_R).reshape(3, 3)[:, [1, 2, 0]].ravel().tolist())
SPACING_ITK = (1.7, 2.3, 3.1)


# ---------------------------------------------------------------------------------------------------------------
# fixtures: a planned phantom with an untrained tiny model folder, and an asymmetric test volume
@pytest.fixture(scope="module")
def model_roots(tmp_path_factory, phantom_template):
    base = tmp_path_factory.mktemp("predict")
    roots = {k: base / k for k in ("raw", "preprocessed", "results")}
    shutil.copytree(phantom_template, roots["raw"] / DATASET)
    res = run_cli("autoorgan_plan_and_preprocess", "-d", "900", "-c", "organdetr", "-device", "cpu", "--no_pp",
                  "--quiet", env_roots=roots)
    assert res.returncode == 0, res.stderr
    plans = json.loads((roots["preprocessed"] / DATASET / "autoorganPlans.json").read_text())
    cfg = plans["configurations"]["organdetr"]
    # target spacing 1.25 x the test volume's (array order, transposed as the plans say): mild resampling, so the
    # round trip's tolerance (one preprocessed voxel) is 1.25 original voxels
    cfg["spacing"] = [SPACING_ITK[::-1][i] * 1.25 for i in plans["transpose_forward"]]
    cfg["architecture"]["arch_kwargs"].update(backbone_widths=[8, 16, 32, 64, 64], hidden_dim=32, num_heads=4,
                                              decoder_layers=1, msa_depth=1, msa_dropout=0.0)
    folder = roots["results"] / DATASET / MODEL
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    shutil.copy(roots["raw"] / DATASET / "dataset.json", folder / "dataset.json")
    from autoorgan.networks.organdetr import OrganDETR
    torch.manual_seed(0)
    net = OrganDETR.from_plans(cfg, 1, 7)
    torch.save({"network": net.state_dict()}, folder / "fold_0" / "checkpoint_final.pth")
    return roots


def make_volume(shape=(38, 52, 45)):
    """CT-like int16 volume (array order) with a body well inside the field of view (crop offset on every axis)
    and organ blocks labelled 1..7; returns (image, label map) as SimpleITK images with DIRECTION/SPACING_ITK."""
    img = np.full(shape, -1000, np.int16)
    seg = np.zeros(shape, np.uint8)
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    body = ((zz - 20) / 14.0) ** 2 + ((yy - 29) / 18.0) ** 2 + ((xx - 24) / 15.0) ** 2 < 1
    img[body] = 30
    blocks = {1: (12, 22, 18, 32, 15, 27), 2: (16, 21, 35, 41, 20, 26), 3: (24, 28, 20, 24, 14, 19),
              4: (24, 29, 31, 35, 28, 33), 5: (10, 14, 26, 33, 27, 33), 6: (28, 32, 26, 31, 20, 27),
              7: (9, 31, 28, 30, 23, 25)}
    for lab, (a0, a1, b0, b1, c0, c1) in blocks.items():
        seg[a0:a1, b0:b1, c0:c1] = lab
        img[a0:a1, b0:b1, c0:c1] = 60 + 10 * lab
    out = []
    for arr in (img, seg):
        im = sitk.GetImageFromArray(arr)
        im.SetSpacing(SPACING_ITK)
        im.SetOrigin((-40.0, 12.5, 100.0))
        im.SetDirection(DIRECTION)
        out.append(im)
    return out


def write_dicom_series(image, folder: Path) -> None:
    """``image`` (int16 3D SimpleITK) as a CT DICOM series, one file per ITK k-slice."""
    folder.mkdir(parents=True)
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.1.{}"
    for k in range(image.GetDepth()):
        sl = image[:, :, k]
        pos = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {"0008|0060": "CT", "0020|000d": uid.format(1), "0020|000e": uid.format(2),
                "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": uid.format(100 + k),
                "0020|0013": str(k + 1), "0020|0032": "\\".join(f"{v:.6f}" for v in pos),
                "0020|0037": "\\".join(f"{v:.9f}" for v in (*d[:, 0], *d[:, 1])),
                "0028|0030": f"{image.GetSpacing()[1]:.6f}\\{image.GetSpacing()[0]:.6f}",
                "0018|0050": f"{image.GetSpacing()[2]:.6f}", "0028|1052": "0", "0028|1053": "1",
                "0020|0052": uid.format(3), "0010|0020": "P001", "0010|0010": "Test^Phantom", "0008|0020": "20260101",
                "0020|0010": "1", "0020|0011": "1"}
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(sl)


def _predictor(model_roots, monkeypatch, **kw):
    for kind, path in model_roots.items():
        monkeypatch.setenv(f"autoorgan_{kind}", str(path))
    from autoorgan.inference.predictor import load_predictor
    return load_predictor(model_roots["results"] / DATASET / MODEL, ["0"], device="cpu", **kw)


def _perfect(predictor, image, seg, case_id="x"):
    """Replace the network by a perfect detector: the organ boxes of the label map preprocessed like training.
    Returns the training-path properties and preprocessed shape."""
    from autoorgan.inference.inputs import sitk_to_nnunet
    from autoorgan.preprocessing.preprocess import preprocess_case_arrays
    data, props = sitk_to_nnunet(image)
    segarr = sitk.GetArrayFromImage(seg)[None]
    pre, _, pprops = preprocess_case_arrays(data, segarr, props, predictor.plans, "organdetr",
                                            predictor.dataset_json, case_id)
    boxes = pprops["autoorgan"]["boxes"]

    def detect(arr):
        assert arr.shape == pre.shape and np.allclose(arr, pre, atol=1e-4)  # inference = training preprocessing
        return {predictor.label_values.index(lab): (np.asarray(b, np.float64), 1.0) for lab, b in boxes.items()}
    predictor.detect_preprocessed = detect
    return pprops, pre.shape[1:]


def _check_record(record, seg, pprops, pre_shape, predictor) -> float:
    """Boxes of a perfect predictor, mapped back, equal the label map's boxes within one preprocessed voxel (the
    label map itself is resampled to the coarser grid), in voxels and in world mm. Returns the largest error."""
    from autoorgan.boxes import Geometry, box_to_world, boxes_from_label_map
    geo = Geometry.from_sitk(seg)
    ref = boxes_from_label_map(sitk.GetArrayFromImage(seg))
    tb = predictor.plans["transpose_backward"]
    scale = np.asarray(pprops["shape_after_cropping_and_before_resampling"], np.float64) / np.asarray(pre_shape)
    tol_vox = np.tile(scale[tb], 2) + 1e-6  # one preprocessed voxel, in original voxels (array order)
    assert record["geometry"]["direction_itk"] == pytest.approx(list(DIRECTION), abs=1e-5)
    assert record["geometry"]["spacing_itk_order"] == pytest.approx(list(SPACING_ITK), abs=1e-5)
    assert record["geometry"]["shape_array_order"] == list(geo.shape)
    assert sorted(o["label"] for o in record["organs"]) == list(range(1, 8))
    worst = 0.0
    for organ in record["organs"]:
        box, want = np.asarray(organ["box_voxel"]), np.asarray(ref[organ["label"]], np.float64)
        assert np.all(np.abs(box - want) <= tol_vox), (organ["name"], box, want, tol_vox)
        got_w = np.asarray(organ["world"]["corners_lps_mm"])
        want_w = np.asarray(box_to_world(want, geo)["corners_lps_mm"])
        assert np.abs(got_w - want_w).max() <= np.linalg.norm(tol_vox[:3] * geo.spacing_array_order)
        worst = max(worst, float(np.abs(box - want).max()))
    return worst


def test_perfect_predictor_round_trip_nifti_and_dicom(model_roots, monkeypatch, tmp_path):
    """Anisotropic spacing, rotated direction, crop offset: preprocess -> (perfect) predict -> export returns the
    reference boxes, from a NIfTI file and from the same volume as a DICOM series."""
    from autoorgan.inference.inputs import InputCase
    image, seg = make_volume()
    predictor = _predictor(model_roots, monkeypatch)
    pprops, pre_shape = _perfect(predictor, image, seg)
    crop = np.asarray(pprops["bbox_used_for_cropping"])
    assert (crop[:, 0] > 0).all() and (crop[:, 1] < np.asarray(pprops["shape_before_cropping"])).all()
    assert tuple(pre_shape) != tuple(pprops["shape_after_cropping_and_before_resampling"])  # resampled
    sitk.WriteImage(image, str(tmp_path / "vol.nii.gz"))
    write_dicom_series(image, tmp_path / "dicom" / "vol_dcm")
    out = tmp_path / "out"
    out.mkdir()
    rec_nii = predictor.predict_case(InputCase("vol", files=[tmp_path / "vol.nii.gz"]), out)
    _check_record(rec_nii, seg, pprops, pre_shape, predictor)
    rec_dcm = predictor.predict_case(InputCase("vol_dcm", dicom_dir=tmp_path / "dicom" / "vol_dcm"), out)
    worst = _check_record(rec_dcm, seg, pprops, pre_shape, predictor)
    assert worst <= 1.25 + 1e-6
    assert rec_dcm["geometry"]["origin_lps_mm"] == pytest.approx(rec_nii["geometry"]["origin_lps_mm"], abs=1e-3)
    for a, b in zip(rec_nii["organs"], rec_dcm["organs"]):
        assert a["box_voxel"] == pytest.approx(b["box_voxel"], abs=1e-3)
    # the Slicer markups: one ROI per organ, centre = box centre in LPS, axes = image axes
    mrk = json.loads((out / "vol.mrk.json").read_text())
    assert len(mrk["markups"]) == 7 and mrk["markups"][0]["type"] == "ROI"
    roi, organ = mrk["markups"][0], rec_nii["organs"][0]
    assert roi["center"] == pytest.approx(organ["world"]["center_lps_mm"])
    d = np.asarray(roi["orientation"]).reshape(3, 3)
    assert np.allclose(d.T @ d, np.eye(3), atol=1e-6) and np.linalg.det(d) > 0
    size = np.asarray(roi["size"])
    corners = np.asarray(organ["world"]["corners_lps_mm"]) - np.asarray(roi["center"])
    assert np.abs(corners @ d).max(0) == pytest.approx(size / 2, abs=1e-3)  # corners at +-size/2 along ROI axes


# ---------------------------------------------------------------------------------------------------------------
# the command line: outputs, bad inputs, per-case failures, resume after kill -9
def _input_folder(tmp_path, n=3) -> Path:
    image, _ = make_volume()
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(n):
        sitk.WriteImage(image, str(folder / f"case{i:02d}_0000.nii.gz"))
    return folder


def test_predict_cli_writes_every_output(model_roots, tmp_path):
    folder = _input_folder(tmp_path, 1)
    sitk.WriteImage(make_volume()[0], str(folder / "plain.nrrd"))          # plain single-channel file
    write_dicom_series(make_volume()[0], folder / "dicomcase")              # a DICOM series folder
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    res = run_cli("autoorgan_predict", "-i", str(folder), "-o", str(out), "-d", "900", "-f", "0", "-device", "cpu",
                  "--save_box_masks", "--save_png", "--quiet", env_roots=model_roots)
    assert res.returncode == 0, res.stderr
    assert "ignored notes.txt" in res.stderr and "predicted 3 case(s)" in res.stdout
    for cid in ("case00", "plain", "dicomcase"):
        rec = json.loads((out / f"{cid}_boxes.json").read_text())
        assert len(rec["organs"]) == 7 and all(0 <= o["score"] <= 1 for o in rec["organs"])
        assert (out / f"{cid}.mrk.json").is_file() and (out / f"{cid}_boxes.png").stat().st_size > 1000
        mask = sitk.ReadImage(str(out / f"{cid}_boxmask.nii.gz"))
        assert mask.GetSize() == make_volume()[0].GetSize()
        assert np.allclose(mask.GetDirection(), DIRECTION, atol=1e-5)
    info = json.loads((out / "prediction_info.json").read_text())
    assert info["folds"] == ["0"] and info["failed"] == {}
    # the same through the model folder entry point, with test-time mirroring asked for (plans have none: a note)
    res = run_cli("autoorgan_predict_from_modelfolder", "-i", str(folder), "-o", str(tmp_path / "out2"), "-m",
                  str(model_roots["results"] / DATASET / MODEL), "-device", "cpu", "--tta", "--quiet",
                  env_roots=model_roots)
    assert res.returncode == 0 and "--tta has no effect" in res.stderr, res.stderr
    a = json.loads((out / "case00_boxes.json").read_text())["organs"]
    b = json.loads((tmp_path / "out2" / "case00_boxes.json").read_text())["organs"]
    np.testing.assert_allclose([o["box_voxel"] for o in a], [o["box_voxel"] for o in b], atol=1e-4)
    shape = np.tile(json.loads((out / "case00_boxes.json").read_text())["geometry"]["shape_array_order"], 2)
    assert all(np.all((np.asarray(o["box_voxel"]) >= 0) & (np.asarray(o["box_voxel"]) <= shape)) for o in a)


def test_python_api_gives_the_cli_boxes(model_roots, tmp_path, monkeypatch):
    """autoorgan.Predictor on an in-memory SimpleITK image, a numpy array + geometry, a file path and a DICOM folder
    gives the boxes autoorgan_predict writes for the same file."""
    image = make_volume()[0]
    folder = tmp_path / "in"
    folder.mkdir()
    sitk.WriteImage(image, str(folder / "one.nii.gz"))
    res = run_cli("autoorgan_predict", "-i", str(folder), "-o", str(tmp_path / "out"), "-d", "900", "-f", "0",
                  "-device", "cpu", "--quiet", env_roots=model_roots)
    assert res.returncode == 0, res.stderr
    cli = json.loads((tmp_path / "out" / "one_boxes.json").read_text())
    for kind, path in model_roots.items():
        monkeypatch.setenv(f"autoorgan_{kind}", str(path))
    import autoorgan
    predictor = autoorgan.Predictor.from_model_folder(model_roots["results"] / DATASET / MODEL, folds=[0],
                                                      device="cpu")
    arr = sitk.GetArrayFromImage(image)
    write_dicom_series(image, tmp_path / "dicom")
    results = {"sitk": predictor.predict(image, case_id="one"),
               "numpy": predictor.predict(arr, spacing=image.GetSpacing(), origin=image.GetOrigin(),
                                          direction=image.GetDirection(), case_id="one"),
               "path": predictor.predict(folder / "one.nii.gz", case_id="one"),
               "dicom": predictor.predict(str(tmp_path / "dicom"), case_id="one")}
    for kind, result in results.items():
        assert result.label_map is None and result.geometry.shape == arr.shape, kind
        assert [o["name"] for o in result.boxes] == [o["name"] for o in cli["organs"]], kind
        tol = 1e-3 if kind != "dicom" else 2e-2  # DICOM stores positions as decimal strings
        np.testing.assert_allclose([o["box_voxel"] for o in result.boxes], [o["box_voxel"] for o in cli["organs"]],
                                   atol=tol, err_msg=kind)
        np.testing.assert_allclose([o["world"]["center_lps_mm"] for o in result.boxes],
                                   [o["world"]["center_lps_mm"] for o in cli["organs"]], atol=tol * 10, err_msg=kind)
        assert result.record["geometry"]["direction_itk"] == pytest.approx(list(DIRECTION), abs=1e-5)
    with pytest.raises(autoorgan.utils.errors.UserError, match="needs its voxel spacing"):
        predictor.predict(arr)
    with pytest.raises(autoorgan.utils.errors.UserError, match="expects 1"):
        predictor.predict([image, image])
    with pytest.raises(autoorgan.utils.errors.UserError, match="does not exist"):
        predictor.predict(tmp_path / "missing.nii.gz")


def read_seg_and_rtstruct(out: Path, case_id: str, series: Path, names: list[str]) -> tuple[dict, dict]:
    """Read ``CASE_seg.dcm`` (highdicom) and ``CASE_rtstruct.dcm`` back as ``{organ name: mask [n0, n1, n2]}`` in
    SimpleITK's array order of ``series``. SEG frames are matched to slices by SOP Instance UID. RTSTRUCT contours
    are rasterised here, independently of the writer: world points -> the series' continuous voxel index (SimpleITK)
    -> filled polygons on the slice their ContourImageSequence names, which must be the slice the points lie in
    (rt-utils' own reader assumes square slices)."""
    import cv2
    import highdicom as hd
    import pydicom
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(series))
    reader.SetFileNames(files)
    ref = reader.Execute()
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    seg = hd.seg.segread(out / f"{case_id}_seg.dcm")
    seg_masks = {}
    for number in seg.get_segment_numbers():
        label = seg.get_segment_description(number).segment_label
        seg_masks[label] = seg.get_pixels_by_source_instance(uids, segment_numbers=[number],
                                                             assert_missing_frames_are_empty=True)[..., 0] > 0
    rt = pydicom.dcmread(out / f"{case_id}_rtstruct.dcm")
    assert rt.Modality == "RTSTRUCT"
    roi_names = {int(r.ROINumber): str(r.ROIName) for r in rt.StructureSetROISequence}
    shape = tuple(reversed(ref.GetSize()))
    rt_masks = {}
    for roi in rt.ROIContourSequence:
        mask = np.zeros(shape, np.uint8)
        for contour in getattr(roi, "ContourSequence", []):
            k = uids.index(str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID))
            pts = np.asarray(contour.ContourData, np.float64).reshape(-1, 3)
            idx = np.asarray([ref.TransformPhysicalPointToContinuousIndex(tuple(pt)) for pt in pts])  # (i, j, k)
            assert np.allclose(idx[:, 2], k, atol=1e-3), "a contour lies in another slice than it references"
            cv2.fillPoly(mask[k], [np.round(idx[:, :2]).astype(np.int32)], 1)
        rt_masks[roi_names[int(roi.ReferencedROINumber)]] = mask.astype(bool)
    assert set(seg_masks) <= set(names) and set(rt_masks) <= set(names)
    return seg_masks, rt_masks


def test_dicom_seg_and_rtstruct_of_boxes_round_trip(model_roots, tmp_path):
    """--output_type dicom_seg rtstruct on a DICOM series with an oblique direction: read back with highdicom and
    rt-utils, every organ's region is its predicted box (voxel centres inside), voxel by voxel; image-file inputs need
    --dicom_reference (one-line refusal otherwise); a series with non-square pixels has no RTSTRUCT (case fails)."""
    image = make_volume((30, 40, 40))[0]
    image.SetSpacing((2.0, 2.0, 3.1))
    folder = tmp_path / "in"
    write_dicom_series(image, folder / "obl")
    out = tmp_path / "out"
    res = run_cli("autoorgan_predict", "-i", str(folder), "-o", str(out), "-d", "900", "-device", "cpu", "--quiet",
                  "--output_type", "dicom_seg", "rtstruct", env_roots=model_roots)
    assert res.returncode == 0, res.stderr
    record = json.loads((out / "obl_boxes.json").read_text())
    names = [o["name"] for o in record["organs"]]
    seg_masks, rt_masks = read_seg_and_rtstruct(out, "obl", folder / "obl", names)
    shape = tuple(record["geometry"]["shape_array_order"])
    assert shape == (30, 40, 40)
    from autoorgan.inference.dicom_out import organ_masks
    organs = {o["label"]: (np.asarray(o["box_voxel"]), o["score"]) for o in record["organs"]}
    expected = organ_masks(None, organs, shape, sorted(organs))
    found = {o["name"] for o in record["organs"] if o["label"] in expected}
    assert expected and set(seg_masks) == set(rt_masks) == found
    for o in record["organs"]:
        if o["label"] in expected:
            np.testing.assert_array_equal(seg_masks[o["name"]], expected[o["label"]], err_msg=o["name"])
            np.testing.assert_array_equal(rt_masks[o["name"]], expected[o["label"]], err_msg=o["name"])
    # image files: refused up front without --dicom_reference; with it, the same SEG
    files = tmp_path / "files"
    files.mkdir()
    sitk.WriteImage(image, str(files / "obl.nii.gz"))
    res = run_cli("autoorgan_predict", "-i", str(files), "-o", str(tmp_path / "o2"), "-d", "900", "-device", "cpu",
                  "--quiet", "--output_type", "dicom_seg", env_roots=model_roots)
    assert res.returncode == 2 and "--dicom_reference" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not list((tmp_path / "o2").glob("*.dcm"))
    # with a reference; a second case whose pixels are not square gets no RTSTRUCT (one line), the first does
    write_dicom_series(make_volume()[0], files / "ref" / "aniso")
    sitk.WriteImage(make_volume()[0], str(files / "aniso.nii.gz"))
    shutil.move(str(folder / "obl"), str(files / "ref" / "obl"))
    res = run_cli("autoorgan_predict", "-i", str(files), "-o", str(tmp_path / "o3"), "-d", "900", "-device", "cpu",
                  "--quiet", "--output_type", "rtstruct", "--dicom_reference", str(files / "ref"),
                  env_roots=model_roots)
    assert res.returncode == 1 and "case aniso failed: the series' pixels are not square" in res.stderr, res.stderr
    assert not list((tmp_path / "o3").glob("aniso*"))
    assert (tmp_path / "o3" / "obl_rtstruct.dcm").is_file() and (tmp_path / "o3" / "obl_boxes.json").is_file()


def test_previews_show_slices_as_radiologists_read_them():
    """--save_png's slices on a scan stored with permuted and flipped axes: in the axial view a marker to the
    patient's left of the box lies right of it, in the coronal view a superior marker lies above it, in the
    sagittal view an anterior marker lies left of it (breaks when the reorientation or a row flip is wrong)."""
    from autoorgan.boxes import Geometry
    from autoorgan.inference.outputs import radiological_views
    direction = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0, -1.0, 0.0, 0.0)  # i -> inferior, j -> left, k -> anterior
    shape = (30, 40, 50)
    ref = sitk.Image(shape[::-1], sitk.sitkFloat32)
    ref.SetSpacing((2.0, 2.5, 3.0))
    ref.SetDirection(direction)
    box = np.asarray([10, 15, 20, 21, 26, 31], np.float64)  # odd widths: one centre voxel, (15, 20, 25)
    centre = np.asarray(ref.TransformIndexToPhysicalPoint((25, 20, 15)))
    image = np.zeros(shape, np.float32)
    for value, offset in ((1000, (24, 0, 0)), (2000, (0, 0, 24)), (3000, (0, -24, 0))):  # left, superior, anterior
        i, j, k = ref.TransformPhysicalPointToIndex(tuple(centre + np.asarray(offset)))
        image[k, j, i] = value
    geometry = Geometry(shape, ref.GetSpacing(), ref.GetOrigin(), direction)
    views = {v[0]: v[1:] for v in radiological_views(image, box, geometry)}
    assert set(views) == {"axial", "coronal", "sagittal"}

    def where(view, value):
        sl, rect, _ = views[view]
        hits = np.argwhere(sl == value)
        assert len(hits) == 1, (view, value)
        return hits[0], rect

    (row, col), (r0, r1, c0, c1) = where("axial", 1000)
    assert col >= c1 and r0 <= row < r1
    (row, col), (r0, r1, c0, c1) = where("coronal", 2000)
    assert row < r0 and c0 <= col < c1
    (row, col), (r0, r1, c0, c1) = where("sagittal", 3000)
    assert col < c0 and r0 <= row < r1


class _Payload:
    """Unpickling this runs code (touches a file): what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _rezip(src: Path, dst: Path, replace: dict[str, bytes], extra: dict[str, bytes] | None = None,
           symlink: str | None = None) -> None:
    """A copy of model zip ``src`` with entries replaced (manifest updated, as an attacker would) or added."""
    import hashlib
    import zipfile
    with zipfile.ZipFile(src) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(files["autoorgan_model.json"])
    for name, data in replace.items():
        files[name] = data
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    files["autoorgan_model.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(dst, "w") as zf:
        for name, data in {**files, **(extra or {})}.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")


def test_model_zip_export_install_predict_and_hostile_zips(model_roots, tmp_path, monkeypatch, capsys):
    """export -> install into another results root -> the same boxes; zips with ../ entries, links, unexpected files
    or a pickle payload in a checkpoint are refused with one line, nothing is written and nothing runs."""
    import io
    import zipfile
    zip_path = tmp_path / "model.zip"
    res = run_cli("autoorgan_export_model_to_zip", "-d", "900", "-f", "0", "-o", str(zip_path), env_roots=model_roots)
    assert res.returncode == 0 and "wrote" in res.stdout, res.stderr
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        ck = torch.load(io.BytesIO(zf.read(f"{DATASET}/{MODEL}/fold_0/checkpoint_final.pth")), weights_only=True)
    assert set(ck) == {"network"} and f"{DATASET}/{MODEL}/plans.json" in names and len(names) == 4
    other = dict(model_roots, results=tmp_path / "results2")
    res = run_cli("autoorgan_install_model_from_zip", str(zip_path), env_roots=other)
    assert res.returncode == 0, res.stderr
    installed = other["results"] / DATASET / MODEL
    for kind, path in model_roots.items():
        monkeypatch.setenv(f"autoorgan_{kind}", str(path))
    from autoorgan.cli.model_zip import main_install

    def install(zip_file: Path, results: Path) -> str:
        """autoorgan_install_model_from_zip in this process (what the command runs; a subprocess costs seconds):
        asserts exit status 2 and returns the one line on stderr."""
        monkeypatch.setenv("autoorgan_results", str(results))
        with pytest.raises(SystemExit) as exit_info:
            main_install([str(zip_file)])
        err = capsys.readouterr().err
        monkeypatch.setenv("autoorgan_results", str(model_roots["results"]))
        assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        return err

    assert "already exists" in install(zip_path, other["results"])
    import autoorgan
    image = make_volume()[0]
    a = autoorgan.Predictor.from_model_folder(model_roots["results"] / DATASET / MODEL, [0], device="cpu")
    b = autoorgan.Predictor.from_model_folder(installed, [0], device="cpu")
    assert a.predict(image).boxes == b.predict(image).boxes
    # hostile zips: each refused with one line; nothing lands in the results root, nothing outside it, nothing runs
    marker = tmp_path / "pwned"
    payload = io.BytesIO()
    torch.save({"network": {"x": torch.zeros(1)}, "evil": _Payload(marker)}, payload)
    ckname = f"{DATASET}/{MODEL}/fold_0/checkpoint_final.pth"
    cases = {"pickle": ({ckname: payload.getvalue()}, None, None, "holds objects other than tensors"),
             "traversal": ({}, {"../evil.txt": b"x"}, None, "unexpected entry '../evil.txt'"),
             "absolute": ({}, {"/tmp/evil.txt": b"x"}, None, "unexpected entry"),
             "extra file": ({}, {f"{DATASET}/{MODEL}/run_me.py": b"import os"}, None, "unexpected entry"),
             "symlink": ({}, None, f"{DATASET}/{MODEL}/fold_1/checkpoint_final.pth", "link or special file")}
    for what, (replace, extra, link, message) in cases.items():
        bad = tmp_path / f"bad_{what.replace(' ', '_')}.zip"
        _rezip(zip_path, bad, replace, extra, link)
        fresh = tmp_path / f"res_{what.replace(' ', '_')}"
        err = install(bad, fresh)
        assert message in err, (what, err)
        assert not (fresh / DATASET).exists() and not list(fresh.glob(".install_*")), what
    assert not marker.exists() and not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()
    # a zip whose file was altered after export (manifest not updated) is damaged
    with zipfile.ZipFile(zip_path) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    with zipfile.ZipFile(tmp_path / "altered.zip", "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data.replace(b'"organdetr"', b'"organdetR"') if name.endswith("plans.json") else data)
    err = install(tmp_path / "altered.zip", tmp_path / "res_altered")
    assert "checksum" in err or "size" in err, err


def test_onnx_export_and_backend_give_the_pytorch_boxes(model_roots, tmp_path, monkeypatch, capsys):
    """autoorgan_export_onnx (3D GridSample, opset 20) then --backend onnx: the boxes of the PyTorch backend within
    1e-3 voxels; without an export, --backend onnx is a one-line error naming the export command. (The commands run
    in this process: a subprocess costs seconds of start-up each.)"""
    roots = dict(model_roots, results=tmp_path / "results")
    shutil.copytree(model_roots["results"], roots["results"])
    for kind, path in roots.items():
        monkeypatch.setenv(f"autoorgan_{kind}", str(path))
    from autoorgan.cli.model_zip import main_onnx
    from autoorgan.cli.predict import main as predict_main
    folder = _input_folder(tmp_path, 1)
    with pytest.raises(SystemExit) as exit_info:
        predict_main(["-i", str(folder), "-o", str(tmp_path / "o1"), "-d", "900", "-f", "0", "-device", "cpu",
                      "--quiet", "--backend", "onnx"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "autoorgan_export_onnx" in err and len(err.strip().splitlines()) == 1, err
    main_onnx(["-d", "900", "-f", "0"])
    meta = json.loads((roots["results"] / DATASET / MODEL / "fold_0" / "network.onnx.json").read_text())
    assert meta["opset"] == 20 and max(meta["max_abs_diff_vs_pytorch"].values()) < 1e-3
    for backend in ("torch", "onnx"):
        predict_main(["-i", str(folder), "-o", str(tmp_path / backend), "-d", "900", "-f", "0", "-device", "cpu",
                      "--quiet", "--backend", backend])
    a = json.loads((tmp_path / "torch" / "case00_boxes.json").read_text())["organs"]
    b = json.loads((tmp_path / "onnx" / "case00_boxes.json").read_text())["organs"]
    np.testing.assert_allclose([o["box_voxel"] for o in a], [o["box_voxel"] for o in b], atol=2e-3)
    np.testing.assert_allclose([o["score"] for o in a], [o["score"] for o in b], atol=1e-4)
    assert json.loads((tmp_path / "onnx" / "prediction_info.json").read_text())["backend"] == "onnx"


def test_a_bad_case_does_not_stop_the_others(model_roots, tmp_path):
    folder = _input_folder(tmp_path, 2)
    (folder / "broken_0000.nii.gz").write_bytes(b"this is not a nifti file" * 10)
    shutil.copy(folder / "case00_0000.nii.gz", folder / "twochan_0000.nii.gz")
    shutil.copy(folder / "case00_0000.nii.gz", folder / "twochan_0001.nii.gz")
    (folder / "emptydicom").mkdir()
    out = tmp_path / "out"
    res = run_cli("autoorgan_predict", "-i", str(folder), "-o", str(out), "-d", "900", "-device", "cpu", "--quiet",
                  env_roots=model_roots)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert "case broken failed: broken_0000.nii.gz is damaged" in res.stderr
    assert "case twochan failed" in res.stderr and "expects 1 channel" in res.stderr
    assert "case emptydicom failed: no DICOM series" in res.stderr
    assert "3 of 5 case(s) failed" in res.stderr
    assert sorted(p.name for p in out.glob("*_boxes.json")) == ["case00_boxes.json", "case01_boxes.json"]
    assert not list(out.glob("broken*")) and not list(out.glob(".*"))
    failed = json.loads((out / "prediction_info.json").read_text())["failed"]
    assert set(failed) == {"broken", "twochan", "emptydicom"}


@pytest.mark.parametrize("args, message", [
    (("-i", "MISSING", "-d", "900"), "does not exist"),
    (("-d", "977"), "no trained models for dataset 977"),
    (("-d", "900", "-f", "3"), "no checkpoint_final.pth for fold(s) 3"),
    (("-d", "900", "-chk", "best"), "no checkpoint_best.pth"),
    (("-d", "900", "-tr", "NoSuchTrainer"), "no trained organdetr model"),
    (("-d", "900", "-c", "ccq"), "no trained ccq model"),
    (("-d", "900", "--components", "largest"), "is for label maps"),
    (("-d", "900", "--refine_with_masks", "/nonexistent/masks"), "is not a folder"),
])
def test_bad_arguments_give_one_line_errors(model_roots, tmp_path, args, message, capsys, monkeypatch):
    """In this process (the installed scripts' exit status and stderr: test_hostile_inputs)."""
    from autoorgan.cli.predict import main
    for kind, path in model_roots.items():
        monkeypatch.setenv(f"autoorgan_{kind}", str(path))
    folder = _input_folder(tmp_path, 1)
    argv = ["-i", str(folder), "-o", str(tmp_path / "out"), "-device", "cpu", *args]
    if "MISSING" in argv:
        argv[argv.index("MISSING")] = str(tmp_path / "missing")
        argv.remove(str(folder)), argv.remove("-i")
    code, err = run_main(capsys, main, *argv)
    assert_one_line_error(code, err, message)
    assert not list((tmp_path / "out").glob("*_boxes.json"))  # nothing half-written


def test_checkpoint_of_another_network_version_is_a_one_line_error(model_roots, tmp_path):
    roots = dict(model_roots, results=tmp_path / "results")
    shutil.copytree(model_roots["results"], roots["results"])
    ck = roots["results"] / DATASET / MODEL / "fold_0" / "checkpoint_final.pth"
    state = torch.load(ck, weights_only=False)
    state["network"].pop(next(iter(state["network"])))   # a parameter this version's network has
    state["network"]["renamed.weight"] = torch.zeros(1)  # and one it does not
    torch.save(state, ck)
    res = run_cli("autoorgan_predict", "-i", str(_input_folder(tmp_path, 1)), "-o", str(tmp_path / "out"), "-d", "900",
                  "-device", "cpu", env_roots=roots)
    assert res.returncode == 2, res.stderr
    assert "does not fit this network" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_boxes_refined_by_label_maps_in_the_scans_own_voxels(model_roots, tmp_path, monkeypatch):
    """--refine_with_masks: an organ whose label (largest component) lies near its coarse box and agrees with it gets
    that component's box in the scan's array order (oblique direction, anisotropic spacing); an organ without a label
    there keeps its box at half the score; a label map on another grid fails only its own case."""
    folder = _input_folder(tmp_path, 2)
    coarse = {o["label"]: o for o in _predictor(model_roots, monkeypatch).predict(folder / "case00_0000.nii.gz").boxes}
    image = make_volume()[0]
    seg = np.zeros(image.GetSize()[::-1], np.uint8)
    expected = {}
    for lab in (1, 2, 3):   # each a block of the whole voxels inside its coarse box, and a one-voxel island
        b = np.asarray(coarse[lab]["box_voxel"])
        lo, hi = np.ceil(b[:3]).astype(int), np.floor(b[3:]).astype(int)
        assert (hi - lo >= 3).all() and (hi + 1 < seg.shape).all(), b
        seg[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = lab
        seg[hi[0] + 1, hi[1] + 1, hi[2] + 1] = lab  # within the search margin, not the largest component
        expected[lab] = lo.tolist() + hi.tolist()
    masks = tmp_path / "masks"
    masks.mkdir()
    label_image = sitk.GetImageFromArray(seg)
    label_image.CopyInformation(image)
    sitk.WriteImage(label_image, str(masks / "case00.nii.gz"))
    sitk.WriteImage(label_image[:, :, :-2], str(masks / "case01.nii.gz"))  # two slices short
    out = tmp_path / "refined"
    res = run_cli("autoorgan_predict", "-i", str(folder), "-o", str(out), "-d", "900", "-f", "0", "-device", "cpu",
                  "--refine_with_masks", str(masks), "--quiet", env_roots=model_roots)
    assert res.returncode == 1 and "case case01 failed" in res.stderr and "not on the scan's grid" in res.stderr
    assert "Traceback" not in res.stderr
    refined = {o["label"]: o for o in json.loads((out / "case00_boxes.json").read_text())["organs"]}
    assert set(refined) == set(coarse)
    for lab, o in refined.items():
        if lab in expected:
            assert o["box_voxel"] == pytest.approx(expected[lab]), lab
            assert o["score"] == pytest.approx(coarse[lab]["score"], abs=1e-6)
        else:
            assert o["box_voxel"] == pytest.approx(coarse[lab]["box_voxel"]), lab
            assert o["score"] == pytest.approx(coarse[lab]["score"] / 2, abs=1e-6)
    assert not (out / "case01_boxes.json").exists()
    assert json.loads((out / "prediction_info.json").read_text())["refine_with_masks"] == str(masks)


def test_kill_during_prediction_then_continue(model_roots, tmp_path):
    folder = _input_folder(tmp_path, 12)
    out = tmp_path / "out"
    exe = Path(sys.executable).with_name("autoorgan_predict")
    argv = [str(exe), "-i", str(folder), "-o", str(out), "-d", "900", "-device", "cpu", "--quiet",
            "--save_box_masks"]
    proc = subprocess.Popen(argv, env=cli_env(model_roots), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(out.glob("*_boxes.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*_boxes.json")}
    assert 1 <= len(first) < 12, "the run ended before it could be killed"
    res = subprocess.run(argv + ["--continue_prediction"], env=cli_env(model_roots), capture_output=True, text=True,
                         encoding="utf-8", errors="replace", timeout=600)
    assert res.returncode == 0, res.stderr
    assert f"{len(first)} already done" in res.stdout
    assert len(list(out.glob("*_boxes.json"))) == len(list(out.glob("*.mrk.json"))) == 12
    assert len(list(out.glob("*_boxmask.nii.gz"))) == 12
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no partial files
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*_boxes.json") if p.name in first} == first


# ---------------------------------------------------------------------------------------------------------------
# units: mirroring and fold fusion in box space, bounded-memory resampling
def test_flip_and_fuse_boxes():
    from autoorgan.boxes.frames import flip_boxes
    from autoorgan.inference.detect import fuse_detections
    box = np.array([2.0, 1.0, 3.0, 5.0, 4.0, 6.0])     # asymmetric on every axis of a (6, 12, 10) array
    assert flip_boxes(box, 0, 6).tolist() == [1.0, 1.0, 3.0, 4.0, 4.0, 6.0]
    assert flip_boxes(box, 1, 12).tolist() == [2.0, 8.0, 3.0, 5.0, 11.0, 6.0]
    assert flip_boxes(box, 2, 10).tolist() == [2.0, 1.0, 4.0, 5.0, 4.0, 7.0]
    assert flip_boxes(flip_boxes(box, 1, 12), 1, 12) == pytest.approx(box)
    from autoorgan.boxes import boxes_from_label_map
    mask = np.zeros((6, 12, 10), bool)
    mask[2:5, 1:4, 3:6] = True
    for axis in range(3):
        flipped = boxes_from_label_map(np.flip(mask, axis).astype(np.uint8))[1]
        assert flip_boxes(box, axis, mask.shape[axis]).tolist() == flipped
    fused = fuse_detections([{0: (np.zeros(6), 0.75)}, {0: (np.ones(6) * 4, 0.25)}])
    assert fused[0][0] == pytest.approx(np.ones(6)) and fused[0][1] == pytest.approx(0.5)


@pytest.mark.parametrize("old, new, shape", [
    ([1.5, 0.8, 0.8], [3.1, 2.9, 2.7], (40, 70, 60)),   # isotropic-ish: one 3D spline resize in nnU-Net
    ([5.0, 0.8, 0.8], [5.0, 1.6, 1.5], (30, 64, 50)),   # anisotropic: nnU-Net resamples in-plane only
    ([0.8, 0.8, 5.0], [1.2, 1.5, 6.0], (64, 50, 30)),   # anisotropic axis last
    ([1.0, 1.0, 1.0], [0.7, 0.6, 0.9], (20, 30, 25)),   # upsampling: falls back to the single call
])
def test_slab_resampling_equals_nnunet(old, new, shape, monkeypatch):
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape, resample_data_or_seg_to_shape

    import autoorgan.preprocessing.resampling as rs
    monkeypatch.setattr(rs, "SLAB_VOXELS", 3000)  # many slabs
    x = np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32)
    kw = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    ns = compute_new_shape(shape, old, new)
    ref = resample_data_or_seg_to_shape(x, ns, old, new, **kw)
    got = rs.resample_image(x, ns, old, new, "resample_data_or_seg_to_shape", kw,
                            partial(resample_data_or_seg_to_shape, **kw))
    assert got.shape == ref.shape and got.dtype == np.float32
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


def test_mirroring_tta_averages_in_box_space():
    """A fake network that always answers the same normalized box: mirroring along axis 1 turns it into the average
    of the box and its mirror image, so the fused box is centred on that axis; other axes are unchanged."""
    from autoorgan.inference.detect import detect_case

    class Constant(torch.nn.Module):
        def forward(self, x):
            boxes = torch.tensor([[[0.25, 0.25, 0.5, 0.2, 0.1, 0.4]]])   # centre/size, normalized
            logits = torch.tensor([[[4.0, 0.0]]])                       # one organ, one query
            return {"logits": logits, "boxes": boxes}

    image = np.zeros((1, 8, 20, 12), np.float32)
    plain = detect_case(Constant(), image, (8, 20, 12), torch.device("cpu"))[0][0]
    tta = detect_case(Constant(), image, (8, 20, 12), torch.device("cpu"), mirror_axes=(1,))[0][0]
    assert plain.tolist() == pytest.approx([1.2, 4.0, 3.6, 2.8, 6.0, 8.4])
    assert tta.tolist() == pytest.approx([1.2, 9.0, 3.6, 2.8, 11.0, 8.4])  # axis 1 centred: (5 + 15) / 2 = 10
