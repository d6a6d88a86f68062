"""Trained models as one file: ``autoorgan_export_model_to_zip`` / ``autoorgan_install_model_from_zip``.

A model zip holds exactly::

    autoorgan_model.json                                  manifest: versions, folds, sha256 and size of every file
    DatasetXXX_Name/<Trainer>__<Plans>__<section>/plans.json
    DatasetXXX_Name/<Trainer>__<Plans>__<section>/dataset.json
    DatasetXXX_Name/<Trainer>__<Plans>__<section>/fold_F/checkpoint_<final|best|latest>.pth   (weights only)

Installing someone else's zip must never run code or write outside ``$autoorgan_results``: every entry is checked
before anything is written (names from the layout above only: no absolute paths, ``..``, links, devices or other
files; sizes and sha256 as the manifest says; a size cap against zip bombs), the files are extracted into a hidden
folder inside the results root, the JSON files are validated, every checkpoint is read with ``weights_only=True``
(a pickled object other than tensors and plain data is refused without being run) and loaded into the network the
plans describe; only then is the folder renamed into place. An existing model folder is kept unless ``overwrite``.
"""
from __future__ import annotations

import hashlib
import io
import json
import platform
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Sequence

from autoorgan.configurations import PLANS_SECTIONS
from autoorgan.utils.errors import UserError

MANIFEST = "autoorgan_model.json"
FORMAT = 1
MAX_TOTAL_BYTES = 8 * 1024 ** 3   # no autoorgan model comes near (a checkpoint is tens of MB)
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,120}"
_SECTION = "|".join(PLANS_SECTIONS)
_ENTRY = re.compile(rf"^(?P<dataset>Dataset\d{{3}}_{_NAME})/(?P<model>{_NAME}__{_NAME}__(?:{_SECTION}))/"
                    r"(?P<file>plans\.json|dataset\.json|fold_(?:\d+|all)/checkpoint_(?:final|best|latest)\.pth)$")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def export_model_zip(model_folder: Path, folds: Sequence[str] | None, checkpoint: str, out_zip: Path) -> dict:
    """Write ``out_zip`` from a trained model folder (weights only: the optimizer state and training bookkeeping are
    left out); returns the manifest."""
    import torch

    from autoorgan import __version__
    from autoorgan.inference.predictor import available_folds
    from autoorgan.utils.checkpoints import load_checkpoint
    from autoorgan.utils.fileio import atomic_output
    model_folder = Path(model_folder)
    for f in ("plans.json", "dataset.json"):
        if not (model_folder / f).is_file():
            raise UserError(f"{model_folder} is not a trained model folder (no {f})")
    have = available_folds(model_folder, checkpoint)
    chosen = [str(f) for f in folds] if folds else have
    if not chosen or (missing := [f for f in chosen if f not in have]):
        raise UserError(f"no {checkpoint} for fold(s) {', '.join(chosen and missing) or '(any)'} in {model_folder} "
                        f"(available: {', '.join(have) or 'none'})")
    prefix = f"{model_folder.parent.name}/{model_folder.name}"
    files: dict[str, bytes] = {f"{prefix}/{f}": (model_folder / f).read_bytes() for f in ("plans.json", "dataset.json")}
    for fold in chosen:
        ck = load_checkpoint(model_folder / f"fold_{fold}" / checkpoint, "retrain it or export another fold")
        buf = io.BytesIO()
        torch.save({"network": ck["network"]}, buf)
        files[f"{prefix}/fold_{fold}/{checkpoint}"] = buf.getvalue()
    bad = [name for name in files if not _ENTRY.match(name)]
    if bad:
        raise UserError(f"{bad[0]} does not follow the model folder layout (DatasetXXX_Name/<Trainer>__<Plans>__"
                        f"<{'|'.join(PLANS_SECTIONS)}>/...); export a folder made by autoorgan_train")
    import nnunetv2
    manifest = {"format": FORMAT, "autoorgan_version": __version__, "torch_version": torch.__version__,
                "nnunetv2_version": getattr(nnunetv2, "__version__", "unknown"),
                "python_version": platform.python_version(), "dataset": model_folder.parent.name,
                "model_folder": model_folder.name, "folds": chosen, "checkpoint": checkpoint,
                "files": {name: {"sha256": _sha256(data), "bytes": len(data)} for name, data in files.items()}}
    out_zip = Path(out_zip)
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_zip) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST, json.dumps(manifest, indent=2))
        for name, data in files.items():
            zf.writestr(name, data)
    return manifest


def _check_entries(zf: zipfile.ZipFile, path: Path) -> dict:
    """The manifest, after checking every entry's name, kind and size against it (nothing is extracted)."""
    infos = zf.infolist()
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        raise UserError(f"{path} holds an entry twice; it is not a model zip made by autoorgan_export_model_to_zip")
    for info in infos:
        kind = stat.S_IFMT(info.external_attr >> 16)
        if info.filename != MANIFEST and not _ENTRY.match(info.filename):
            raise UserError(f"{path} holds an unexpected entry {info.filename!r} (only plans.json, dataset.json, "
                            "fold_F/checkpoint_*.pth under DatasetXXX_Name/<model folder>/ and the manifest are "
                            "allowed); refusing to install it")
        if kind not in (0, stat.S_IFREG) or info.is_dir():
            raise UserError(f"{path}: entry {info.filename!r} is a link or special file; refusing to install it")
        if info.flag_bits & 0x1:
            raise UserError(f"{path}: entry {info.filename!r} is encrypted; refusing to install it")
    if MANIFEST not in names:
        raise UserError(f"{path} has no {MANIFEST}; it is not a model zip made by autoorgan_export_model_to_zip")
    if zf.getinfo(MANIFEST).file_size > 1024 ** 2:
        raise UserError(f"{path}: {MANIFEST} is implausibly large; refusing to install it")
    try:
        manifest = json.loads(zf.read(MANIFEST))
        listed = manifest["files"]
        assert isinstance(listed, dict) and all(isinstance(v.get("sha256"), str) and isinstance(v.get("bytes"), int)
                                                for v in listed.values())
    except Exception:  # noqa: BLE001 - any malformed manifest gets the same answer
        raise UserError(f"{path}: {MANIFEST} is not a valid manifest; re-export the model") from None
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path} is a model zip of format {manifest.get('format')!r}; this autoorgan reads format "
                        f"{FORMAT}: install it with the autoorgan version that exported it "
                        f"({manifest.get('autoorgan_version', 'unknown')})")
    entries = sorted(n for n in names if n != MANIFEST)
    if sorted(listed) != entries:
        raise UserError(f"{path}: the files do not match its manifest; the zip was altered or damaged")
    models = {m.group("dataset") + "/" + m.group("model") for n in entries if (m := _ENTRY.match(n))}
    if len(models) != 1:
        raise UserError(f"{path} holds {len(models)} model folders; a model zip holds exactly one")
    total = 0
    for info in infos:
        if info.filename != MANIFEST and info.file_size != listed[info.filename]["bytes"]:
            raise UserError(f"{path}: {info.filename} has another size than its manifest says; refusing it")
        total += info.file_size
    if total > MAX_TOTAL_BYTES:
        raise UserError(f"{path} would unpack to {total / 1024 ** 3:.1f} GB; refusing it (limit "
                        f"{MAX_TOTAL_BYTES / 1024 ** 3:.0f} GB)")
    return manifest


def install_model_zip(zip_path: Path, results_root: Path, overwrite: bool = False) -> Path:
    """Check, extract and validate a model zip into ``results_root``; returns the installed model folder."""
    from autoorgan.inference.predictor import load_predictor
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise UserError(f"{zip_path} does not exist; give the .zip written by autoorgan_export_model_to_zip")
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as err:
        raise UserError(f"{zip_path} is not a readable zip file ({err}); download it again") from None
    with zf:
        manifest = _check_entries(zf, zip_path)
        model_rel = Path(manifest["dataset"]) / manifest["model_folder"]
        first = _ENTRY.match(next(n for n in manifest["files"]))
        if first is None or Path(first.group("dataset")) / first.group("model") != model_rel:
            raise UserError(f"{zip_path}: its manifest names another model folder than its files; refusing it")
        target = Path(results_root) / model_rel
        if target.exists() and not overwrite:
            raise UserError(f"{target} already exists; remove it or install with --overwrite")
        results_root = Path(results_root)
        results_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".install_", dir=results_root))
        try:
            for name, meta in manifest["files"].items():
                data = zf.read(name)  # CRC-checked by zipfile
                if len(data) != meta["bytes"] or _sha256(data) != meta["sha256"]:
                    raise UserError(f"{zip_path}: {name} does not match its checksum; the zip is damaged or altered")
                out = staging / name
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(data)
            # plans, dataset.json, every checkpoint (weights_only) and the networks they build: the predictor's loader
            try:
                load_predictor(staging / model_rel, manifest.get("folds") or None,
                               str(manifest.get("checkpoint", "checkpoint_final.pth")), device="cpu")
            except UserError as err:
                raise UserError(f"{zip_path} is refused: {str(err).replace(str(staging) + '/', '')}") from None
            target.parent.mkdir(parents=True, exist_ok=True)
            old = None
            if target.exists():
                old = target.with_name(f".{target.name}.replaced")
                shutil.rmtree(old, ignore_errors=True)
                target.rename(old)
            (staging / model_rel).rename(target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
