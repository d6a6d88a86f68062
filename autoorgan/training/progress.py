"""``progress.png`` of a training run: total loss, its parts, the validation metric and the learning rate per epoch."""
from __future__ import annotations

from pathlib import Path

from autoorgan.utils.fileio import atomic_output


def plot_progress(history: dict, metric_name: str, path: Path) -> None:
    """Write :func:`progress_figure` to ``path`` (atomically)."""
    import matplotlib.pyplot as plt
    fig = progress_figure(history, metric_name)
    try:
        with atomic_output(Path(path)) as tmp:
            fig.savefig(tmp, dpi=80)
    finally:
        plt.close(fig)


def progress_figure(history: dict, metric_name: str):
    """The figure of a trainer's ``history`` (``epoch``, ``train_loss`` (dicts with ``total`` and parts),
    ``val_epoch``, ``val_metric``, ``lr``): total loss (log scale), its parts in their own panel so that the total
    does not flatten them, the validation metric (a single final point is marked and labelled; a note when there is
    none), the learning rate."""
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
        if min(p["total"] for p in losses) > 0:
            axes[0].set_yscale("log")  # the first epochs' loss would flatten the rest on a linear axis
    axes[0].set_ylabel("training loss (total)")
    axes[1].set_ylabel("loss parts")
    if h["val_epoch"]:
        axes[2].plot(h["val_epoch"], h["val_metric"], "o-", color="tab:green")
        axes[2].annotate(f"{h['val_metric'][-1]:.3f}", (h["val_epoch"][-1], h["val_metric"][-1]),
                         textcoords="offset points", xytext=(-10, 8), fontsize=9)
    else:
        axes[2].text(0.5, 0.5, "no validation yet: it runs every val_every epochs and after the last one\n"
                     "(not with --no_val)", ha="center", va="center", transform=axes[2].transAxes, fontsize=9)
    axes[2].set_ylabel(f"validation {metric_name}")
    axes[3].plot(h["epoch"], h["lr"], color="tab:red")
    axes[3].set_ylabel("learning rate")
    axes[3].set_xlabel("epoch")
    fig.tight_layout()
    return fig
