"""Small file helpers: atomic writes (write to a temporary name in the same folder, then rename)."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def file_mode(path: Path) -> int:
    """The mode a new version of ``path`` should get: the existing file's, else 0666 minus the process umask."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def write_json_atomic(obj, path: Path, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON to ``path`` so that readers see either the old or the complete new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, file_mode(path))  # mkstemp makes 0600: keep the file readable as any other file would be
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=indent, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (``.NAME.tmpPID`` + the same ending, so writers that choose the format
    by the ending still work); on success it is renamed to ``path``, on failure removed."""
    path = Path(path)
    ending = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{ending}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def to_jsonable(obj):
    """``obj`` as it reads back from JSON (numpy scalars/arrays to Python, tuples to lists), for comparisons."""
    return json.loads(json.dumps(obj, default=_json_default))


def load_json(path: Path):
    with open(path) as f:
        return json.load(f)
