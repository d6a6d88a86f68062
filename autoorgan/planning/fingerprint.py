"""Dataset fingerprint: nnU-Net v2's fields plus what organ detection needs, from one read of every case.

``dataset_fingerprint.json`` holds nnU-Net's keys (``spacings``, ``shapes_after_crop``,
``foreground_intensity_properties_per_channel``, ``median_relative_size_after_cropping``), so nnunetv2's
experiment planner reads it as its own, and an ``autoorgan`` section with, per class, how many cases annotate and
contain it and its box extent (voxels and mm: median, 5th/95th percentile), organs per case, and the body extent
per case.

Two deliberate differences from nnU-Net (docs/fingerprint.md):

* Cropping uses a **body mask** (CT: HU > -500, largest connected component; other modalities: nnU-Net's
  filled nonzero mask). nnU-Net's nonzero crop does nothing on CT, whose air is -1000, not 0.
* Intensity statistics are sampled from the body mask, not from labelled voxels: with partial annotation the
  labelled voxels are a case-dependent subset of organs and would bias the CT normalization.
"""
from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Mapping

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from autoorgan.boxes import boxes_from_label_map
from autoorgan.dataset.integrity import read_and_check_case
from autoorgan.dataset.raw import RawCase, annotated_labels, foreground_labels
from autoorgan.utils.errors import DatasetIntegrityError

CT_BODY_THRESHOLD_HU = -500.0
TOTAL_INTENSITY_SAMPLES = 2_000_000  # over the whole dataset, split evenly between cases


def is_ct_channel(name: str) -> bool:
    """nnU-Net's rule: the channel name 'CT' (any case) selects CT normalization."""
    return str(name).strip().lower() == "ct"


def body_mask(image: np.ndarray, ct_channels: list[int]) -> np.ndarray:
    """Body mask of ``image [C, n0, n1, n2]`` -> bool ``[n0, n1, n2]``.

    With a CT channel: voxels above -500 HU, keeping the largest connected component (drops the table and noise).
    Otherwise: the filled nonzero mask of all channels (nnU-Net's rule). An empty mask falls back to everything.
    """
    if ct_channels:
        mask = image[ct_channels[0]] > CT_BODY_THRESHOLD_HU
        labelled, n = ndimage.label(mask)
        if n > 1:
            sizes = np.bincount(labelled.ravel())
            sizes[0] = 0
            mask = labelled == int(np.argmax(sizes))
    else:
        from nnunetv2.preprocessing.cropping.cropping import create_nonzero_mask
        mask = create_nonzero_mask(image)
    if not mask.any():
        mask = np.ones(image.shape[1:], dtype=bool)
    return mask


def mask_bbox(mask: np.ndarray) -> list[int]:
    """Tight voxel box ``[lo0, lo1, lo2, hi0, hi1, hi2]`` of a non-empty bool mask (edge convention)."""
    return boxes_from_label_map(mask.astype(np.uint8))[1]


def analyze_case(case: RawCase, dataset_json: Mapping, n_samples: int, check: bool, seed: int = 1234) -> dict:
    """Read, check and fingerprint one case. Returns ``{"case_id", "problems"}`` plus, when the case is valid,
    its fingerprint entries (spacing, shapes, body box, intensity samples, organ boxes, annotated labels)."""
    data = read_and_check_case(case.case_id, case.images, case.label, dataset_json, check=check)
    if data.problems:
        return {"case_id": case.case_id, "problems": data.problems}
    channel_names = dataset_json["channel_names"]
    ct = [int(c) for c, name in channel_names.items() if is_ct_channel(name)]
    mask = body_mask(data.image, ct)
    body = mask_bbox(mask)
    spacing = data.geometry.spacing_array_order
    shape = np.array(data.image.shape[1:])
    crop_shape = np.array(body[3:]) - np.array(body[:3])
    rng = np.random.default_rng(seed)
    samples, stats = [], []
    for c in range(data.image.shape[0]):
        values = data.image[c][mask]
        samples.append(rng.choice(values, n_samples, replace=True) if len(values) else np.zeros(0, np.float32))
        stats.append({k: float(v) for k, v in zip(
            ("mean", "median", "min", "max", "percentile_99_5", "percentile_00_5"),
            (values.mean(), np.median(values), values.min(), values.max(), *np.percentile(values, [99.5, 0.5])))})
    annotated = annotated_labels(dataset_json, case.case_id)
    boxes = boxes_from_label_map(data.seg, labels=annotated) if data.seg is not None else {}
    return {
        "case_id": case.case_id, "problems": [], "warnings": data.warnings,
        "spacing": spacing.tolist(), "shape": shape.tolist(), "shape_after_crop": crop_shape.tolist(),
        "direction": [float(v) for v in data.geometry.direction],
        "relative_size_after_crop": float(np.prod(crop_shape) / np.prod(shape)),
        "body_bbox": body, "body_extent_mm": (crop_shape * spacing).round(3).tolist(),
        "intensity_samples": samples, "intensity_stats": stats,
        "boxes": {str(k): v for k, v in boxes.items()}, "annotated": annotated,
        "present": sorted(int(k) for k in boxes),
    }


def _analyze_star(args):
    return analyze_case(*args)


def _percentiles(values: list, ndigits: int = 3) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {"median": None, "p05": None, "p95": None}
    med, p05, p95 = (np.percentile(arr, q, axis=0) for q in (50, 5, 95))
    return {"median": np.round(med, ndigits).tolist(), "p05": np.round(p05, ndigits).tolist(),
            "p95": np.round(p95, ndigits).tolist()}


def aggregate(results: list[dict], dataset_json: Mapping) -> dict:
    """Combine per-case results into the fingerprint dict (JSON-ready)."""
    results = sorted(results, key=lambda r: r["case_id"])
    n_channels = len(dataset_json["channel_names"])
    intensity = {}
    for c in range(n_channels):
        values = np.concatenate([r["intensity_samples"][c] for r in results])
        intensity[str(c)] = {
            "max": float(values.max()), "mean": float(values.mean()), "median": float(np.median(values)),
            "min": float(values.min()), "percentile_00_5": float(np.percentile(values, 0.5)),
            "percentile_99_5": float(np.percentile(values, 99.5)), "std": float(values.std()),
        }
    classes = {}
    for name, value in foreground_labels(dataset_json).items():
        key = str(value)
        annotating = [r for r in results if value in r["annotated"]]
        having = [r for r in annotating if key in r["boxes"]]
        extents_vox = [np.subtract(r["boxes"][key][3:], r["boxes"][key][:3]) for r in having]
        extents_mm = [e * np.asarray(r["spacing"]) for e, r in zip(extents_vox, having)]
        classes[name] = {
            "label": value, "num_cases_annotated": len(annotating), "num_cases_present": len(having),
            "box_extent_voxels": _percentiles(extents_vox, 1), "box_extent_mm": _percentiles(extents_mm, 2),
        }
    organs_per_case = [len(r["present"]) for r in results]
    return {
        # nnU-Net v2's fingerprint keys (read by its ExperimentPlanner); spacings/shapes in array order
        "foreground_intensity_properties_per_channel": intensity,
        "median_relative_size_after_cropping": float(np.median([r["relative_size_after_crop"] for r in results])),
        "shapes_after_crop": [r["shape_after_crop"] for r in results],
        "spacings": [r["spacing"] for r in results],
        "autoorgan": {
            "num_cases": len(results),
            "intensity_mask": "body mask (CT: HU > -500, largest component; else filled nonzero mask)",
            "num_foreground_classes": len(classes),
            "organs_per_case": {"max": int(max(organs_per_case)), "median": float(np.median(organs_per_case)),
                                "min": int(min(organs_per_case))},
            "body_extent_mm": _percentiles([r["body_extent_mm"] for r in results], 2),
            "classes": classes,
            "cases": {r["case_id"]: {
                "spacing": r["spacing"], "shape": r["shape"], "direction": r["direction"], "body_bbox": r["body_bbox"],
                "body_extent_mm": r["body_extent_mm"], "annotated": r["annotated"], "present": r["present"],
                "boxes": r["boxes"], "intensity_stats": r["intensity_stats"]} for r in results},
        },
    }


def extract_fingerprint(cases: Mapping[str, RawCase], dataset_json: Mapping, num_processes: int = 2,
                        check: bool = True, progress: bool = True) -> dict:
    """Fingerprint of a dataset. With ``check``, every case is verified first-hand from the same read; any
    problem raises DatasetIntegrityError whose message lists the first problems (one per line)."""
    n_samples = max(1000, TOTAL_INTENSITY_SAMPLES // max(1, len(cases)))
    jobs = [(c, dataset_json, n_samples, check) for c in cases.values()]
    results = []
    bar = tqdm(total=len(jobs), desc="Fingerprint", unit="case", disable=not progress)
    if num_processes <= 1:
        for job in jobs:
            results.append(_analyze_star(job))
            bar.update()
    else:
        with ProcessPoolExecutor(num_processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            for res in pool.map(_analyze_star, jobs, chunksize=1):
                results.append(res)
                bar.update()
    bar.close()
    problems = [p for r in results for p in r["problems"]]
    if problems:
        raise_problems(problems)
    warnings = [w for r in results for w in r.get("warnings", [])]
    for w in warnings[:10]:
        print(f"autoorgan: warning: {w}", file=sys.stderr)
    if len(warnings) > 10:
        print(f"autoorgan: warning: ... and {len(warnings) - 10} more (dataset_fingerprint.json autoorgan.warnings)",
              file=sys.stderr)
    fp = aggregate(results, dataset_json)
    fp["autoorgan"]["warnings"] = warnings
    fp["autoorgan"]["file_stats"] = file_stats(cases)
    return fp


def file_stats(cases: Mapping[str, RawCase]) -> dict[str, list[list[int]]]:
    """Per case, (size, modification time) of each of its files: a rerun re-checks the dataset when they change."""
    out = {}
    for cid, case in cases.items():
        files = [*case.images, *([case.label] if case.label is not None else [])]
        out[cid] = [[int(st.st_size), int(st.st_mtime_ns)] for st in (Path(f).stat() for f in files)]
    return out


def raise_problems(problems: list[str]) -> None:
    """Raise one DatasetIntegrityError for a list of problems: the first is the message, the count says more."""
    more = f" ({len(problems) - 1} more problem(s): " + " | ".join(problems[1:4]) + \
        (" | ..." if len(problems) > 4 else "") + ")" if len(problems) > 1 else ""
    raise DatasetIntegrityError(problems[0] + more)
