"""Synthetic CT-like abdominal phantoms: the embedded default dataset of the README's main job and of the tests.

Every case is drawn in world coordinates (LPS mm; x to the patient's left, y posterior, z superior) and sampled on
a voxel grid with its own spacing, size and direction matrix, so labels and geometry agree by construction and the
box convention can be checked against known world positions.

Per case: a body (elliptic cylinder) with subcutaneous fat, an abdominal-wall muscle ring, soft tissue inside and
a spine of bone; seven organs (liver, spleen, both kidneys, stomach, bladder, aorta) as randomly rotated,
smoothly deformed ellipsoids at anatomically plausible relative positions; per-case variation of position, organ
size, HU intensities, noise, field of view and anisotropic spacing; about 15 % of the cases lack one organ (truly
absent: still annotated, so it counts as a negative); about half use a non-identity direction (flipped axes, an
in-plane rotation, or permuted axes). Deterministic for a given seed.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from autoorgan.dataset.raw import ANNOTATION_KEY
from autoorgan.utils.errors import UserError
from autoorgan.utils.paths import dataset_folder_name

LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney_right": 3, "kidney_left": 4, "stomach": 5,
          "bladder": 6, "aorta": 7}


@dataclass(frozen=True)
class Organ:
    name: str
    centre: tuple[float, float, float]  # mm, LPS, relative to the body centre
    radii: tuple[float, float, float]   # mm
    hu: float


ORGANS = (
    Organ("liver", (-70, 5, 85), (78, 68, 62), 95),
    Organ("spleen", (88, 45, 80), (30, 26, 48), 110),
    Organ("kidney_right", (-62, 55, 5), (27, 24, 48), 150),
    Organ("kidney_left", (64, 55, 15), (27, 24, 48), 155),
    Organ("stomach", (42, -38, 95), (48, 32, 42), 5),
    Organ("bladder", (0, -30, -165), (40, 34, 30), -5),
    Organ("aorta", (16, 22, 15), (12, 12, 125), 170),
)
MAY_BE_MISSING = ("spleen", "kidney_right", "kidney_left", "bladder", "stomach")
# --partial: each member dataset annotates a different subset; kidney_left/right and liver appear in two members,
# the other organs in one only (a harder test for partial-label learning).
MEMBERS = {
    "member_A_upper": ["liver", "spleen", "stomach"],
    "member_B_retro": ["kidney_right", "kidney_left", "aorta", "liver"],
    "member_C_pelvis": ["bladder", "kidney_right", "kidney_left"],
}
DIRECTIONS = {
    "identity": np.eye(3),
    "flip_xy": np.diag([-1.0, -1.0, 1.0]),
    "permuted": np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),  # ITK i->world z, j->x, k->y
}


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def _smooth_noise(rng: np.random.Generator, pts: list[np.ndarray], wavelength_mm: float, terms: int = 4):
    """Sum of random plane waves evaluated on broadcastable world coordinates ``pts = [x, y, z]``; in [-1, 1]."""
    out = 0.0
    for _ in range(terms):
        w = rng.normal(size=3)
        w *= 2 * np.pi / wavelength_mm / np.linalg.norm(w)
        out = out + np.sin(w[0] * pts[0] + w[1] * pts[1] + w[2] * pts[2] + rng.uniform(0, 2 * np.pi))
    return out / terms


def make_case(seed: int, index: int, spacing_scale: float = 1.0) -> tuple[sitk.Image, sitk.Image, dict]:
    """One phantom case -> (CT image int16, label map uint8, info). ``spacing_scale`` > 1 makes coarser grids."""
    rng = np.random.default_rng([seed, index])
    # grid: anisotropic spacing per world axis, field of view around the body
    sp_world = np.array([rng.uniform(3.5, 5.0), 0.0, rng.uniform(4.5, 7.5)]) * spacing_scale
    sp_world[1] = sp_world[0]
    body_r = np.array([rng.uniform(150, 180), rng.uniform(110, 135)])
    fov_lo = np.array([-body_r[0] - 12, -body_r[1] - 12, rng.uniform(-225, -200)])
    fov_hi = np.array([body_r[0] + 12, body_r[1] + 12, rng.uniform(145, 175)])
    n_world = np.ceil((fov_hi - fov_lo) / sp_world).astype(int)
    direction_name = rng.choice(["identity", "identity", "flip_xy", "rotated", "permuted"])
    if direction_name == "rotated":
        d = _rotation(np.array([0.0, 0.0, 1.0]), np.deg2rad(rng.uniform(10, 25) * rng.choice([-1, 1])))
    else:
        d = DIRECTIONS[direction_name]
    world_axis = np.abs(d).argmax(0)  # world axis of each ITK axis
    spacing_itk, size_itk = sp_world[world_axis], n_world[world_axis]
    centre_w = rng.uniform(-15, 15, 3) + (fov_lo + fov_hi) / 2 * np.array([0, 0, 1.0])
    origin = centre_w - d @ (spacing_itk * (size_itk - 1) / 2)
    # world coordinates of every voxel centre, as broadcastable arrays in array order (k, j, i)
    idx = np.ogrid[0:size_itk[2], 0:size_itk[1], 0:size_itk[0]]
    itk_idx = [idx[2], idx[1], idx[0]]
    world = [origin[a] + sum(d[a, m] * spacing_itk[m] * itk_idx[m] for m in range(3)) for a in range(3)]
    rel = [world[a] - centre_w[a] * (a < 2) for a in range(3)]  # body-centred (z absolute)
    shape = tuple(int(s) for s in size_itk[::-1])

    # body, fat, muscle wall, spine
    rr = (rel[0] / body_r[0]) ** 2 + (rel[1] / body_r[1]) ** 2
    rr = rr + 0.04 * _smooth_noise(rng, rel, 150.0)
    fat = rng.uniform(12, 28)
    inner = ((rel[0] / (body_r[0] - fat)) ** 2 + (rel[1] / (body_r[1] - fat)) ** 2)
    wall = ((rel[0] / (body_r[0] - fat - 12)) ** 2 + (rel[1] / (body_r[1] - fat - 12)) ** 2)
    img = np.full(shape, -1000.0, dtype=np.float32)
    img = np.where(np.broadcast_to(rr < 1, shape), -100.0 + rng.normal(0, 8), img)
    img = np.where(np.broadcast_to(inner < 1, shape), 45.0 + rng.normal(0, 5), img)
    img = np.where(np.broadcast_to(wall < 1, shape), 15.0 + rng.normal(0, 5) + 25 * _smooth_noise(rng, rel, 40.0),
                   img)
    spine = (rel[0] / 20) ** 2 + ((rel[1] - body_r[1] * 0.62) / 20) ** 2 < 1
    img = np.where(np.broadcast_to(spine, shape), rng.uniform(400, 700), img)

    # organs
    seg = np.zeros(shape, dtype=np.uint8)
    missing = rng.choice(MAY_BE_MISSING) if rng.uniform() < 0.15 else None
    shift = rng.uniform(-10, 10, 3)
    organ_centres = {}
    for organ in ORGANS:
        scale = rng.uniform(0.85, 1.15)
        centre = (np.array(organ.centre) * np.array([body_r[0] / 165, body_r[1] / 122, 1]) + shift +
                  rng.uniform(-6, 6, 3))
        rot = _rotation(rng.normal(size=3), np.deg2rad(rng.uniform(0, 15)))
        if organ.name == missing:
            _smooth_noise(rng, rel, 60.0)  # keep the random stream identical whether or not the organ is drawn
            rng.normal()
            continue
        local = [rel[a] - centre[a] for a in range(3)]
        q = [sum(rot[m, a] * local[m] for m in range(3)) / (np.array(organ.radii)[a] * scale) for a in range(3)]
        f = q[0] ** 2 + q[1] ** 2 + q[2] ** 2 + 0.25 * _smooth_noise(rng, rel, 60.0)
        inside = f < 1
        seg[inside] = LABELS[organ.name]
        img[inside] = organ.hu + rng.normal(0, 8)
        organ_centres[organ.name] = (centre + centre_w * np.array([1, 1, 0])).round(2).tolist()
    img += rng.normal(0, rng.uniform(8, 25), shape).astype(np.float32)
    img = np.clip(np.round(img), -1024, 3071).astype(np.int16)

    def to_image(arr):
        im = sitk.GetImageFromArray(arr)
        im.SetSpacing([float(s) for s in spacing_itk])
        im.SetOrigin([float(o) for o in origin])
        im.SetDirection([float(v) for v in d.ravel()])
        return im

    info = {"direction": str(direction_name), "missing": missing, "organ_centres_lps_mm": organ_centres}
    return to_image(img), to_image(seg), info


def write_phantom_dataset(raw_root: Path, dataset_id: int = 900, num_cases: int = 40, num_test: int = 8,
                          partial: bool = False, seed: int = 0, spacing_scale: float = 1.0, name: str | None = None,
                          overwrite: bool = False, progress: bool = True) -> Path:
    """Write ``DatasetXXX_Phantom[Partial]`` under ``raw_root`` (nnU-Net v2 layout) and return its folder.

    ``partial`` assigns the training cases round-robin to the members in :data:`MEMBERS`; each member's
    unannotated organs are removed from its label maps (they stay in the image) and dataset.json's
    ``annotated_labels`` says which labels each case annotates. Test cases (imagesTs/labelsTs) are always fully
    annotated. The folder is written under a temporary name and renamed at the end (nothing half-written).
    """
    if num_cases < 1 or num_test < 0:
        raise UserError("--cases must be at least 1 and --test_cases at least 0")
    name = name or ("PhantomPartial" if partial else "Phantom")
    folder = Path(raw_root) / dataset_folder_name(dataset_id, name)
    found = sorted(p for p in Path(raw_root).glob(f"Dataset{dataset_id:03d}_*") if p.is_dir()) \
        if Path(raw_root).is_dir() else []
    for leftover in (p for p in found if p.name.endswith(".partial_write")):  # an older version's interrupted write
        shutil.rmtree(leftover, ignore_errors=True)
    existing = [p for p in found if not p.name.endswith(".partial_write")]
    if existing and not overwrite:
        raise UserError(f"dataset {dataset_id} already exists ({existing[0]}); pass --overwrite to replace it or "
                        "choose another id with -d")
    tmp = folder.with_name(f".{folder.name}.partial_write")  # hidden: never taken for the dataset
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(tmp, folder, existing, num_cases, num_test, partial, seed, spacing_scale, name, progress)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _write(tmp: Path, folder: Path, existing: list[Path], num_cases: int, num_test: int, partial: bool, seed: int,
           spacing_scale: float, name: str, progress: bool) -> None:
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (tmp / sub).mkdir(parents=True)
    members = list(MEMBERS)
    case_sets = {}
    info_all = {}
    for i in tqdm(range(num_cases + num_test), desc="Phantom cases", unit="case", disable=not progress):
        test = i >= num_cases
        case = f"phantom_{i:03d}"
        image, seg, info = make_case(seed, i, spacing_scale)
        if partial and not test:
            member = members[i % len(members)]
            keep = [LABELS[n] for n in MEMBERS[member]]
            arr = sitk.GetArrayFromImage(seg)
            arr[~np.isin(arr, keep)] = 0
            new_seg = sitk.GetImageFromArray(arr)
            new_seg.CopyInformation(seg)
            seg = new_seg
            case_sets[case] = member
            info["member"] = member
        split = "Ts" if test else "Tr"
        sitk.WriteImage(image, str(tmp / f"images{split}" / f"{case}_0000.nii.gz"), useCompression=True)
        sitk.WriteImage(seg, str(tmp / f"labels{split}" / f"{case}.nii.gz"), useCompression=True)
        info_all[case] = info
    dataset_json = {
        "channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": num_cases, "file_ending": ".nii.gz",
        "name": name, "description": "Synthetic CT-like abdominal phantoms generated by autoorgan "
                                     f"(seed {seed}); not real patient data",
        "licence": "generated data, no restrictions",
    }
    if partial:
        dataset_json[ANNOTATION_KEY] = {"sets": MEMBERS, "cases": case_sets}
    (tmp / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    (tmp / "phantom_info.json").write_text(json.dumps({"seed": seed, "cases": info_all}, indent=1))
    for p in existing:
        shutil.rmtree(p)
    tmp.rename(folder)
