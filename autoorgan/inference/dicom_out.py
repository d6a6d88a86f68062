"""DICOM outputs of ``autoorgan_predict`` (``--output_type dicom_seg rtstruct``): a DICOM SEG (highdicom) and/or an
RTSTRUCT (rt-utils) per case, referencing the DICOM series the case was predicted from.

Slice order is where such writers go wrong, so nothing here assumes one: the label map ``[n0, n1, n2]`` is in
SimpleITK's array order of the series as :func:`autoorgan.inference.inputs.read_dicom_series` read it, i.e. ``n0``
follows GDCM's file order, ``n1`` the rows and ``n2`` the columns of each slice. Each frame is matched to its source
instance by file name (SEG: frame ``k`` = ``files[k]``) or by SOP Instance UID (RTSTRUCT: rt-utils sorts the slices
itself along the slice normal; every one of its slices is looked up by UID). A reference series whose grid differs from
the predicted image (size, spacing, origin, direction) is refused.

Organ names come from dataset.json's ``labels``; colours from its optional ``label_colors`` (``{"liver": [r, g, b]}``,
0-255), else a fixed palette.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Sequence

import numpy as np

from autoorgan.boxes import Geometry
from autoorgan.inference.inputs import CaseError
from autoorgan.inference.outputs import box_label_map
from autoorgan.utils.fileio import atomic_output

OUTPUT_TYPES = ("nifti", "dicom_seg", "rtstruct")
DICOM_SUFFIX = {"dicom_seg": "_seg.dcm", "rtstruct": "_rtstruct.dcm"}
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255)]


def organ_colors(dataset_json: dict, names: dict[int, str]) -> dict[int, tuple[int, int, int]]:
    """``{label value: (r, g, b)}``: dataset.json's ``label_colors`` where given, else :data:`PALETTE` by label."""
    given = dataset_json.get("label_colors", {}) or {}
    out = {}
    for i, (label, name) in enumerate(sorted(names.items())):
        rgb = given.get(name, PALETTE[i % len(PALETTE)])
        out[label] = tuple(int(np.clip(v, 0, 255)) for v in rgb)[:3]
    return out


def series_files(dicom_dir: Path) -> list[str]:
    """The files of the one series in ``dicom_dir`` in the order SimpleITK reads them (array axis 0)."""
    import SimpleITK as sitk
    reader = sitk.ImageSeriesReader()
    ids = reader.GetGDCMSeriesIDs(str(dicom_dir))
    if len(ids) != 1:
        raise CaseError(f"{dicom_dir} must hold exactly one DICOM series to be referenced (found {len(ids)})")
    return list(reader.GetGDCMSeriesFileNames(str(dicom_dir), ids[0]))


def check_reference(dicom_dir: Path, geometry: Geometry) -> list[str]:
    """The reference series' files (array order), after checking that its grid is the predicted image's grid."""
    from autoorgan.inference.inputs import read_dicom_series
    files = series_files(dicom_dir)
    ref = read_dicom_series(dicom_dir)
    shape = tuple(reversed(ref.GetSize()))
    same = (shape == tuple(geometry.shape) and np.allclose(ref.GetSpacing(), geometry.spacing, rtol=1e-3, atol=1e-3)
            and np.allclose(ref.GetOrigin(), geometry.origin, atol=1e-2)
            and np.allclose(ref.GetDirection(), geometry.direction, atol=1e-4))
    if not same:
        raise CaseError(f"the reference DICOM series {dicom_dir} is not on the image's grid (size {shape} vs "
                        f"{tuple(geometry.shape)}, or spacing/origin/direction differ); give the series the image "
                        "was made from")
    return files


def organ_masks(label_map: np.ndarray | None, organs: dict[int, tuple[np.ndarray, float]], shape: Sequence[int],
                label_values: Sequence[int]) -> dict[int, np.ndarray]:
    """Per organ a boolean mask ``[n0, n1, n2]``: from the label map (segmentation) or, for box models, each box
    filled (voxel centres inside; boxes may overlap). Organs without a voxel are left out."""
    out = {}
    for label in label_values:
        if label_map is not None:
            mask = label_map == label
        elif label in organs:  # the box alone, as --save_box_masks draws it (boxes may overlap here)
            mask = box_label_map({label: organs[label]}, tuple(shape)) > 0
        else:
            continue
        if mask.any():
            out[label] = mask
    return out


def write_dicom_seg(masks: dict[int, np.ndarray], files: Sequence[str], names: dict[int, str],
                    colors: dict[int, tuple[int, int, int]], path: Path, version: str) -> None:
    """A binary DICOM SEG (one segment per organ with a voxel, numbered 1.. in label order) referencing ``files``."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(f) for f in files]
    labels = sorted(masks)
    if not labels:
        raise CaseError("no organ was found, so there is nothing to put in a DICOM SEG")
    pixels = np.stack([masks[lab] for lab in labels], -1).astype(np.uint8)  # [frames, rows, cols, segments]
    algo = hd.AlgorithmIdentificationSequence(name="autoorgan", version=version,
                                              family=codes.cid7162.ArtificialIntelligence)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=i + 1, segment_label=names.get(lab, str(lab))[:64],
        segmented_property_category=codes.SCT.Organ, segmented_property_type=codes.SCT.Organ,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algo,
        display_color=hd.color.CIELabColor.from_rgb(*colors.get(lab, PALETTE[0])))
        for i, lab in enumerate(labels)]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=901,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="autoorgan", manufacturer_model_name="autoorgan",
        software_versions=version, device_serial_number="0", series_description="autoorgan segmentation")
    with atomic_output(path) as tmp:
        seg.save_as(tmp)


def write_rtstruct(masks: dict[int, np.ndarray], dicom_dir: Path, files: Sequence[str], names: dict[int, str],
                   colors: dict[int, tuple[int, int, int]], path: Path) -> None:
    """An RTSTRUCT (one ROI per organ with a voxel; contours traced by rt-utils on each slice) for the series in
    ``dicom_dir`` (``files``: its files in array order)."""
    import pydicom
    from rt_utils import RTStructBuilder

    heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    ps = [float(v) for v in heads[0].PixelSpacing]
    if abs(ps[0] - ps[1]) > 1e-3 * max(ps):
        raise CaseError(f"the series' pixels are not square (PixelSpacing {ps[0]:g} x {ps[1]:g} mm): rt-utils, which "
                        "traces the RTSTRUCT contours, scales them with the row spacing on both axes and would "
                        "misplace them; use --output_type dicom_seg for this series")
    uid_to_k = {str(h.SOPInstanceUID): k for k, h in enumerate(heads)}
    with contextlib.redirect_stdout(io.StringIO()):  # rt-utils prints progress lines
        rt = RTStructBuilder.create_new(dicom_series_path=str(dicom_dir))
        order = [uid_to_k.get(str(ds.SOPInstanceUID)) for ds in rt.series_data]
        if None in order or len(order) != len(files):
            raise CaseError(f"{dicom_dir} holds DICOM images outside the series read ({len(order)} vs {len(files)} "
                            "slices); keep one series per folder")
        for label in sorted(masks):
            # rt-utils wants [rows, cols, slices] in its own slice order; our masks are [slices (files), rows, cols]
            mask = np.ascontiguousarray(masks[label][order].transpose(1, 2, 0))
            rt.add_roi(mask=mask, color=list(colors.get(label, PALETTE[0])), name=names.get(label, str(label)),
                       approximate_contours=False)
    rt.ds.SeriesDescription = "autoorgan structures"
    with atomic_output(path) as tmp:
        rt.ds.save_as(tmp)
