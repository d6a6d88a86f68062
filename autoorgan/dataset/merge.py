"""Merge several raw datasets into one partially annotated dataset without copying images.

The merged ``dataset.json`` lists every case in nnU-Net's ``dataset`` key with the *source* image paths
(absolute), so no image is copied. Organs are matched **by label name** across the sources (``Liver`` in one and
``Liver`` in another are the same class, whatever their values); the merged labels are numbered 1..M in order of
first appearance. A source whose values differ from the merged ones gets its label maps rewritten with the new
values into the merged ``labelsTr`` (label maps are small); otherwise its label files are referenced as they are.

Case ids are prefixed with the source's name (``Phantom_case_000``) so ids never collide. Each case's annotated
labels are the source's per-case annotation (its ``annotated_labels`` key) or else all of the source's labels,
mapped by name; ``annotated_labels.sets`` gets one set per source. The folder is written under a temporary name
and renamed at the end.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from autoorgan.dataset.raw import ANNOTATION_KEY, annotated_labels, foreground_labels, list_cases, load_dataset_json
from autoorgan.utils.errors import UserError
from autoorgan.utils.fileio import write_json_atomic


def merged_labels(sources: Sequence[dict]) -> dict[str, int]:
    """``{name: value}`` over all sources by name, numbered 1..M in order of first appearance."""
    names: list[str] = []
    for ds in sources:
        for name in sorted(foreground_labels(ds), key=foreground_labels(ds).get):
            twin = next((n for n in names if n.lower() == name.lower() and n != name), None)
            if twin is not None:
                raise UserError(f"labels {twin!r} and {name!r} of the datasets differ only in upper/lower case; give "
                                "them the same name in both dataset.json files (one organ) or clearly different names")
            if name not in names:
                names.append(name)
    return {"background": 0, **{n: i + 1 for i, n in enumerate(names)}}


def check_label_maps(folder: Path, dataset_json: dict) -> None:
    """Every label map of a source holds only its dataset.json's label values, and is complete: a value missing
    from dataset.json would silently become background in the merged dataset."""
    from autoorgan.dataset.integrity import truncation_problem
    from autoorgan.evaluation.folders import read_label_map
    allowed = set(int(v) for v in dataset_json["labels"].values())
    for cid, case in sorted(list_cases(folder, dataset_json).items()):
        if (why := truncation_problem(case.label)) is not None:
            raise UserError(f"{case.label} is damaged ({why}); replace it before merging")
        values = set(np.unique(read_label_map(Path(case.label))[0]).tolist())
        if values - allowed:
            raise UserError(f"case {cid} of {folder.name}: label value(s) {sorted(values - allowed)} are not in its "
                            f"dataset.json labels {sorted(allowed)}; add them there or fix the label map")


def merge_datasets(source_folders: Sequence[Path], target_folder: Path, name: str) -> Path:
    """Write the merged dataset to ``target_folder`` (must not exist). Returns it."""
    import SimpleITK as sitk
    if target_folder.exists():
        raise UserError(f"{target_folder} exists; remove it or choose another id")
    jsons = [load_dataset_json(f) for f in source_folders]
    channels = {tuple(sorted(ds["channel_names"].items())) for ds in jsons}
    if len(channels) > 1:
        raise UserError("the datasets have different channel_names "
                        f"({'; '.join(str(dict(c)) for c in channels)}); only datasets with the same channels merge")
    endings = {ds["file_ending"] for ds in jsons}
    if len(endings) > 1:
        raise UserError(f"the datasets use different file endings ({', '.join(sorted(endings))}); convert them to one "
                        "first")
    labels = merged_labels(jsons)
    for folder, ds in zip(source_folders, jsons, strict=True):  # every source checked before anything is written
        check_label_maps(folder, ds)
    tmp = target_folder.with_name(f".{target_folder.name}.partial_write")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "labelsTr").mkdir(parents=True)
    entries, cases_ann, sets = {}, {}, {}
    try:
        for folder, ds in zip(source_folders, jsons):
            src = folder.name.split("_", 1)[-1]
            src_labels = foreground_labels(ds)
            remap = {v: labels[n] for n, v in src_labels.items()}
            identity = all(a == b for a, b in remap.items())
            sets[src] = sorted(src_labels, key=src_labels.get)
            for cid, case in sorted(list_cases(folder, ds).items()):
                new_id = f"{src}_{cid}"
                label_path = Path(case.label).resolve()
                if not identity:
                    img = sitk.ReadImage(str(label_path))
                    arr = sitk.GetArrayFromImage(img)
                    lut = np.zeros(int(max(arr.max(), max(remap))) + 1, np.uint16)
                    for a, b in remap.items():
                        lut[a] = b
                    out = sitk.GetImageFromArray(lut[arr].astype(np.uint8 if len(labels) < 256 else np.uint16))
                    out.CopyInformation(img)
                    label_path = tmp / "labelsTr" / f"{new_id}{ds['file_ending']}"
                    sitk.WriteImage(out, str(label_path), useCompression=True)
                    label_path = target_folder / "labelsTr" / label_path.name
                entries[new_id] = {"images": [str(Path(p).resolve()) for p in case.images], "label": str(label_path)}
                ann = annotated_labels(ds, cid)
                inv = {v: n for n, v in src_labels.items()}
                names = [inv[v] for v in ann]
                cases_ann[new_id] = src if names == sets[src] else names
        merged = {"channel_names": jsons[0]["channel_names"], "labels": labels, "numTraining": len(entries),
                  "file_ending": jsons[0]["file_ending"], "name": name,
                  "description": "merged by autoorgan_merge_datasets from " + ", ".join(f.name for f in source_folders),
                  "dataset": entries, ANNOTATION_KEY: {"sets": sets, "cases": cases_ann}}
        write_json_atomic(merged, tmp / "dataset.json")
        tmp.rename(target_folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target_folder
