"""``progress.png`` of a training run: total loss, its parts, the validation metric and the learning rate per epoch."""
from __future__ import annotations

from pathlib import Path

from autoorgan.utils.fileio import atomic_output


def plot_progress(history: dict, metric_name: str, path: Path) -> None:
    """Write the figure of a trainer's ``history`` (``epoch``, ``train_loss`` (dicts with ``total`` and parts),
    ``val_epoch``, ``val_metric``, ``lr``) to ``path`` (atomically). The parts get their own panel so that the
    total does not flatten them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    h = history
    fig, axes = plt.subplots(4, 1, figsize=(9, 12), sharex=True)
    losses = h["train_loss"]
    if losses:
        axes[0].plot(h["epoch"], [p["total"] for p in losses], color="black", label="total")
        for key in (k for k in losses[0] if k != "total"):
            axes[1].plot(h["epoch"], [p[key] for p in losses], label=key)
        axes[1].legend(fontsize=8)
    axes[0].set_ylabel("training loss (total)")
    axes[1].set_ylabel("loss parts")
    axes[2].plot(h["val_epoch"], h["val_metric"], "o-", color="tab:green")
    axes[2].set_ylabel(f"validation {metric_name}")
    axes[3].plot(h["epoch"], h["lr"], color="tab:red")
    axes[3].set_ylabel("learning rate")
    axes[3].set_xlabel("epoch")
    fig.tight_layout()
    try:
        with atomic_output(Path(path)) as tmp:
            fig.savefig(tmp, dpi=80)
    finally:
        plt.close(fig)
