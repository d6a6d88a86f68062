"""Data roots: ``autoorgan_raw``, ``autoorgan_preprocessed`` and ``autoorgan_results``.

Like nnU-Net, three environment variables name where raw datasets, preprocessed data and trained models live.
When one is unset, a default under the user's home is used (``~/autoorgan_data/{raw,preprocessed,results}``)
and that is said once on stderr, so a new user can start without setting anything.

nnU-Net v2 reads its own variables (``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``);
:func:`wire_nnunet_env` points them at ours when the user has not set them (``autoorgan/__init__.py`` calls it), and
:class:`nnunet_paths` sets them for the duration of a call into nnunetv2 that must see specific folders.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from autoorgan.utils.errors import UserError

ENV_VARS = {"raw": "autoorgan_raw", "preprocessed": "autoorgan_preprocessed", "results": "autoorgan_results"}
NNUNET_VARS = {"raw": "nnUNet_raw", "preprocessed": "nnUNet_preprocessed", "results": "nnUNet_results"}
_DEFAULT_ROOT = Path("~/autoorgan_data")
_announced: set[str] = set()


def _root(kind: str, announce: bool = True) -> Path:
    value = os.environ.get(ENV_VARS[kind])
    if value:
        return Path(value).expanduser()
    path = (_DEFAULT_ROOT / kind).expanduser()
    if announce and kind not in _announced:
        _announced.add(kind)
        print(f"autoorgan: {ENV_VARS[kind]} is not set; using {path} (set it to choose another folder)",
              file=sys.stderr)
    return path


def raw_root() -> Path:
    """Folder holding ``DatasetXXX_Name`` raw datasets (``$autoorgan_raw``)."""
    return _root("raw")


def preprocessed_root() -> Path:
    """Folder holding fingerprints, plans and preprocessed data (``$autoorgan_preprocessed``)."""
    return _root("preprocessed")


def results_root() -> Path:
    """Folder holding trained models (``$autoorgan_results``)."""
    return _root("results")


def wire_nnunet_env() -> None:
    """Point nnU-Net's path variables at ours unless the user set them (silently; no folder is created)."""
    for kind, var in NNUNET_VARS.items():
        os.environ.setdefault(var, str(_root(kind, announce=False)))


_NAME_RE = re.compile(r"^Dataset(\d{3})_([A-Za-z0-9_\-]+)$")


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``(3, "Liver") -> "Dataset003_Liver"`` (nnU-Net's naming)."""
    if not 0 < dataset_id < 1000:
        raise UserError(f"dataset id {dataset_id} is out of range: use an integer from 1 to 999")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise UserError(f"dataset name {name!r} may only hold letters, digits, '_' and '-'")
    return f"Dataset{dataset_id:03d}_{name}"


def parse_dataset_id(value: str | int) -> int:
    """Accept ``3``, ``"3"``, ``"003"`` or ``"Dataset003_Name"``; return the integer id."""
    if isinstance(value, int):
        return value
    m = _NAME_RE.match(str(value))
    if m:
        return int(m.group(1))
    if str(value).isdigit():
        return int(value)
    raise UserError(f"{value!r} is not a dataset id: give a number such as 3 or a name such as Dataset003_Liver")


def find_dataset_name(dataset: str | int, root: Path | None = None) -> str:
    """Resolve a dataset id or name to its folder name ``DatasetXXX_Name``, looking in the raw root first, then
    in the preprocessed root. Raises UserError naming the folders searched when none matches."""
    did = parse_dataset_id(dataset)
    roots = [root] if root is not None else [raw_root(), preprocessed_root()]
    for r in roots:
        if r.is_dir():
            hits = sorted(p.name for p in r.iterdir() if p.is_dir() and p.name.startswith(f"Dataset{did:03d}_")
                          and not p.name.endswith(".partial_write"))  # leftovers of interrupted writes
            if len(hits) > 1:
                raise UserError(f"more than one folder for dataset {did} in {r}: {', '.join(hits)}; "
                                "remove or renumber all but one")
            if hits:
                return hits[0]
    searched = " and ".join(str(r) for r in roots)
    raise UserError(f"no dataset with id {did} (a folder Dataset{did:03d}_NAME) in {searched}; "
                    "check the id, or set autoorgan_raw to the folder holding your datasets")


class nnunet_paths:
    """Context manager: run nnunetv2 code against the given folders.

    nnunetv2 (2.8) resolves ``nnUNet_raw``/``nnUNet_preprocessed``/``nnUNet_results`` from the environment each
    time they are used, so setting the variables for the duration of the call is enough; they are restored on exit.
    """

    def __init__(self, raw: Path | None = None, preprocessed: Path | None = None, results: Path | None = None):
        self.values = {k: str(v) for k, v in (("nnUNet_raw", raw), ("nnUNet_preprocessed", preprocessed),
                                                ("nnUNet_results", results)) if v is not None}
        self.saved: dict[str, str | None] = {}

    def __enter__(self):
        for var, value in self.values.items():
            self.saved[var] = os.environ.get(var)
            os.environ[var] = value
        return self

    def __exit__(self, *exc):
        for var, value in self.saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        self.saved.clear()
        return False


_COMPONENT_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def safe_component(value: object, what: str) -> str:
    """``value`` as a single file-name component (letters, digits, '.', '_', '-'; not '.' or '..'), or a one-line
    UserError: names read from plans, model folders and command lines never reach outside their folder."""
    text = str(value)
    if not _COMPONENT_RE.fullmatch(text) or text in (".", ".."):
        raise UserError(f"{what} {text!r} is not a plain name (letters, digits, '.', '_', '-' only; no folders); "
                        "fix it")
    return text


def model_folder(dataset_name: str, trainer_name: str, plans_name: str, plans_section: str) -> Path:
    """``$autoorgan_results/DatasetXXX_Name/<trainer>__<plans>__<plans section>`` (nnU-Net's layout). The trainer
    name may only hold letters, digits, '_' and '-' (it becomes a folder name)."""
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", trainer_name or ""):
        raise UserError(f"trainer name {trainer_name!r} may only hold letters, digits, '_' and '-' (it names the "
                        "model folder)")
    safe_component(plans_name, "plans name")
    return results_root() / safe_component(dataset_name, "dataset") / f"{trainer_name}__{plans_name}__{plans_section}"
