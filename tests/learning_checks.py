"""The learning checks: what each one trains on, for how long, and what it must reach.

Shared by the tests (``test_train.py``, ``test_ccq_train.py``) and by ``bench/learning_checks.py``, which reruns a
check over seeds, thread counts and deliberately broken variants and prints the margins. The thresholds below come
from those runs (docs/training.md, "Learning checks"): each sits well under the worst of 10 runs (5 seeds x 1 and 2
OpenMP threads) and well above what the broken variants reach, so the check passes on any 2-core machine and still
fails when the network, the matching or the loss is broken.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

CLI_TIMEOUT = 1500


@dataclass(frozen=True)
class LearningCheck:
    """One learning check: a phantom, a shrunk plan, a fixed training run and the figures it must reach."""

    name: str                      # the autoorgan_train configuration argument (organdetr, ccq, dodnet)
    dataset_id: int
    partial: bool                  # partially annotated phantom (3 member datasets)
    plans_configuration: str       # the plans section trained (dodnet trains on the ccq plans)
    train_args: tuple[str, ...]
    per_class_key: str             # "AP50" (boxes) or "Dice" (masks)
    min_per_class: float           # every organ at least this ...
    min_gain: float                # ... and at least this much above the untrained network
    min_mean: float                # the mean over organs at least this
    extra: dict = field(default_factory=dict)

    @property
    def dataset(self) -> str:
        return f"Dataset{self.dataset_id:03d}_{'PhantomPartial' if self.partial else 'Phantom'}"


def tiny_organdetr_plans(plans: dict) -> None:
    """Shrink the organdetr configuration to a network that learns in minutes on 2 CPU cores."""
    cfg = plans["configurations"]["organdetr"]
    cfg["architecture"]["arch_kwargs"].update(backbone_widths=[8, 16, 32, 64, 64], hidden_dim=32, num_heads=4,
                                              decoder_layers=2, msa_depth=1, msa_dropout=0.0)


def tiny_ccq_plans(plans: dict) -> None:
    """Shrink the ccq configuration to a network that learns in minutes on 2 CPU cores."""
    c = plans["configurations"]["ccq"]
    c["patch_size"] = [32, 32, 32]
    c["masked_sigmoid"]["patch_size"] = [24, 24, 16]  # the recipe's organ-sized patch: smaller than the planned one
    c["architecture"]["arch_kwargs"].update(
        n_stages=4, features_per_stage=[8, 16, 32, 32], kernel_sizes=[[3, 3, 3]] * 4,
        strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]], n_conv_per_stage=[1, 1, 1, 1],
        n_conv_per_stage_decoder=[1, 1, 1])
    c["ccq"].update(num_class_queries=8, hidden_dim=32, num_heads=4)


SHRINK = {"organdetr": tiny_organdetr_plans, "ccq": tiny_ccq_plans}

_SEG_ARGS = ("--epochs", "48", "--iters_per_epoch", "25", "--val_every", "1000", "--lr", "3e-3",
             "--warmup_iters", "20", "-num_workers", "1")
CHECKS = {
    "organdetr": LearningCheck(
        "organdetr", 910, False, "organdetr",
        ("--epochs", "16", "--iters_per_epoch", "25", "--val_every", "100", "--lr", "2e-3", "--warmup_iters", "20",
         "-num_workers", "1"),
        per_class_key="AP50", min_per_class=0.0, min_gain=0.0, min_mean=0.2),
    "ccq": LearningCheck("ccq", 930, True, "ccq", _SEG_ARGS, per_class_key="Dice", min_per_class=0.2,
                         min_gain=0.15, min_mean=0.45),
    "dodnet": LearningCheck("dodnet", 930, True, "ccq", _SEG_ARGS, per_class_key="Dice", min_per_class=0.2,
                            min_gain=0.15, min_mean=0.45),
}


def roots_under(base: Path) -> dict[str, Path]:
    return {k: Path(base) / k for k in ("raw", "preprocessed", "results")}


def cli_env(env_roots: dict | None = None, threads: int | None = None) -> dict:
    """This process's environment with the data roots ``{raw|preprocessed|results: path}`` set (and
    ``OMP_NUM_THREADS`` when ``threads`` is given)."""
    env = dict(os.environ)
    env.update({f"autoorgan_{k}": str(v) for k, v in (env_roots or {}).items()})
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def console_script(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def prepare(check: LearningCheck, roots: dict[str, Path], processes: int = 2) -> None:
    """Write the phantom, plan and preprocess it, and shrink the plans (edited plans: the user-facing way to
    override a planned number). Planning is the planner's own otherwise (e.g. ccq's classes per patch)."""
    from autoorgan.dataset.phantom import write_phantom_dataset
    if not (roots["raw"] / check.dataset).is_dir():
        write_phantom_dataset(roots["raw"], check.dataset_id, num_cases=16, num_test=2 if check.partial else 0,
                              partial=check.partial, spacing_scale=1.6, progress=False)
    cmd = [console_script("autoorgan_plan_and_preprocess"), "-d", str(check.dataset_id), "-c",
           check.plans_configuration, "-device", "cpu", "-np", str(processes), "--quiet"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(roots), timeout=CLI_TIMEOUT)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    path = roots["preprocessed"] / check.dataset / "autoorganPlans.json"
    plans = json.loads(path.read_text())
    SHRINK[check.plans_configuration](plans)
    path.write_text(json.dumps(plans))


def fold_folder(check: LearningCheck, roots: dict[str, Path], tag: str, fold: str = "all") -> Path:
    return roots["results"] / check.dataset / f"{tag}__autoorganPlans__{check.plans_configuration}" / f"fold_{fold}"


def train(check: LearningCheck, roots: dict[str, Path], tag: str, seed: int | None = None,
          threads: int | None = None, prefix: list[str] | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    """Run the check's training (fold all, CPU) as a user would; returns the process and the final validation
    metrics (empty when it failed). ``prefix`` replaces the ``autoorgan_train`` executable (broken variants)."""
    args = [str(check.dataset_id), check.name, "all", "-device", "cpu", *check.train_args, "-tr", tag]
    if seed is not None:
        args += ["--seed", str(seed)]
    cmd = (prefix or [console_script("autoorgan_train")]) + args
    res = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace",
                         env=cli_env(roots, threads), timeout=CLI_TIMEOUT)
    summary = fold_folder(check, roots, tag) / "validation" / "summary.json"
    metrics = json.loads(summary.read_text())["metrics"] if res.returncode == 0 and summary.is_file() else {}
    return res, metrics


def untrained_metrics(check: LearningCheck, roots: dict[str, Path]) -> dict:
    """Validation metrics of the check's trainer on fold 'all' before any training (what learning must beat)."""
    from autoorgan.configurations import get_configuration
    from autoorgan.training.options import TrainOptions
    saved = {k: os.environ.get(f"autoorgan_{k}") for k in roots}
    os.environ.update({f"autoorgan_{k}": str(v) for k, v in roots.items()})
    try:
        trainer = get_configuration(check.name).trainer_class()(check.dataset, "all", TrainOptions(), "cpu",
                                                                 trainer_name="Untrained")
        trainer.initialize()
        return trainer.validate()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(f"autoorgan_{k}", None)
            else:
                os.environ[f"autoorgan_{k}"] = v


def per_class(check: LearningCheck, metrics: dict) -> dict[str, float]:
    return {name: float(m[check.per_class_key]) for name, m in metrics["per_class"].items()}


def mean_value(check: LearningCheck, metrics: dict) -> float:
    return float(metrics["AP50" if check.per_class_key == "AP50" else "mean_Dice"])


def failures(check: LearningCheck, metrics: dict, untrained: dict) -> list[str]:
    """What the trained run misses (empty: the check passes)."""
    if not metrics:
        return ["training did not finish"]
    out = []
    before = per_class(check, untrained)
    for organ, value in per_class(check, metrics).items():
        if value < check.min_per_class or value < before[organ] + check.min_gain:
            out.append(f"{organ} {check.per_class_key} {value:.3f} (untrained {before[organ]:.3f}; needs "
                       f">= {check.min_per_class} and +{check.min_gain})")
    mean = mean_value(check, metrics)
    if mean < check.min_mean:
        out.append(f"mean {check.per_class_key} {mean:.3f} < {check.min_mean}")
    return out
