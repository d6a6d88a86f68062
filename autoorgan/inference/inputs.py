"""What ``autoorgan_predict`` accepts in its input folder, and how one input case is read.

An input folder may mix three kinds of cases (sorted by case id):

* nnU-Net-style channel files ``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``, ... (one per channel of dataset.json);
* plain single-channel image files ``CASE.nii.gz`` / ``.nii`` / ``.nrrd`` / ``.mha`` (datasets with one channel);
* DICOM series folders ``CASE/`` holding the slices of exactly one series (read with SimpleITK / GDCM; rescale
  slope and intercept are applied, so CT arrives in HU).

Image files are read with the reader the plans name (nnU-Net's reader classes), DICOM with SimpleITK, both giving
nnU-Net's ``(data [C, n0, n1, n2] float32, properties)`` with ``properties["sitk_stuff"]`` (ITK-ordered spacing,
origin, direction), which is what the box export needs. A case that cannot be used raises :class:`CaseError` with a
one-line reason; the caller reports it and goes on with the other cases.
"""
from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from autoorgan.utils.errors import UserError

IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha")
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


class CaseError(UserError):
    """One input case cannot be predicted (the others still can)."""


@dataclass
class InputCase:
    case_id: str
    files: list[Path] = field(default_factory=list)   # one per channel, channel order
    dicom_dir: Path | None = None
    problem: str | None = None                          # set when the case is known to be unusable

    @property
    def source(self) -> str:
        return str(self.dicom_dir) if self.dicom_dir is not None else ", ".join(p.name for p in self.files)


def _strip_ending(name: str) -> tuple[str, str] | None:
    low = name.lower()
    for end in IMAGE_ENDINGS:
        if low.endswith(end):
            return name[: -len(end)], end
    return None


def find_input_cases(folder: Path, num_channels: int) -> tuple[list[InputCase], list[str]]:
    """Cases in ``folder`` -> (cases sorted by id, notes about ignored entries). Raises UserError when the folder
    is missing or holds nothing predictable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"input folder {folder} does not exist; give a folder of images (CASE_0000.nii.gz or "
                        "CASE.nii.gz files) or of DICOM series folders")
    channel_files: dict[str, dict[int, Path]] = {}
    cases: dict[str, InputCase] = {}
    notes: list[str] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if not _utf8(entry.name):
            cid = entry.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            cases[cid] = InputCase(cid, files=[entry], problem="its file name is not valid UTF-8 (the image readers "
                                                               "cannot open it); rename it")
            continue
        if entry.is_dir():
            cases[entry.name] = InputCase(entry.name, dicom_dir=entry)
            continue
        split = _strip_ending(entry.name)
        if split is None:
            notes.append(f"ignored {entry.name} (not {', '.join(IMAGE_ENDINGS)} or a DICOM folder)")
            continue
        stem, _ = split
        m = _CHANNEL.match(stem)
        if m:
            channel_files.setdefault(m["case"], {})[int(m["ch"])] = entry
        else:
            cases[stem] = InputCase(stem, files=[entry])
            if num_channels != 1:
                cases[stem].problem = (f"plain file {entry.name} has one channel but the model expects {num_channels}; "
                                       f"name the channels {stem}_0000 ... _{num_channels - 1:04d}")
    for cid, chans in channel_files.items():
        case = InputCase(cid, files=[chans[c] for c in sorted(chans)])
        want = list(range(num_channels))
        if sorted(chans) != want:
            have = ", ".join(f"_{c:04d}" for c in sorted(chans))
            case.problem = (f"has channel files {have} but the model expects {num_channels} channel(s) "
                            f"({', '.join(f'_{c:04d}' for c in want)})")
        if cid in cases:
            case.problem = f"both {cases[cid].source} and channel files exist for this case id; keep one"
        cases[cid] = case
    if not cases:
        raise UserError(f"no images found in {folder} (expected {', '.join(IMAGE_ENDINGS)} files or DICOM series "
                        "folders)")
    return [cases[k] for k in sorted(cases)], notes


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:  # undecodable bytes in the file name (surrogate escapes)
        return False


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def read_dicom_series(folder: Path):
    """The one DICOM series in ``folder`` as a SimpleITK image; CaseError when there is none or several."""
    import SimpleITK as sitk
    reader = sitk.ImageSeriesReader()
    try:
        ids = reader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as err:
        raise CaseError(f"cannot scan {folder} for DICOM ({_first_line(err)})") from None
    if not ids:
        raise CaseError(f"no DICOM series in folder {folder} (a case folder must hold the slices of one series)")
    if len(ids) > 1:
        raise CaseError(f"{len(ids)} DICOM series in {folder}; put each series in its own folder")
    names = reader.GetGDCMSeriesFileNames(str(folder), ids[0])
    check_slice_spacing(folder, names)
    reader.SetFileNames(names)
    try:
        return reader.Execute()
    except RuntimeError as err:
        raise CaseError(f"cannot read the DICOM series in {folder} ({_first_line(err)})") from None


SLICE_GAP_RTOL = 0.2  # a slice step this much larger than the median step means a missing slice


def check_slice_spacing(folder: Path, files: Sequence[str]) -> None:
    """CaseError when the slices of a series are not evenly spaced (a missing slice): the series reader would
    average the spacing and misplace everything past the gap. Reads only the headers (ImagePositionPatient)."""
    import SimpleITK as sitk
    if len(files) < 3:
        return
    positions = []
    for name in files:
        r = sitk.ImageFileReader()
        r.SetFileName(name)
        r.LoadPrivateTagsOff()
        try:
            r.ReadImageInformation()
            positions.append([float(v) for v in r.GetMetaData("0020|0032").split("\\")])
        except RuntimeError:
            return  # no positions to compare (the series reader reports unreadable files itself)
    pos = np.asarray(positions, np.float64)
    steps = np.linalg.norm(np.diff(pos, axis=0), axis=1)
    med = float(np.median(steps))
    if med <= 0:
        raise CaseError(f"the DICOM series in {folder} has slices at the same position; remove duplicates")
    worst = int(np.argmax(np.abs(steps - med)))
    if abs(steps[worst] - med) > SLICE_GAP_RTOL * med:
        raise CaseError(f"the DICOM series in {folder} is not evenly spaced: slices {worst + 1} and {worst + 2} are "
                        f"{steps[worst]:.2f} mm apart, the others {med:.2f} mm (a missing slice?); complete the "
                        "series")


def sitk_to_nnunet(image) -> tuple[np.ndarray, dict]:
    """A 3D SimpleITK image -> nnU-Net SimpleITKIO's ``(data [1, n0, n1, n2] float32, properties)``."""
    import SimpleITK as sitk
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise CaseError(f"expected a 3D single-component image, got {image.GetDimension()}D with "
                        f"{image.GetNumberOfComponentsPerPixel()} component(s)")
    arr = sitk.GetArrayFromImage(image)[None].astype(np.float32, copy=False)
    props = {"sitk_stuff": {"spacing": image.GetSpacing(), "origin": image.GetOrigin(),
                            "direction": image.GetDirection()},
             "spacing": [abs(s) for s in image.GetSpacing()[::-1]]}
    return arr, props


def arrays_from_memory(image, num_channels: int, spacing: Sequence[float] | None = None,
                       origin: Sequence[float] | None = None, direction: Sequence[float] | None = None
                       ) -> tuple[np.ndarray, dict]:
    """An image already in memory -> ``(data [C, n0, n1, n2] float32, properties)`` as :func:`read_input_case` gives
    for a file: ``image`` is a 3D SimpleITK image, a list of them (one per channel, same grid), or a numpy array
    ``[n0, n1, n2]`` / ``[C, n0, n1, n2]`` in SimpleITK's array order (``GetArrayFromImage``: ``k, j, i``) with
    ``spacing`` (mm), ``origin`` (mm, LPS) and ``direction`` (9 numbers, row-major) in **ITK order**, as SimpleITK's
    ``GetSpacing()``/``GetOrigin()``/``GetDirection()`` give them (origin 0 and identity direction by default)."""
    import SimpleITK as sitk
    if isinstance(image, np.ndarray):
        if spacing is None:
            raise UserError("a numpy image needs its voxel spacing: predict(array, spacing=(si, sj, sk)) in ITK order "
                            "(x, y, z), the reverse of the array's axis order")
        arr = image[None] if image.ndim == 3 else image
        if arr.ndim != 4:
            raise UserError(f"expected a numpy array [n0, n1, n2] or [C, n0, n1, n2], got shape {image.shape}")
        channels = []
        for a in arr:
            im = sitk.GetImageFromArray(np.ascontiguousarray(a, np.float32))
            im.SetSpacing([float(v) for v in spacing])
            im.SetOrigin([float(v) for v in (origin if origin is not None else (0.0, 0.0, 0.0))])
            if direction is not None:
                im.SetDirection([float(v) for v in direction])
            channels.append(im)
    else:
        if spacing is not None or origin is not None or direction is not None:
            raise UserError("spacing/origin/direction are for numpy arrays; a SimpleITK image carries its own")
        channels = list(image) if isinstance(image, (list, tuple)) else [image]
    datas, props = [], None
    for im in channels:
        if not isinstance(im, sitk.Image):
            raise UserError(f"cannot predict from a {type(im).__name__}; give a SimpleITK image, a numpy array with "
                            "spacing, or a file path")
        d, pr = sitk_to_nnunet(im)
        if props is not None and (d.shape != datas[0].shape or not np.allclose(pr["sitk_stuff"]["spacing"],
                                                                               props["sitk_stuff"]["spacing"])):
            raise UserError("the channels of an image must share one grid (shape and spacing)")
        datas.append(d)
        props = props or pr
    if len(datas) != num_channels:
        raise UserError(f"the image has {len(datas)} channel(s) but the model expects {num_channels}")
    return np.concatenate(datas, 0), props


def read_input_case(case: InputCase, reader, num_channels: int) -> tuple[np.ndarray, dict]:
    """``(data [C, n0, n1, n2] float32, properties)`` of one case; ``reader`` is an nnU-Net reader instance."""
    if case.problem:
        raise CaseError(case.problem)
    if case.dicom_dir is not None:
        data, props = sitk_to_nnunet(read_dicom_series(case.dicom_dir))
    else:
        from autoorgan.dataset.integrity import nonfinite_in_float_nifti, truncation_problem
        for f in case.files:
            if f.stat().st_size == 0:
                raise CaseError(f"{f.name} is empty")
            if (why := truncation_problem(f)) is not None:
                raise CaseError(f"{f.name} is damaged ({why}); replace the file")
            if (bad := nonfinite_in_float_nifti(f)):
                raise CaseError(f"{f.name} holds {bad} NaN/inf voxel(s); replace them (e.g. with the background "
                                "value)")
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net's readers print before raising
                data, props = reader.read_images([str(f) for f in case.files])
        except Exception as err:  # readers raise anything from RuntimeError to ITK exceptions
            raise CaseError(f"cannot read {case.source} ({_first_line(err)}); is it a valid image?") from None
    if not np.isfinite(data).all():
        raise CaseError(f"{case.source} holds {int((~np.isfinite(data)).sum())} NaN/inf voxel(s); replace them (e.g. "
                        "with the background value)")
    if data.ndim != 4 or 1 in data.shape[1:2]:
        raise CaseError(f"{case.source} is not a 3D image (array shape {tuple(data.shape[1:])})")
    if data.shape[0] != num_channels:
        raise CaseError(f"{case.source} has {data.shape[0]} channel(s) but the model expects {num_channels}")
    if "sitk_stuff" not in props:
        raise CaseError(f"{case.source}: the reader gave no image geometry; autoorgan needs SimpleITK-style "
                        "geometry to place boxes in the world")
    return np.asarray(data, np.float32), props
