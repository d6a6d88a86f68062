"""Raw datasets in nnU-Net v2's layout, and the partial-annotation key of dataset.json.

Layout (as nnU-Net v2): ``DatasetXXX_Name/{imagesTr,labelsTr,imagesTs}/`` with images named
``CASE_XXXX<file_ending>`` (``XXXX`` = 4-digit channel index) and labels ``CASE<file_ending>``, plus
``dataset.json`` with ``channel_names``, ``labels`` (``{"background": 0, "Liver": 1, ...}``), ``numTraining`` and
``file_ending``.

Partial annotation (autoorgan's addition; see docs/dataset_format.md). An optional key::

    "annotated_labels": {
        "sets":  {"kidneys": ["KidneyLeft", "KidneyRight"]},
        "cases": {"case_000": "kidneys", "pt_1": ["Brainstem", "SpinalCord"]}
    }

``cases`` maps a case id to the labels that were annotated in it, either as a list (names or integer values) or
as the name of a set in ``sets`` (one set per member dataset when datasets are merged). Cases that are not listed
are fully annotated. A label that is *not* annotated in a case is **unknown**, not background: its voxels may be 0
in the label map although the organ is in the image, and no loss may treat them as background.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from autoorgan.utils.errors import DatasetIntegrityError

SUPPORTED_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".nhdr", ".mhd")
ANNOTATION_KEY = "annotated_labels"
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass
class RawCase:
    """One training case: its channel files (ordered by channel index) and its label file (None in imagesTs)."""

    case_id: str
    images: list[Path]
    label: Path | None


def load_dataset_json(dataset_folder: Path) -> dict:
    """Read and validate ``dataset.json``; every problem is a one-line DatasetIntegrityError saying the fix."""
    path = Path(dataset_folder) / "dataset.json"
    if not path.is_file():
        raise DatasetIntegrityError(f"{path} is missing: every dataset needs a dataset.json "
                                    "(see docs/dataset_format.md)")
    return read_model_dataset_json(path)


def read_model_dataset_json(path: Path) -> dict:
    """Read and validate a ``dataset.json`` file (a raw dataset's, or a model folder's copy)."""
    try:
        ds = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetIntegrityError(f"{path} is not valid JSON ({err}); fix the file") from None
    validate_dataset_json(ds, Path(path))
    return ds


def validate_dataset_json(ds: object, path: Path) -> None:
    if not isinstance(ds, dict):
        raise DatasetIntegrityError(f"{path} must hold a JSON object with channel_names, labels, numTraining, "
                                    "file_ending")
    for key in ("channel_names", "labels", "numTraining", "file_ending"):
        if key not in ds:
            hint = " (MSD-style 'modality' is converted by autoorgan_convert_MSD_dataset)" if key == "channel_names" \
                and "modality" in ds else ""
            raise DatasetIntegrityError(f"{path} has no '{key}' entry; add it{hint}")
    channels = ds["channel_names"]
    if not isinstance(channels, dict) or not channels or \
            sorted(channels, key=str) != [str(i) for i in range(len(channels))]:
        raise DatasetIntegrityError(f"{path}: channel_names must map '0', '1', ... to names, e.g. {{\"0\": \"CT\"}}")
    labels = ds["labels"]
    if not isinstance(labels, dict) or not labels:
        raise DatasetIntegrityError(f"{path}: labels must map names to integers, e.g. "
                                    '{"background": 0, "Liver": 1}')
    values = list(labels.values())
    if any(not isinstance(v, int) or isinstance(v, bool) for v in values):
        raise DatasetIntegrityError(f"{path}: label values must be integers (regions are not supported); got {labels}")
    if labels.get("background") != 0:
        raise DatasetIntegrityError(f"{path}: labels must contain \"background\": 0")
    if sorted(values) != list(range(len(values))):
        raise DatasetIntegrityError(f"{path}: label values must be unique and consecutive 0..{len(values) - 1}; got "
                                    f"{sorted(values)}")
    if not isinstance(ds["numTraining"], int) or ds["numTraining"] < 1:
        raise DatasetIntegrityError(f"{path}: numTraining must be a positive integer")
    if ds["file_ending"] not in SUPPORTED_ENDINGS:
        raise DatasetIntegrityError(f"{path}: file_ending {ds['file_ending']!r} is not supported; use one of "
                                    f"{', '.join(SUPPORTED_ENDINGS)}")
    if ANNOTATION_KEY in ds:
        _validate_annotation_key(ds, path)


def foreground_labels(dataset_json: Mapping) -> dict[str, int]:
    """``{name: value}`` of the foreground labels (everything but background), ordered by value."""
    items = sorted(((v, k) for k, v in dataset_json["labels"].items() if v != 0))
    return {k: v for v, k in items}


def _label_value(dataset_json: Mapping, item) -> int:
    labels = dataset_json["labels"]
    if isinstance(item, str):
        if item not in labels:
            raise KeyError(item)
        return int(labels[item])
    if isinstance(item, int) and not isinstance(item, bool) and item in labels.values():
        return int(item)
    raise KeyError(item)


def _validate_annotation_key(ds: dict, path: Path) -> None:
    spec = ds[ANNOTATION_KEY]
    if not isinstance(spec, dict) or not set(spec) <= {"sets", "cases"}:
        raise DatasetIntegrityError(f"{path}: '{ANNOTATION_KEY}' must be an object with 'sets' and/or 'cases' "
                                    "(see docs/dataset_format.md)")
    sets = spec.get("sets", {})
    for key in ("sets", "cases"):
        if not isinstance(spec.get(key, {}), dict):
            raise DatasetIntegrityError(f"{path}: '{ANNOTATION_KEY}.{key}' must be an object mapping names to label "
                                        "lists (see docs/dataset_format.md)")
    for name, members in {**{f"set {k}": v for k, v in sets.items()},
                          **{f"case {k}": v for k, v in spec.get("cases", {}).items()}}.items():
        if isinstance(members, str):
            if members not in sets:
                raise DatasetIntegrityError(f"{path}: {name} names the annotation set {members!r}, which is not in "
                                            f"'{ANNOTATION_KEY}.sets'; add the set or list the labels")
            continue
        if not isinstance(members, list):
            raise DatasetIntegrityError(f"{path}: {name} in '{ANNOTATION_KEY}' must be a list of label names")
        for item in members:
            try:
                value = _label_value(ds, item)
            except KeyError:
                raise DatasetIntegrityError(f"{path}: {name} in '{ANNOTATION_KEY}' lists {item!r}, which is not a "
                                            f"label of this dataset ({', '.join(ds['labels'])})") from None
            if value == 0:
                raise DatasetIntegrityError(f"{path}: {name} in '{ANNOTATION_KEY}' lists background; list organs only")


def annotated_labels(dataset_json: Mapping, case_id: str) -> list[int]:
    """Label values annotated in ``case_id`` (sorted, background excluded). Unlisted cases: all labels."""
    every = sorted(foreground_labels(dataset_json).values())
    spec = dataset_json.get(ANNOTATION_KEY)
    if not spec or case_id not in spec.get("cases", {}):
        return every
    members = spec["cases"][case_id]
    if isinstance(members, str):
        members = spec["sets"][members]
    return sorted({_label_value(dataset_json, m) for m in members})


def annotation_sets(dataset_json: Mapping) -> dict[str, list[int]]:
    """``{set name: sorted label values}`` of the named annotation sets (member datasets), if any."""
    sets = (dataset_json.get(ANNOTATION_KEY) or {}).get("sets", {})
    return {name: sorted({_label_value(dataset_json, m) for m in members}) for name, members in sets.items()}


def is_partially_annotated(dataset_json: Mapping) -> bool:
    """True when some case of the dataset does not annotate every label."""
    spec = dataset_json.get(ANNOTATION_KEY) or {}
    every = sorted(foreground_labels(dataset_json).values())
    return any(annotated_labels(dataset_json, c) != every for c in spec.get("cases", {}))


def split_channel_name(filename: str, file_ending: str) -> tuple[str, int] | None:
    """``"case_0001_0000.nii.gz" -> ("case_0001", 0)``; None when the name has no ``_XXXX`` channel suffix."""
    if not filename.endswith(file_ending):
        return None
    m = _CHANNEL_RE.match(filename[: -len(file_ending)])
    return (m.group("case"), int(m.group("channel"))) if m else None


def list_cases(dataset_folder: Path, dataset_json: Mapping, images_dir: str = "imagesTr",
               labels_dir: str | None = "labelsTr") -> dict[str, RawCase]:
    """Find every case of a split and check the folder structure (channels, labels, duplicates, stray files).

    nnU-Net's explicit ``"dataset"`` key (``{case: {"images": [...], "label": ...}}``, paths relative to the
    dataset folder) is honoured for the training split. Raises a one-line DatasetIntegrityError on the first
    structural problem.
    """
    folder = Path(dataset_folder)
    ending = dataset_json["file_ending"]
    n_channels = len(dataset_json["channel_names"])
    if images_dir == "imagesTr" and "dataset" in dataset_json:
        return _cases_from_dataset_key(folder, dataset_json)
    img_dir = folder / images_dir
    if not img_dir.is_dir():
        raise DatasetIntegrityError(f"{img_dir} is missing; put the images there as CASE_0000{ending}")
    files = sorted(p for p in img_dir.iterdir() if not p.name.startswith("."))
    for p in files:
        try:
            p.name.encode("utf-8")
        except UnicodeEncodeError:  # SimpleITK aborts the whole process on such names
            shown = p.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            raise DatasetIntegrityError(f"{img_dir} holds {shown!r}, whose name is not valid UTF-8; "
                                        "rename it") from None
    if not files:
        raise DatasetIntegrityError(f"{img_dir} is empty; put the images there as CASE_0000{ending}")
    channels: dict[str, dict[int, Path]] = {}
    lowered: dict[str, str] = {}
    for p in files:
        if not p.name.endswith(ending):
            other = next((e for e in SUPPORTED_ENDINGS if p.name.endswith(e)), None)
            if other and split_channel_name(p.name, other):
                case = split_channel_name(p.name, other)[0]
                raise DatasetIntegrityError(f"{p} ends with {other} but dataset.json says file_ending {ending!r}; "
                                            "convert the file or fix file_ending (case "
                                            f"{case} may be listed twice)")
            raise DatasetIntegrityError(f"{p.name} in {img_dir} is not an image of this dataset (expected "
                                        f"CASE_XXXX{ending}); move it out of the folder")
        parsed = split_channel_name(p.name, ending)
        if parsed is None:
            raise DatasetIntegrityError(f"{p.name} in {img_dir} has no channel suffix; rename it to "
                                        f"{p.name[:-len(ending)]}_0000{ending}")
        case, ch = parsed
        if case.lower() in lowered and lowered[case.lower()] != case:
            raise DatasetIntegrityError(f"case ids {lowered[case.lower()]!r} and {case!r} in {img_dir} differ only in "
                                        "upper/lower case (duplicate case id); rename one")
        lowered[case.lower()] = case
        if ch >= n_channels:
            raise DatasetIntegrityError(f"case {case}: extra channel file {p.name}; dataset.json declares "
                                        f"{n_channels} channel(s) (_0000.._{n_channels - 1:04d}): remove the file or "
                                        "add the channel to channel_names")
        channels.setdefault(case, {})[ch] = p
    cases: dict[str, RawCase] = {}
    for case, chans in channels.items():
        missing = [i for i in range(n_channels) if i not in chans]
        if missing:
            raise DatasetIntegrityError(f"case {case}: channel file {case}_{missing[0]:04d}{ending} is missing from "
                                        f"{img_dir}; add it or remove the case")
        cases[case] = RawCase(case, [chans[i] for i in range(n_channels)], None)
    if labels_dir is not None:
        lab_dir = folder / labels_dir
        if not lab_dir.is_dir():
            raise DatasetIntegrityError(f"{lab_dir} is missing; put the label maps there as CASE{ending}")
        label_files = {p.name[: -len(ending)]: p for p in lab_dir.iterdir()
                       if p.name.endswith(ending) and not p.name.startswith(".")}
        if not label_files:
            raise DatasetIntegrityError(f"{lab_dir} is empty; put the label maps there as CASE{ending}")
        for case in cases:
            if case not in label_files:
                raise DatasetIntegrityError(f"case {case}: label file {case}{ending} is missing from {lab_dir}; add it "
                                            "or move the case's images to imagesTs")
            cases[case].label = label_files[case]
        extra = sorted(set(label_files) - set(cases))
        if extra:
            raise DatasetIntegrityError(f"label {extra[0]}{ending} in {lab_dir} has no image "
                                        f"{extra[0]}_0000{ending} in {img_dir}; add the image or remove the label")
        check_annotated_cases(dataset_json, cases, folder / "dataset.json")
        if dataset_json["numTraining"] != len(cases):
            raise DatasetIntegrityError(f"dataset.json says numTraining {dataset_json['numTraining']} but {img_dir} "
                                        f"holds {len(cases)} cases; fix numTraining")
    return cases


def check_annotated_cases(dataset_json: Mapping, cases: Mapping, path: Path) -> None:
    """Every case id listed in ``annotated_labels.cases`` must be a case: a typo would silently make the intended
    case fully annotated (its unannotated organs trained as background), which partial annotation exists to avoid."""
    listed = (dataset_json.get(ANNOTATION_KEY) or {}).get("cases", {})
    unknown = sorted(set(listed) - set(cases))
    if unknown:
        raise DatasetIntegrityError(f"{path}: '{ANNOTATION_KEY}.cases' names {len(unknown)} case(s) that are not in "
                                    f"the dataset (e.g. {unknown[0]!r}); fix the id(s) or remove the entries")


def _cases_from_dataset_key(folder: Path, dataset_json: Mapping) -> dict[str, RawCase]:
    entries = dataset_json["dataset"]
    if not isinstance(entries, dict) or not entries:
        raise DatasetIntegrityError("dataset.json: 'dataset' must map case ids to {\"images\": [...], \"label\": ...}")
    cases: dict[str, RawCase] = {}
    n_channels = len(dataset_json["channel_names"])
    seen: set[str] = set()
    for case, entry in entries.items():
        if case.lower() in seen:
            raise DatasetIntegrityError(f"dataset.json: duplicate case id {case!r} in 'dataset'; rename one")
        seen.add(case.lower())
        images = [Path(p) if Path(p).is_absolute() else (folder / p) for p in entry.get("images", [])]
        if len(images) != n_channels:
            raise DatasetIntegrityError(f"case {case}: 'dataset' lists {len(images)} image(s) but dataset.json "
                                        f"declares {n_channels} channel(s); fix the entry")
        label = entry.get("label")
        if label is None:
            raise DatasetIntegrityError(f"case {case}: 'dataset' entry has no 'label'; add the label file")
        label = Path(label) if Path(label).is_absolute() else folder / label
        for f in [*images, label]:
            if not f.is_file():
                raise DatasetIntegrityError(f"case {case}: file {f} listed in dataset.json does not exist; fix the "
                                            "path")
        cases[case] = RawCase(case, images, label)
    check_annotated_cases(dataset_json, cases, folder / "dataset.json")
    return cases
