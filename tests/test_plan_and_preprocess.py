"""Fingerprint, plans and preprocessing on small phantoms: numbers with reasons, partial annotation, resume."""
import json
import pickle
import shutil

import blosc2
import numpy as np
import pytest

from autoorgan.boxes import boxes_from_label_map
from conftest import run_cli


def _plan_and_preprocess(extra=()):
    return run_cli("autoorgan_plan_and_preprocess", "-d", "900", "-np", "1", "--quiet", *extra)


@pytest.fixture(scope="module")
def planned_once(tmp_path_factory, phantom_template):
    """The small phantom planned and preprocessed once per module (copy before use: ``planned``)."""
    base = tmp_path_factory.mktemp("planned_once")
    roots = {kind: base / kind for kind in ("raw", "preprocessed", "results")}
    shutil.copytree(phantom_template, roots["raw"] / phantom_template.name)
    res = run_cli("autoorgan_plan_and_preprocess", "-d", "900", "-np", "1", "--quiet", env_roots=roots)
    assert res.returncode == 0, res.stderr
    return roots


@pytest.fixture
def planned(planned_once, phantom_template, roots):
    """This test's own copy of the planned phantom (copies keep the files' modification times, so a rerun of
    the planner sees the dataset it fingerprinted)."""
    for kind in ("raw", "preprocessed"):
        shutil.copytree(planned_once[kind], roots[kind])
    pre = roots["preprocessed"] / phantom_template.name
    return pre, json.loads((pre / "autoorganPlans.json").read_text())


def test_plans_hold_both_configurations_with_reasons(planned):
    pre, plans = planned
    det, ccq = plans["configurations"]["organdetr"], plans["configurations"]["ccq"]
    o = det["organdetr"]
    assert o["num_organ_classes"] == 7 and o["rho"] == 10 and o["num_queries"] == 70
    assert 1 <= o["eta"] <= 5 and o["eta"] == int(np.ceil(o["lambda"] * o["rho"] - 1e-9))
    assert all(s % 16 == 0 for s in det["input_shape"]) and len(det["spacing"]) == 3
    for key in ("spacing", "input_shape", "num_queries", "lambda", "eta", "rho"):
        assert det["_why"][key], key
    assert ccq["ccq"]["num_class_queries"] == 32 and len(ccq["patch_size"]) == 3 and ccq["_why"]["patch_size"]
    fp = json.loads((pre / "dataset_fingerprint.json").read_text())["autoorgan"]
    assert fp["classes"]["liver"]["num_cases_present"] == fp["classes"]["liver"]["num_cases_annotated"] == 8
    assert set(fp["classes"]["aorta"]["box_extent_mm"]) == {"median", "p05", "p95"}
    assert fp["organs_per_case"]["max"] == 7
    # masked_sigmoid's CPU recipe: the smallest patch (stride multiples) holding the largest organ's 95th-percentile
    # box (at most the planned patch), every patch on an organ, deep supervision, largest components kept
    ms, planned_patch = ccq["masked_sigmoid"], np.asarray(ccq["patch_size"])
    strides = np.prod(np.asarray(ccq["architecture"]["arch_kwargs"]["strides"]), axis=0)
    largest = max(fp["classes"].values(), key=lambda c: np.prod(c["box_extent_mm"]["median"]))
    need = np.asarray(largest["box_extent_mm"]["p95"])[plans["transpose_forward"]] / np.asarray(ccq["spacing"])
    patch = np.asarray(ms["patch_size"])
    assert np.all(patch % strides == 0) and np.all(patch <= planned_patch)
    assert np.all((patch >= need) | (patch == planned_patch)) and np.all((patch - strides < need) | (patch == strides))
    assert np.any(patch < planned_patch), (patch, planned_patch)
    assert ms["oversample_foreground"] == 1 and ms["deep_supervision"] is True
    assert ms["components"] == "located"
    assert all(ms["_why"][k] for k in ("patch_size", "oversample_foreground", "deep_supervision", "components"))


def test_preprocessed_boxes_match_preprocessed_label_maps(planned):
    pre, plans = planned
    folder = pre / plans["configurations"]["organdetr"]["data_identifier"]
    pkls = sorted(folder.glob("*.pkl"))
    assert len(pkls) == 8
    for pkl in pkls:
        props = pickle.loads(pkl.read_bytes())
        seg = blosc2.open(str(pkl.with_suffix("")) + "_seg.b2nd")[:]
        data = blosc2.open(str(pkl.with_suffix(".b2nd")))[:]
        assert data.shape[1:] == seg.shape[1:] and np.isfinite(data).all()
        boxes = props["autoorgan"]["boxes"]
        assert boxes == boxes_from_label_map(seg[0]) and len(boxes) >= 6


def test_query_anchors_lie_where_inference_puts_the_organs(planned):
    """The planner's organ priors (from the fingerprint, in the original frame) equal the median organ box of the
    preprocessed cases fitted to the input as inference fits them, within half a voxel of the input."""
    import torch

    from autoorgan.preprocessing.fit import fit_to_input
    pre, plans = planned
    det = plans["configurations"]["organdetr"]
    anchors = np.asarray(det["architecture"]["arch_kwargs"]["query_anchors"])
    shape = np.asarray(det["input_shape"], np.float64)
    assert anchors.shape == (7, 6) and det["_why"]["query_anchors"]
    per_class = {}
    for pkl in sorted((pre / det["data_identifier"]).glob("*.pkl")):
        props = pickle.loads(pkl.read_bytes())
        data = blosc2.open(str(pkl.with_suffix(".b2nd")))[:]
        _, _, fit = fit_to_input(torch.from_numpy(np.ascontiguousarray(data)), None, tuple(det["input_shape"]))
        for label, box in props["autoorgan"]["boxes_exact"].items():
            b = fit.box_to_input(np.asarray(box, np.float64)[None])[0]
            per_class.setdefault(int(label), []).append(
                np.concatenate([(b[:3] + b[3:]) / 2, b[3:] - b[:3]]) / np.tile(shape, 2))
    assert sorted(per_class) == list(range(1, 8))
    expected = np.stack([np.median(per_class[k], 0) for k in sorted(per_class)])
    np.testing.assert_allclose(anchors, expected, atol=0.5 / shape.min())
    assert np.ptp(anchors[:, :3], 0).min() > 0.05  # the organs' priors differ (not one default box)


def test_larger_gpu_budget_gives_a_larger_input(planned, roots):
    pre, plans = planned
    res = run_cli("autoorgan_plan_and_preprocess", "-d", "900", "-device", "cuda", "--no_pp", "--quiet")
    assert res.returncode == 0, res.stderr
    gpu = json.loads((pre / "autoorganPlans.json").read_text())["configurations"]["organdetr"]
    cpu = plans["configurations"]["organdetr"]
    assert np.prod(gpu["input_shape"]) >= np.prod(cpu["input_shape"])
    assert all(g <= c + 1e-9 for g, c in zip(gpu["spacing"], cpu["spacing"]))
    assert gpu["architecture"]["arch_kwargs"]["hidden_dim"] > cpu["architecture"]["arch_kwargs"]["hidden_dim"]
    # GPU plan: masked_sigmoid trains nnU-Net's recipe (planned patch; the trainer's 33 % organ-centred patches;
    # label maps as predicted)
    ccq = json.loads((pre / "autoorganPlans.json").read_text())["configurations"]["ccq"]
    assert ccq["masked_sigmoid"]["patch_size"] == ccq["patch_size"]
    assert "oversample_foreground" not in ccq["masked_sigmoid"] and ccq["masked_sigmoid"]["deep_supervision"]
    assert ccq["masked_sigmoid"]["components"] == "all"


def test_input_shape_is_coarsened_to_fit_the_budget():
    from autoorgan.planners.organdetr_planner import OrganDETRPlanner
    extent = np.array([300.0, 350.0, 400.0])
    spacing, shape, steps = OrganDETRPlanner.fit_input_shape(None, np.array([2.5, 0.8, 0.8]), extent, 64 ** 3)
    assert np.prod(shape) <= 64 ** 3 and steps > 0 and all(s % 16 == 0 for s in shape)
    assert np.all(shape * spacing >= extent - 16 * spacing)  # still holds the extent (up to rounding)
    assert spacing[1] > 0.8 * 2
    # finest axes first: a budget that coarsening the two 0.8 mm axes alone can meet leaves the 2.5 mm axis alone
    spacing, shape, steps = OrganDETRPlanner.fit_input_shape(None, np.array([2.5, 0.8, 0.8]),
                                                             np.array([300.0, 100.0, 100.0]), 128 * 80 * 80)
    assert steps > 0 and spacing[0] == 2.5 and spacing[1] == spacing[2] > 1.25 and shape.tolist() == [128, 80, 80]


@pytest.mark.parametrize("rho,lam,eta", [(10, None, 2), (30, None, 5), (3, None, 1), (10, 0.45, 5)])
def test_lambda_keeps_eta_in_range(rho, lam, eta):
    from autoorgan.planners.organdetr_planner import choose_lambda
    got_lam, got_eta, why = choose_lambda(rho, lam)
    assert got_eta == eta and 1 <= got_eta <= 5 and why


def test_bad_lambda_is_a_clear_error(planned):
    res = run_cli("autoorgan_plan_and_preprocess", "-d", "900", "--lambda", "0.9", "--no_pp")
    assert res.returncode == 2 and "outside [1, 5]" in res.stderr and "Traceback" not in res.stderr


def test_partial_annotation_survives_preprocessing_and_patch_sampling(roots, partial_phantom_template):
    shutil.copytree(partial_phantom_template, roots["raw"] / partial_phantom_template.name)
    res = run_cli("autoorgan_plan_and_preprocess", "-d", "901", "-np", "1", "--quiet", "-c", "ccq")
    assert res.returncode == 0, res.stderr
    pre = roots["preprocessed"] / partial_phantom_template.name
    plans = json.loads((pre / "autoorganPlans.json").read_text())
    assert plans["autoorgan"]["partially_annotated"] is True
    assert {m["name"] for m in plans["configurations"]["ccq"]["ccq"]["members"]} == \
        {"member_A_upper", "member_B_retro", "member_C_pelvis"}
    ds = json.loads((partial_phantom_template / "dataset.json").read_text())
    from autoorgan.dataset.phantom import LABELS, MEMBERS
    folder = pre / plans["configurations"]["ccq"]["data_identifier"]
    for case, member in ds["annotated_labels"]["cases"].items():
        props = pickle.loads((folder / f"{case}.pkl").read_bytes())["autoorgan"]
        expected = sorted(LABELS[n] for n in MEMBERS[member])
        assert props["annotated_labels"] == expected
        assert set(props["present_labels"]) <= set(expected)
    fp = json.loads((pre / "dataset_fingerprint.json").read_text())["autoorgan"]["classes"]
    # 6 cases round-robin over 3 members: 2 cases each; bladder only in C, kidneys in B and C
    assert fp["bladder"]["num_cases_annotated"] == 2 and fp["spleen"]["num_cases_annotated"] == 2
    assert fp["kidney_left"]["num_cases_annotated"] == 4 and fp["liver"]["num_cases_annotated"] == 4
    # --oversample_foreground 1 (models that refine Organ-DETR's boxes): every patch is centred on a voxel of an organ
    # its case annotates (the organ is in the patch); 0: no patch is forced (nnU-Net's random patches)
    from autoorgan.dataset.raw import annotated_labels, foreground_labels
    from autoorgan.training.patches import PatchStream
    values = sorted(foreground_labels(ds).values())
    ids = sorted(p.stem for p in folder.glob("*.pkl"))
    stream = PatchStream(folder, ids, plans, "ccq", ds, seed=3, num_samples=12, oversample_foreground=1.0)
    for g in range(len(stream)):
        item = stream[g]
        assert item["forced_class"] in values and item["forced_class"] in annotated_labels(ds, item["case_id"])
        assert (np.asarray(item["seg"]) == item["forced_class"]).any(), (g, item["case_id"], item["forced_class"])
    stream = PatchStream(folder, ids, plans, "ccq", ds, seed=3, num_samples=12, oversample_foreground=0.0)
    assert all(stream[g]["forced_class"] == -1 for g in range(len(stream)))
    # --lateral_mirror: about half the patches mirrored along the patient's left-right axis (found here from the
    # image's own geometry) with the kidneys swapped; otherwise the very same sample
    pairs = plans["configurations"]["ccq"]["lateral_pairs"]
    assert pairs == [[LABELS["kidney_right"], LABELS["kidney_left"]]]
    assert plans["configurations"]["ccq"]["lateral_axis"] == "direction"   # the phantom's headers are right
    import SimpleITK as sitk

    def lr_axis(case):   # the sample axis along which world x changes most per voxel; None if 45 degrees off
        image = sitk.ReadImage(str(roots["raw"] / partial_phantom_template.name / "imagesTr" / f"{case}_0000.nii.gz"))
        moves = [np.subtract(image.TransformIndexToPhysicalPoint([1 + (m == i) for i in range(3)]),
                             image.TransformIndexToPhysicalPoint([1, 1, 1])) / image.GetSpacing()[m]
                 for m in range(3)]   # per ITK axis, unit length
        m = int(np.argmax([abs(d[0]) for d in moves]))
        return None if abs(moves[m][0]) < 0.7 else 1 + plans["transpose_forward"].index(2 - m)
    axes = {case: lr_axis(case) for case in ids}
    assert len(set(axes.values())) >= 2, axes   # the phantom's directions differ between cases
    plain = PatchStream(folder, ids, plans, "ccq", ds, seed=5, num_samples=40, oversample_foreground=0.5)
    mirror = PatchStream(folder, ids, plans, "ccq", ds, seed=5, num_samples=40, oversample_foreground=0.5,
                         lateral_pairs=pairs)
    n_mirrored, with_kidney, mirrored_axes = 0, 0, set()
    for g in range(40):
        a, b = plain[g], mirror[g]
        assert not a["mirrored"] and b["case_id"] == a["case_id"]
        # the same sample twice: the augmentation's arithmetic may differ in the last bits between runs (threads),
        # so images within 1e-4 and label maps on all but a few boundary voxels (0.1 %)
        if not b["mirrored"]:
            np.testing.assert_allclose(np.asarray(b["image"]), np.asarray(a["image"]), atol=1e-4)
            assert np.mean(np.asarray(b["seg"]) == np.asarray(a["seg"])) >= 0.999
            continue
        n_mirrored += 1
        axis = axes[a["case_id"]]
        assert axis is not None
        mirrored_axes.add(axis)
        np.testing.assert_allclose(np.asarray(b["image"]), np.flip(np.asarray(a["image"]), axis), atol=1e-4)
        flipped = np.flip(np.asarray(a["seg"]), axis)
        expected = np.where(flipped == LABELS["kidney_left"], LABELS["kidney_right"],
                            np.where(flipped == LABELS["kidney_right"], LABELS["kidney_left"], flipped))
        assert np.mean(np.asarray(b["seg"]) == expected) >= 0.999
        with_kidney += bool(np.isin(flipped, [LABELS["kidney_left"], LABELS["kidney_right"]]).any())
    assert 0 < n_mirrored < 40 and with_kidney >= 1 and len(mirrored_axes) >= 2, (n_mirrored, mirrored_axes)


def test_interrupted_preprocessing_resumes(planned, roots):
    pre, plans = planned
    folder = pre / plans["configurations"]["organdetr"]["data_identifier"]
    keep = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.pkl")}
    # simulate a kill: two cases lost their completion marker, one left a half-written temporary folder
    (folder / "phantom_002.pkl").unlink()
    (folder / "phantom_005_seg.b2nd").unlink()
    (folder / "phantom_005.pkl").unlink()
    (folder / ".tmp_phantom_006_999").mkdir()
    res = _plan_and_preprocess()
    assert res.returncode == 0, res.stderr
    after = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.pkl")}
    assert set(after) == set(keep)
    redone = {k for k in after if after[k] != keep.get(k)}
    assert redone == {"phantom_002.pkl", "phantom_005.pkl"}

