"""The options of a training run (``trainer_options.json`` in the fold folder) and which may change on ``--c``."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from autoorgan.utils.errors import UserError
from autoorgan.utils.fileio import load_json


@dataclass
class TrainOptions:
    """Everything that shapes a training run; written to ``trainer_options.json`` in the fold folder."""

    epochs: int = 1000
    iters_per_epoch: int = 250
    val_every: int = 10
    lr: float | None = None         # None: the trainer's default_lr (organdetr 2e-4, segmentation 3e-3)
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    grad_clip: float | None = None  # None: the trainer's default_grad_clip
    seed: int = 12345
    batch_size: int | None = None   # None: from the plans
    max_minutes: float | None = None  # wall-clock budget: epochs re-planned after each one, lr anneals at the end
    num_workers: int = 2
    no_val: bool = False            # skip validation (interim and final), e.g. when predicting separately
    extra: dict = field(default_factory=dict)  # configuration-specific (e.g. matcher)

    # options that may differ when continuing a run (length, hardware)
    RESUMABLE_CHANGES = ("epochs", "num_workers", "val_every", "max_minutes", "no_val")


def check_resumable(options: TrainOptions, output_folder: Path) -> None:
    """Refuse to continue a run with different options (other than its length, validation or loader workers)."""
    path = Path(output_folder) / "trainer_options.json"
    if path.is_file():
        old, new = load_json(path), asdict(options)
        diff = [k for k in new if k not in TrainOptions.RESUMABLE_CHANGES and old.get(k) != new[k]]
        if diff:
            raise UserError(f"{output_folder} was trained with other options ({', '.join(diff)}: "
                            f"{old.get(diff[0])!r} there, {new[diff[0]]!r} now); continue with the same options "
                            "or use another -tr name")
