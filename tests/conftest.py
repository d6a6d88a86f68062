"""Shared fixtures: temporary data roots (set before autoorgan is imported) and small phantom datasets."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from learning_checks import cli_env  # noqa: F401  (re-exported for the tests)

_SESSION_ROOT = Path(os.environ.get("AUTOORGAN_TEST_TMP", "/tmp")) / f"autoorgan_tests_{os.getpid()}"
for _kind in ("raw", "preprocessed", "results"):
    os.environ[f"autoorgan_{_kind}"] = str(_SESSION_ROOT / _kind)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_ROOT, ignore_errors=True)


class LearningRuns:
    """The three learning checks' trainings (organdetr on the phantom, ccq and dodnet on the partial phantom),
    started on first use, two at a time with one OpenMP thread each: ccq (the longest) on one core, dodnet then
    organdetr on the other (the figures do not depend on it: bench/learning_checks.py). ``get(name)`` waits for one
    and returns ``(roots, process, metrics)``; trainer folders are named ``Check_<name>``."""

    def __init__(self, base: Path):
        import learning_checks as lc
        self.roots = {"organdetr": lc.roots_under(base / "detection"), "ccq": lc.roots_under(base / "partial")}
        self.roots["dodnet"] = self.roots["ccq"]
        for name in ("organdetr", "ccq"):
            lc.prepare(lc.CHECKS[name], self.roots[name])
        self.pool = ThreadPoolExecutor(2)
        self.runs = {name: self.pool.submit(lc.train, lc.CHECKS[name], self.roots[name], f"Check_{name}", threads=1)
                     for name in ("ccq", "dodnet", "organdetr")}

    def get(self, name: str):
        return (self.roots[name], *self.runs[name].result())


def pytest_collection_modifyitems(session, config, items):
    """Tests that wait for the learning runs go last, and the runs start with the first test (``_early_learning``):
    the other tests, mostly one core each, then run while the trainings do instead of after them (CI time)."""
    late = [item for item in items if "learning_runs" in getattr(item, "fixturenames", ())]
    items[:] = [item for item in items if item not in late] + late
    config.stash[_NEEDS_LEARNING] = bool(late)


_NEEDS_LEARNING = pytest.StashKey[bool]()


@pytest.fixture(scope="session", autouse=True)
def _early_learning(request, tmp_path_factory):
    """Starts :class:`LearningRuns` before the first test when any collected test needs them (else None)."""
    if not request.config.stash.get(_NEEDS_LEARNING, False):
        yield None
        return
    runs = LearningRuns(tmp_path_factory.mktemp("learning"))
    yield runs
    runs.pool.shutdown(wait=True)


@pytest.fixture(scope="session")
def learning_runs(_early_learning):
    return _early_learning


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """Fresh raw/preprocessed/results roots for one test (environment variables set)."""
    out = {}
    for kind in ("raw", "preprocessed", "results"):
        p = tmp_path / kind
        monkeypatch.setenv(f"autoorgan_{kind}", str(p))
        out[kind] = p
    return out


def run_cli(name: str, *args: str, env_roots: dict | None = None, timeout: int = 600):
    """Run an installed console script as a user would; returns CompletedProcess (text)."""
    exe = Path(sys.executable).with_name(name)  # console scripts of the installed package
    return subprocess.run([str(exe), *args], capture_output=True, text=True, encoding="utf-8", errors="replace",
                          env=cli_env(env_roots), timeout=timeout)


@pytest.fixture(scope="session")
def phantom_template(tmp_path_factory):
    """A small phantom dataset (8 training cases, coarse grid), written once per session; copy before modifying."""
    from autoorgan.dataset.phantom import write_phantom_dataset
    root = tmp_path_factory.mktemp("phantom_template")
    return write_phantom_dataset(root, 900, num_cases=8, num_test=1, spacing_scale=1.6, progress=False)


@pytest.fixture(scope="session")
def partial_phantom_template(tmp_path_factory):
    from autoorgan.dataset.phantom import write_phantom_dataset
    root = tmp_path_factory.mktemp("partial_phantom_template")
    return write_phantom_dataset(root, 901, num_cases=6, num_test=0, partial=True, spacing_scale=1.6, progress=False)


@pytest.fixture
def phantom(roots, phantom_template):
    """A private copy of the small phantom in this test's raw root."""
    dst = roots["raw"] / phantom_template.name
    shutil.copytree(phantom_template, dst)
    return dst


def run_main(capsys, main, *argv) -> tuple[int, str]:
    """Run a console-script ``main`` in this process; returns (exit status, stderr)."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("autoorgan: error:")]
    assert len(errors) == 1, err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


def edit_json(path: Path, fn) -> None:
    data = json.loads(Path(path).read_text())
    fn(data)
    Path(path).write_text(json.dumps(data))


def tiny_model_folder(roots: dict, dataset: str, trainer: str, section: str, shrink=None, build=None) -> Path:
    """A model folder ``<trainer>__autoorganPlans__<section>`` with fold 0 holding a fixed-seed (untrained) network
    built from the preprocessed plans of ``dataset`` (``shrink(cfg)`` edits the configuration first; ``build(cfg)``
    returns the network, default: the registry's network of the section)."""
    import torch

    from autoorgan.inference.predictor import build_network
    plans = json.loads((roots["preprocessed"] / dataset / "autoorganPlans.json").read_text())
    if shrink is not None:
        shrink(plans["configurations"][section])
    folder = roots["results"] / dataset / f"{trainer}__autoorganPlans__{section}"
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    dataset_json = json.loads((roots["raw"] / dataset / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    torch.manual_seed(0)
    net = build(plans["configurations"][section]) if build else build_network(plans, section, dataset_json)
    torch.save({"network": net.state_dict()}, folder / "fold_0" / "checkpoint_final.pth")
    return folder
