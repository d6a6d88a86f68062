"""Converters into autoorgan's raw layout: the Medical Segmentation Decathlon layout (through nnunetv2's converter)
and per-case contoured-organ lists (such as OpenKBP's ``contoured.json``) into the ``annotated_labels`` key."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from autoorgan.dataset.raw import ANNOTATION_KEY, load_dataset_json
from autoorgan.utils.errors import UserError
from autoorgan.utils.fileio import write_json_atomic
from autoorgan.utils.paths import dataset_folder_name, nnunet_paths


def _taken(raw_root: Path, dataset_id: int) -> list[Path]:
    return sorted(p for p in Path(raw_root).glob(f"Dataset{dataset_id:03d}_*") if p.is_dir()) \
        if Path(raw_root).is_dir() else []


def convert_msd(source: Path, raw_root: Path, dataset_id: int | None = None, num_processes: int = 2) -> Path:
    """MSD ``TaskXX_Name`` folder -> ``raw_root/DatasetXXX_Name`` (channels split into ``_XXXX`` files by
    nnunetv2's converter). Written in a temporary folder and moved into place when complete."""
    source = Path(source)
    if not source.is_dir():
        raise UserError(f"{source} is not a folder; give the extracted MSD task folder, e.g. Task04_Hippocampus")
    for sub in ("imagesTr", "labelsTr", "dataset.json"):
        if not (source / sub).exists():
            raise UserError(f"{source} has no {sub}; is it an MSD task folder (TaskXX_Name with imagesTr, labelsTr, "
                            "imagesTs, dataset.json)?")
    try:
        msd = json.loads((source / "dataset.json").read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{source / 'dataset.json'} is not valid JSON ({err}); fix it") from None
    missing = [k for k in ("modality", "labels") if not isinstance(msd, dict) or k not in msd]
    if missing:
        raise UserError(f"{source / 'dataset.json'} has no {' or '.join(repr(k) for k in missing)} entry (an MSD "
                        "dataset.json names its modalities and labels); add it")
    parts = source.name.split("_", 1)
    if len(parts) != 2 or not parts[0].startswith("Task") or not parts[0][4:].isdigit():
        raise UserError(f"folder name {source.name!r} is not of the form TaskXX_Name; rename it")
    did = dataset_id if dataset_id is not None else int(parts[0][4:])
    if _taken(raw_root, did):
        raise UserError(f"dataset id {did} is taken ({_taken(raw_root, did)[0]}); choose another with -d")
    from nnunetv2.dataset_conversion import convert_MSD_dataset as conv  # noqa: F401  (import before patching)
    from nnunetv2.utilities import dataset_name_id_conversion  # noqa: F401
    raw_root = Path(raw_root)
    raw_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=raw_root, prefix=".msd_convert_") as tmp:
        src = Path(tmp) / "src" / source.name
        src.mkdir(parents=True)
        for sub in ("imagesTr", "labelsTr", "dataset.json"):
            (src / sub).symlink_to((source / sub).resolve())
        if (source / "imagesTs").is_dir():
            (src / "imagesTs").symlink_to((source / "imagesTs").resolve())
        else:
            (src / "imagesTs").mkdir()
        out = Path(tmp) / "out"
        out.mkdir()
        with nnunet_paths(raw=out, preprocessed=out / "pre", results=out / "res"):
            try:
                conv.convert_msd_dataset(str(src), did, num_processes)
            except (AssertionError, RuntimeError) as err:
                raise UserError(f"MSD conversion of {source} failed: {err}") from None
        name = dataset_folder_name(did, parts[1])
        shutil.move(str(out / name), str(raw_root / name))
    return raw_root / name


def add_contoured_labels(source: Path, raw_root: Path, contoured_json: Path | None = None,
                         dataset_id: int | None = None) -> Path:
    """Write ``annotated_labels`` into a dataset's dataset.json from a ``{"contoured": {case: [organ, ...]}}``
    file. If ``source`` is outside ``raw_root`` (e.g. a read-only shared copy), a dataset folder is created in
    ``raw_root`` whose imagesTr/labelsTr are symbolic links to the source's (nothing is copied)."""
    source = Path(source)
    ds = load_dataset_json(source)
    contoured_json = Path(contoured_json) if contoured_json else source / "contoured.json"
    if not contoured_json.is_file():
        raise UserError(f"{contoured_json} does not exist; pass the per-case organ list with -j")
    try:
        spec = json.loads(contoured_json.read_text())
    except ValueError as err:
        raise UserError(f"{contoured_json} is not valid JSON ({err})") from None
    per_case = spec.get("contoured", spec)
    if not isinstance(per_case, dict):
        raise UserError(f"{contoured_json} must map case ids to lists of organ names (optionally under 'contoured')")
    bad = next((c for c, o in per_case.items() if not isinstance(o, list) or not all(isinstance(n, str) for n in o)),
               None)
    if bad is not None:
        raise UserError(f"{contoured_json}: the entry of case {bad!r} must be a list of organ names, got "
                        f"{per_case[bad]!r}")
    from autoorgan.dataset.raw import list_cases
    cases = list_cases(source, ds)
    not_cases = sorted(set(per_case) - set(cases))
    if not_cases:
        raise UserError(f"{contoured_json} lists {len(not_cases)} case(s) that are not in {source.name} (e.g. "
                        f"{not_cases[0]!r}); fix the id(s): a typo would leave the real case fully annotated")
    unknown = sorted({o for organs in per_case.values() for o in organs} - set(ds["labels"]))
    if unknown:
        raise UserError(f"{contoured_json} names organ(s) {unknown} that are not labels of {source.name}; fix the "
                        "names to match dataset.json")
    every = sorted(k for k in ds["labels"] if k != "background")
    ds[ANNOTATION_KEY] = {"cases": {c: sorted(o, key=lambda n: ds["labels"][n]) for c, o in sorted(per_case.items())
                                    if sorted(o) != every}}
    name = source.name
    if dataset_id is not None:
        name = dataset_folder_name(dataset_id, source.name.split("_", 1)[1])
    target = Path(raw_root) / name
    if target.resolve() != source.resolve():
        if target.exists():
            raise UserError(f"{target} already exists; remove it or choose another id with -d")
        tmp = target.with_name(f".{target.name}.partial_write")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            if (source / sub).is_dir():
                (tmp / sub).symlink_to((source / sub).resolve())
        write_json_atomic(ds, tmp / "dataset.json")
        tmp.rename(target)
    else:
        write_json_atomic(ds, target / "dataset.json")
    return target
