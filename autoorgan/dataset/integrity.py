"""Read one raw case and check it: readable, 3D, consistent geometry, finite intensities, valid label values.

Each problem is one line that names the case, what is wrong and the fix. :func:`read_and_check_case` returns the
arrays together with the problems, so the fingerprint is computed from the same single read of every file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import SimpleITK as sitk

from autoorgan.boxes import Geometry

SPACING_RTOL = 1e-4   # relative tolerance for spacing
SPACING_RANGE_MM = (0.01, 50.0)  # outside: a broken header (or not a medical image)
ORIGIN_ATOL_MM = 1e-3  # absolute tolerance for origins (mm)
DIRECTION_ATOL = 1e-4  # absolute tolerance for direction cosines


@dataclass
class CaseData:
    """A case as arrays: ``image [C, n0, n1, n2]`` float32, ``seg [n0, n1, n2]`` int16 (or None), geometry of
    channel 0 (array axis order as numpy; see autoorgan.boxes)."""

    case_id: str
    image: np.ndarray | None = None
    seg: np.ndarray | None = None
    geometry: Geometry | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _read(path: Path, case_id: str, what: str, problems: list[str]) -> sitk.Image | None:
    if not Path(path).is_file():
        problems.append(f"case {case_id}: {what} {path} does not exist; add the file or remove the case")
        return None
    try:
        why = truncation_problem(path)
        if why:
            raise RuntimeError(why)
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1][:160] if str(err).strip() else "unknown reason"
        problems.append(f"case {case_id}: {what} {Path(path).name} cannot be read (unreadable or truncated file: "
                        f"{reason}); re-export or replace it")
        return None


def truncation_problem(path: Path) -> str | None:
    """Why a NIfTI file is shorter than its header says, or None. ITK reads a truncated .nii.gz without an error
    (the missing voxels come back as zeros), so compare the gzip trailer's size field (or the plain file size)
    with vox_offset + the data size the header declares. O(1): reads the header and the last 4 bytes."""
    name = str(path)
    if not name.endswith((".nii", ".nii.gz")):
        return None
    import nibabel as nib
    try:
        header = nib.load(name).header
    except Exception as err:  # noqa: BLE001 - any nibabel failure means the header is unusable
        return f"its NIfTI header cannot be parsed ({type(err).__name__})"
    offset = int(header.get_data_offset()) or 352  # 0 is written by some tools; data then follows the header
    expected = offset + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
    if name.endswith(".gz"):
        with open(name, "rb") as f:
            f.seek(-4, 2)
            stored = int.from_bytes(f.read(4), "little")
        return None if stored == expected % 2 ** 32 else "gzip stream is shorter than the header says (truncated)"
    actual = Path(name).stat().st_size
    return None if actual >= expected else f"file has {actual} bytes, the header needs {expected} (truncated)"


def _dimension_problem(img: sitk.Image, case_id: str, what: str, path: Path) -> str | None:
    dim = img.GetDimension()
    if dim == 3 and img.GetNumberOfComponentsPerPixel() == 1:
        return None
    if dim == 3:
        return (f"case {case_id}: {what} {Path(path).name} has {img.GetNumberOfComponentsPerPixel()} components per "
                "voxel (vector image); store each channel as its own _XXXX file")
    kind = "2D" if dim == 2 else f"{dim}D"
    return (f"case {case_id}: {what} {Path(path).name} is {kind} (size {img.GetSize()}) but a 3D volume is expected; "
            + ("split the 4th dimension into _0000, _0001, ... channel files" if dim == 4 else
               "autoorgan works on 3D volumes (stack the slices into a 3D file)"))


def geometry_mismatch(ref: sitk.Image, other: sitk.Image) -> str | None:
    """Why two images do not share a voxel grid (shape, spacing, origin, direction), or None."""
    if ref.GetSize() != other.GetSize():
        return f"size {other.GetSize()} differs from {ref.GetSize()}"
    if not np.allclose(ref.GetSpacing(), other.GetSpacing(), rtol=SPACING_RTOL, atol=0):
        return f"spacing {tuple(round(s, 5) for s in other.GetSpacing())} differs from " \
               f"{tuple(round(s, 5) for s in ref.GetSpacing())}"
    if not np.allclose(ref.GetOrigin(), other.GetOrigin(), rtol=0, atol=ORIGIN_ATOL_MM):
        return f"origin {tuple(round(s, 4) for s in other.GetOrigin())} differs from " \
               f"{tuple(round(s, 4) for s in ref.GetOrigin())}"
    if not np.allclose(ref.GetDirection(), other.GetDirection(), rtol=0, atol=DIRECTION_ATOL):
        return f"direction {tuple(round(s, 4) for s in other.GetDirection())} differs from " \
               f"{tuple(round(s, 4) for s in ref.GetDirection())}"
    return None


def nonfinite_in_float_nifti(path: Path) -> int:
    """Count NaN/inf voxels of a float-typed NIfTI file. SimpleITK's NIfTI reader silently turns them into 0, so
    they are looked for with nibabel (only for float storage: integer files cannot hold them)."""
    name = str(path)
    if not name.endswith((".nii", ".nii.gz")):
        return 0
    import nibabel as nib
    img = nib.load(name)
    if not np.issubdtype(img.header.get_data_dtype(), np.floating):
        return 0
    return int((~np.isfinite(np.asanyarray(img.dataobj))).sum())


def read_and_check_case(case_id: str, image_files: list[Path], label_file: Path | None,
                        dataset_json: Mapping, check: bool = True) -> CaseData:
    """Read a case (all channels and the label map) once; with ``check`` collect every integrity problem.

    The arrays are returned only when the case has no problem.
    """
    out = CaseData(case_id)
    problems = out.problems
    images = []
    for ch, f in enumerate(image_files):
        img = _read(f, case_id, f"channel {ch} image", problems)
        if img is None:
            continue
        dim_problem = _dimension_problem(img, case_id, f"channel {ch} image", f)
        if dim_problem:
            problems.append(dim_problem)
            continue
        images.append(img)
    seg_img = None
    if label_file is not None:
        seg_img = _read(label_file, case_id, "label map", problems)
        if seg_img is not None and (p := _dimension_problem(seg_img, case_id, "label map", label_file)):
            problems.append(p)
            seg_img = None
    if problems:
        return out
    ref = images[0]
    if check and not all(SPACING_RANGE_MM[0] <= s <= SPACING_RANGE_MM[1] for s in ref.GetSpacing()):
        problems.append(f"case {case_id}: voxel spacing {tuple(round(s, 5) for s in ref.GetSpacing())} mm is outside "
                        f"{SPACING_RANGE_MM[0]}-{SPACING_RANGE_MM[1]} mm: the header is broken; fix the spacing")
        return out
    if check:
        for ch, img in enumerate(images[1:], start=1):
            if (why := geometry_mismatch(ref, img)) is not None:
                problems.append(f"case {case_id}: channel {ch} does not match channel 0 ({why}); resample it onto "
                                "channel 0's grid")
        if seg_img is not None and (why := geometry_mismatch(ref, seg_img)) is not None:
            problems.append(f"case {case_id}: label map does not match the image geometry ({why}); resample the "
                            "label map onto the image grid (nearest neighbour) or fix its header")
    if problems:
        return out
    arrays = [sitk.GetArrayViewFromImage(img) for img in images]
    image = np.stack([a.astype(np.float32, copy=False) for a in arrays])
    bad = int((~np.isfinite(image)).sum()) if check else 0
    if check and not bad:
        bad = sum(nonfinite_in_float_nifti(f) for f in image_files)
    if bad:
        problems.append(f"case {case_id}: the image holds {bad} NaN/inf voxel(s); replace them (e.g. with the "
                        "background value) before planning")
        return out
    seg = None
    if seg_img is not None:
        seg_raw = sitk.GetArrayViewFromImage(seg_img)
        if not np.issubdtype(seg_raw.dtype, np.integer):
            if check and not np.all(np.mod(seg_raw, 1) == 0):
                problems.append(f"case {case_id}: the label map holds non-integer values (stored as "
                                f"{seg_raw.dtype}); save it as an integer label map (e.g. uint8)")
                return out
        seg = seg_raw.astype(np.int16)
        if check:
            allowed = set(int(v) for v in dataset_json["labels"].values())
            present = set(np.unique(seg).tolist())
            unknown = sorted(present - allowed)
            if unknown:
                problems.append(f"case {case_id}: label value(s) {unknown} are not in dataset.json labels "
                                f"{sorted(allowed)}; add them to 'labels' or fix the label map")
                return out
    out.image, out.seg, out.geometry = image, seg, Geometry.from_sitk(ref)
    if check:
        out.warnings += case_warnings(case_id, image, image_files)
    return out


def case_warnings(case_id: str, image: np.ndarray, image_files: list[Path]) -> list[str]:
    """Things that are legal but probably not meant: a constant image, a volume one or two voxels thin, a NIfTI
    file without an orientation (qform and sform codes 0: position and direction are guesses)."""
    out = []
    if float(image.max()) == float(image.min()):
        out.append(f"case {case_id}: the image is constant ({float(image.min()):g}); is it empty?")
    if min(image.shape[1:]) < 3:
        out.append(f"case {case_id}: the volume is {min(image.shape[1:])} voxel(s) thin (shape "
                   f"{tuple(image.shape[1:])}); is it a 2D image?")
    for f in image_files:
        if str(f).endswith((".nii", ".nii.gz")):
            import nibabel as nib
            header = nib.load(str(f)).header
            if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
                out.append(f"case {case_id}: {Path(f).name} has no orientation (qform and sform codes are 0), so "
                           "its position and direction in the world are guesses; fix the header")
                break
    return out
