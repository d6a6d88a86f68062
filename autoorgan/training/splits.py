"""Cross-validation splits, nnU-Net's convention: ``$autoorgan_preprocessed/DatasetXXX/splits_final.json``, a list of
``{"train": [...], "val": [...]}`` (5 folds, nnunetv2's ``generate_crossval_split``, seed 12345). Copy nnU-Net's
file there to share its folds; fold ``all`` trains and validates on every case."""
from __future__ import annotations

from pathlib import Path

from autoorgan.utils.errors import UserError
from autoorgan.utils.fileio import load_json, write_json_atomic

SPLITS_NAME = "splits_final.json"


def get_split(preprocessed_dataset_folder: Path, identifiers: list[str], fold: int | str) -> tuple[list[str],
                                                                                                   list[str]]:
    """(train, val) identifiers of ``fold``; writes 5-fold splits first if the folder has none."""
    ids = sorted(identifiers)
    if fold == "all":
        return ids, ids
    path = Path(preprocessed_dataset_folder) / SPLITS_NAME
    if not path.is_file():
        from nnunetv2.utilities.crossval_split import generate_crossval_split
        if len(ids) < 5:
            raise UserError(f"{len(ids)} preprocessed cases are too few for 5-fold cross-validation; train fold 'all' "
                            f"or provide {path}")
        write_json_atomic(generate_crossval_split(ids, seed=12345, n_splits=5), path)
    splits = _read_splits(path)
    if not 0 <= int(fold) < len(splits):
        raise UserError(f"fold {fold} does not exist: {path} has {len(splits)} folds (0..{len(splits) - 1})")
    train, val = splits[int(fold)]["train"], splits[int(fold)]["val"]
    missing = sorted(set(train + val) - set(ids))
    if missing:
        raise UserError(f"{path} names cases that are not preprocessed (e.g. {missing[0]}); rerun "
                        "autoorgan_plan_and_preprocess or fix the splits file")
    if not train or not val:
        raise UserError(f"fold {fold} of {path} has no {'training' if not train else 'validation'} cases; fix the file "
                        "(or train fold 'all')")
    return list(train), list(val)


def _read_splits(path: Path) -> list:
    """nnU-Net's splits file, checked: a list of ``{"train": [ids], "val": [ids]}``."""
    try:
        splits = load_json(path)
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}); fix it or delete it (5 folds are then made anew)") from None
    ok = isinstance(splits, list) and splits and all(
        isinstance(s, dict) and all(isinstance(s.get(k), list) and all(isinstance(c, str) for c in s[k])
                                    for k in ("train", "val")) for s in splits)
    if not ok:
        raise UserError(f"{path} must be a list of {{\"train\": [case ids], \"val\": [case ids]}} (nnU-Net's format); "
                        "fix it or delete it (5 folds are then made anew)")
    return splits
