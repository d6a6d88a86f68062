"""What a training run iterates over and how fast it learns: the batch sampler over a run's global sample indices
(exact resume and DDP shares), the learning-rate factor per iteration (linear warm-up, then cosine or poly) and the
epochs a wall-clock budget allows."""
from __future__ import annotations

import math
import statistics

import torch


class EpochBatches:
    """Batch sampler over global sample indices: epoch ``e``, iteration ``i`` uses samples
    ``(e * iters + i) * batch + [0, batch)``, of which this rank takes its contiguous share."""

    def __init__(self, iters: int, batch: int, rank: int = 0, world: int = 1):
        self.iters, self.batch, self.rank, self.local = iters, batch, rank, batch // world
        self.epoch = 0

    def __len__(self) -> int:
        return self.iters

    def __iter__(self):
        for i in range(self.iters):
            first = (self.epoch * self.iters + i) * self.batch + self.rank * self.local
            yield list(range(first, first + self.local))


def lr_factor(it: int, total: int, warmup: int, schedule: str = "cosine") -> float:
    """Linear warm-up over ``warmup`` iterations, then cosine decay to 0 at ``total`` (``schedule="poly"``:
    nnU-Net's ``(1 - progress) ** 0.9``)."""
    if warmup > 0 and it < warmup:
        return (it + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (it - warmup) / span)
    if schedule == "poly":
        return (1 - progress) ** 0.9
    return 0.5 * (1 + math.cos(math.pi * progress))


def make_loader(stream: torch.utils.data.Dataset, sampler: EpochBatches, workers: int, collate_fn
                ) -> torch.utils.data.DataLoader:
    """The run's loader: ``workers`` spawned processes that live for the whole run (0: load in this process)."""
    return torch.utils.data.DataLoader(stream, batch_sampler=sampler, num_workers=workers, collate_fn=collate_fn,
                                       persistent_workers=workers > 0,
                                       multiprocessing_context="spawn" if workers > 0 else None,
                                       prefetch_factor=2 if workers else None)


FINAL_RESERVE = 0.05  # of a time budget, kept for the final validation and checkpoint


class TimeBudget:
    """A wall-clock budget for a training run (``--max_minutes``), re-planned after every epoch.

    ``start`` is when the budget began: a continued run passes ``now - spent`` (``spent`` kept in the checkpoint),
    so the budget counts the training time of every attempt. After each epoch :meth:`plan` says how many epochs fit:
    the first epoch is timed by its steady steps or its whole wall time, whichever is longer (start-up costs);
    later plans use the median epoch wall time of this attempt, so one slow epoch (a job beside it, a cold cache)
    neither ends the run early nor makes it overrun. The learning-rate schedule follows the plan, so it anneals at
    the deadline. Times are passed in (seconds, any clock), which keeps this class clock-free and testable.
    """

    def __init__(self, minutes: float | None, start: float):
        self.budget_s = 60.0 * minutes if minutes else None
        self.start = start
        self.walls: list[float] = []

    @property
    def active(self) -> bool:
        return self.budget_s is not None

    def expired(self, now: float) -> bool:
        return self.budget_s is not None and now > self.start + self.budget_s

    def plan(self, now: float, epoch_wall_s: float, steady_epoch_s: float, done: int, max_epochs: int) -> int:
        """Epochs that fit, after ``done`` epochs; this one took ``epoch_wall_s`` (``steady_epoch_s`` without its
        first step)."""
        assert self.budget_s is not None
        self.walls.append(epoch_wall_s)
        epoch_s = max(steady_epoch_s, epoch_wall_s) if len(self.walls) == 1 else statistics.median(self.walls)
        return epochs_for_budget(self.budget_s, self.start + self.budget_s - now, epoch_s, done, max_epochs)


def epochs_for_budget(budget_s: float, remaining_s: float, epoch_s: float, done: int, max_epochs: int) -> int:
    """Epochs that fit a wall-clock budget: ``done`` epochs so far, ``remaining_s`` left of ``budget_s``, and one
    epoch taking ``epoch_s`` (:class:`TimeBudget`). ``FINAL_RESERVE`` of the budget is kept for the final
    validation; at least ``done``, at most ``max_epochs``."""
    fit = int(max(0.0, remaining_s - FINAL_RESERVE * budget_s) // max(epoch_s, 1e-9))
    return max(done, min(max_epochs, done + fit))
