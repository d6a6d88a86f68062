"""Thin trainer base shared by the configurations (installed as ``autoorgan.trainers.base``).

The base owns what every configuration needs and nothing more: folders, folds, the epoch/iteration loop, the
optimizer (AdamW) and learning-rate schedule (linear warm-up, cosine decay), checkpoints, exact resume, logging,
``progress.png``, the device and DistributedDataParallel. A configuration subclass supplies four hooks:
``build_network()``, ``build_loss()``, ``make_training_stream(num_samples)`` and ``validate(final)``.

Results folder (nnU-Net layout)::

    $autoorgan_results/DatasetXXX_Name/<TrainerName>__autoorganPlans__<configuration>/
        plans.json, dataset.json                      (copied, as nnU-Net does)
        fold_F/checkpoint_latest.pth                  (every epoch; removed when training ends)
              checkpoint_best.pth, checkpoint_final.pth
              training_log.txt, progress.png, trainer_options.json
              validation/summary.json, validation/CASE_boxes.json

Checkpoints are written to a temporary file and renamed, so a kill at any moment leaves the previous checkpoint
intact; ``--c`` restarts from the last completed epoch with the model, optimizer, scheduler, random states and
history restored, so the continued run computes what the uninterrupted run would have.
"""
from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from autoorgan.errors import UserError
from autoorgan.fileio import atomic_output, load_json, load_network_state, write_json_atomic
from autoorgan.paths import preprocessed_root, results_root
from autoorgan.plans import PLANS_NAME, get_configuration, load_plans
from autoorgan.splits import get_split


@dataclass
class TrainOptions:
    """Everything that shapes a training run; written to ``trainer_options.json`` in the fold folder."""

    epochs: int = 1000
    iters_per_epoch: int = 250
    val_every: int = 10
    lr: float = 2e-4
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    grad_clip: float | None = None  # None: the trainer's default_grad_clip
    seed: int = 12345
    batch_size: int | None = None   # None: from the plans
    max_minutes: float | None = None  # stop after the first epoch that ends past this wall-clock budget
    num_workers: int = 2
    extra: dict = field(default_factory=dict)  # configuration-specific (e.g. matcher)

    # options that may differ when continuing a run (length, hardware)
    RESUMABLE_CHANGES = ("epochs", "num_workers", "val_every", "max_minutes")


def select_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``mps`` -> torch.device, with a one-line error when it is not available."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("-device cuda was asked for but PyTorch sees no CUDA GPU; use -device cpu")
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UserError("-device mps was asked for but is not available here; use -device cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown -device {name!r}; choose cpu, cuda or mps")
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


def atomic_torch_save(obj, path: Path) -> None:
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())


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


class TrainerBase:
    configuration: str = ""
    best_metric_key: str = "mAP"
    lr_schedule: str = "cosine"  # or "poly"
    default_grad_clip: float = 0.1  # gradient norm clip (DETR: 0.1; nnU-Net: 12)

    @classmethod
    def model_folder_for(cls, dataset_name: str, trainer_name: str, plans_name: str = PLANS_NAME) -> Path:
        """``$autoorgan_results/DatasetXXX/<trainer>__<plans>__<configuration>`` (nnU-Net's layout)."""
        return results_root() / dataset_name / f"{trainer_name}__{plans_name}__{cls.configuration}"

    def __init__(self, dataset_name: str, fold: int | str, options: TrainOptions, device: str = "cpu",
                 trainer_name: str | None = None, plans_name: str = PLANS_NAME):
        self.dataset_name, self.fold, self.opt = dataset_name, fold, options
        self.device = select_device(device)
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.pre_folder = preprocessed_root() / dataset_name
        self.plans = load_plans(self.pre_folder, plans_name)
        self.plans_name = plans_name
        self.cfg = get_configuration(self.plans, self.configuration)
        self.dataset_json = load_json(self.pre_folder / "dataset.json")
        self.trainer_name = trainer_name or self.default_trainer_name()
        self.model_folder = self.model_folder_for(dataset_name, self.trainer_name, plans_name)
        self.output_folder = self.model_folder / f"fold_{fold}"
        self.data_folder = self.pre_folder / self.cfg["data_identifier"]
        if not self.data_folder.is_dir() or not any(self.data_folder.glob("*.pkl")):
            raise UserError(f"no preprocessed {self.configuration} data in {self.data_folder}; run "
                            f"autoorgan_plan_and_preprocess -d {dataset_name} -c {self.configuration} first")
        ids = sorted(p.stem for p in self.data_folder.glob("*.pkl"))
        self.train_ids, self.val_ids = get_split(self.pre_folder, ids, fold)
        self.batch_size = int(options.batch_size or self.cfg["batch_size"])
        if self.batch_size % self.world:
            raise UserError(f"batch size {self.batch_size} is not divisible by the {self.world} processes")
        self.epoch = 0
        self.history: dict[str, list] = {"epoch": [], "lr": [], "train_loss": [], "val_epoch": [], "val_metric": [],
                                         "epoch_time": []}
        self.best = -math.inf
        self.network: nn.Module | None = None

    # ---- hooks -------------------------------------------------------------------------------------------------
    def default_trainer_name(self) -> str:
        return type(self).__name__

    def build_network(self) -> nn.Module:
        raise NotImplementedError

    def build_loss(self):
        raise NotImplementedError

    def make_training_stream(self, num_samples: int) -> torch.utils.data.Dataset:
        """The run's samples by global index ``0 .. num_samples - 1`` (each a pure function of seed and index)."""
        raise NotImplementedError

    def training_loader(self) -> torch.utils.data.DataLoader:
        """One loader for the whole run (workers persist across epochs); set ``batch_sampler.epoch`` per epoch."""
        if getattr(self, "_loader", None) is None:
            total = self.opt.epochs * self.opt.iters_per_epoch * self.batch_size
            sampler = EpochBatches(self.opt.iters_per_epoch, self.batch_size, self.rank, self.world)
            workers = self.opt.num_workers
            self._loader = torch.utils.data.DataLoader(
                self.make_training_stream(total), batch_sampler=sampler, num_workers=workers,
                collate_fn=type(self).collate_fn, persistent_workers=workers > 0,
                multiprocessing_context="spawn" if workers > 0 else None, prefetch_factor=2 if workers else None)
        return self._loader

    collate_fn = None  # a plain function (it is pickled into loader workers)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def validate(self, final: bool = False) -> dict:
        """Metrics on the fold's validation cases; must contain ``best_metric_key``. ``final``: also write the
        predictions and ``validation/summary.json``."""
        raise NotImplementedError

    # ---- set-up ------------------------------------------------------------------------------------------------
    @property
    def module(self) -> nn.Module:
        """The network without the DDP wrapper."""
        return self.network.module if hasattr(self.network, "module") else self.network

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def total_iters(self) -> int:
        return self.opt.epochs * self.opt.iters_per_epoch

    def initialize(self) -> None:
        if self.distributed and not torch.distributed.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend)
        torch.manual_seed(self.opt.seed)
        np.random.seed(self.opt.seed % 2 ** 32)
        random.seed(self.opt.seed)
        net = self.build_network().to(self.device)
        self.optimizer = torch.optim.AdamW(net.parameters(), lr=self.opt.lr, weight_decay=self.opt.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: lr_factor(it, self.total_iters, min(self.opt.warmup_iters,
                                                                           self.total_iters // 10),
                                                 self.lr_schedule))
        if self.distributed:
            kw = {"device_ids": [self.device.index]} if self.device.type == "cuda" else {}
            net = nn.parallel.DistributedDataParallel(net, find_unused_parameters=True, **kw)
        self.network = net
        self.loss = self.build_loss()
        if self.is_main:
            self.output_folder.mkdir(parents=True, exist_ok=True)
            for stale in self.output_folder.glob(".*.tmp*"):  # left by a kill during a checkpoint write
                stale.unlink(missing_ok=True)
            write_json_atomic(self.plans, self.model_folder / "plans.json")
            write_json_atomic(self.dataset_json, self.model_folder / "dataset.json")

    def log(self, msg: str) -> None:
        if not self.is_main:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.output_folder / "training_log.txt", "a") as fh:
            fh.write(f"{stamp}: {msg}\n")
        tqdm.write(msg, file=sys.stderr)

    # ---- checkpoints -------------------------------------------------------------------------------------------
    def checkpoint_state(self) -> dict:
        return {"network": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "best": self.best,
                "history": self.history, "options": asdict(self.opt), "trainer_name": self.trainer_name,
                "configuration": self.configuration, "dataset_name": self.dataset_name,
                "plans_name": self.plans_name,
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}

    def save_checkpoint(self, name: str) -> None:
        if self.is_main:
            atomic_torch_save(self.checkpoint_state(), self.output_folder / name)

    def load_checkpoint(self, path: Path) -> None:
        try:
            ck = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # a checkpoint from another version, or a damaged file
            raise UserError(f"cannot read checkpoint {path} ({type(err).__name__}); delete it to start over") from None
        load_network_state(self.module, ck["network"], path, "delete it to start over")
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.epoch, self.best, self.history = ck["epoch"], ck["best"], ck["history"]
        torch.set_rng_state(ck["rng"]["torch"])
        np.random.set_state(ck["rng"]["numpy"])
        random.setstate(ck["rng"]["python"])
        if ck["rng"].get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["rng"]["cuda"])

    def check_options(self) -> None:
        """Refuse to continue a run with different options (other than its length or loader workers)."""
        path = self.output_folder / "trainer_options.json"
        if path.is_file():
            old = load_json(path)
            new = asdict(self.opt)
            diff = [k for k in new if k not in TrainOptions.RESUMABLE_CHANGES and old.get(k) != new[k]]
            if diff:
                raise UserError(f"{self.output_folder} was trained with other options ({', '.join(diff)}: "
                                f"{old.get(diff[0])!r} there, {new[diff[0]]!r} now); continue with the same options "
                                "or use another -tr name")

    # ---- training ----------------------------------------------------------------------------------------------
    def run(self, continue_training: bool = False) -> dict:
        """Train (or continue), then validate; returns the final validation summary."""
        latest = self.output_folder / "checkpoint_latest.pth"
        final = self.output_folder / "checkpoint_final.pth"
        if not continue_training and (latest.is_file() or final.is_file()):
            raise UserError(f"{self.output_folder} already holds a training run; continue it with --c or delete "
                            "the folder")
        if continue_training:
            self.check_options()
        self.initialize()
        if continue_training:
            ck = latest if latest.is_file() else final if final.is_file() else None
            if ck is not None:
                self.load_checkpoint(ck)
                self.log(f"continuing from {ck.name} at epoch {self.epoch}")
        if self.is_main:
            write_json_atomic(asdict(self.opt), self.output_folder / "trainer_options.json")
        self.log(f"training {self.trainer_name} {self.configuration} fold {self.fold}: {len(self.train_ids)} train / "
                 f"{len(self.val_ids)} val cases, batch {self.batch_size}, {self.opt.epochs} epochs x "
                 f"{self.opt.iters_per_epoch} iterations, device {self.device}, {self.world} process(es)")
        summary = {}
        deadline = time.time() + 60 * self.opt.max_minutes if self.opt.max_minutes else None
        while self.epoch < self.opt.epochs:
            summary = self.train_epoch() or summary
            if deadline is not None and time.time() > deadline and self.epoch < self.opt.epochs:
                self.log(f"time budget of {self.opt.max_minutes:g} min reached after epoch {self.epoch}; "
                         "stopping here (the learning rate schedule was planned for all epochs)")
                summary = self.validate(final=True) if self.is_main else {}
                break
        if self.is_main:
            atomic_torch_save(self.checkpoint_state(), final)
            latest.unlink(missing_ok=True)
            if not summary:  # nothing left to train (a finished run continued): validate the final model now
                summary = self.validate(final=True)
        if self.distributed:
            torch.distributed.barrier()
        return summary

    def validate_checkpoint(self, name: str = "checkpoint_final.pth") -> dict:
        """Final validation with a stored checkpoint (``--val_only``)."""
        path = self.output_folder / name
        if not path.is_file():
            raise UserError(f"no {name} in {self.output_folder}; train this fold first")
        self.initialize()
        self.load_checkpoint(path)
        return self.validate(final=True)

    def train_epoch(self) -> dict:
        """One epoch; returns the final validation metrics after the last epoch (else an empty dict)."""
        e, n_it = self.epoch, self.opt.iters_per_epoch
        loader = self.training_loader()
        loader.batch_sampler.epoch = e
        self.network.train()
        t0, losses = time.time(), []
        bar = tqdm(loader, total=n_it, desc=f"epoch {e + 1}/{self.opt.epochs}", disable=not self.is_main,
                   leave=False, file=sys.stderr, dynamic_ncols=True)
        for batch in bar:
            self.optimizer.zero_grad(set_to_none=True)
            loss, parts = self.compute_loss(batch)
            if not torch.isfinite(loss):
                raise RuntimeError(f"loss is {float(loss)} at epoch {e}; lower the learning rate (--lr)")
            loss.backward()
            clip = self.default_grad_clip if self.opt.grad_clip is None else self.opt.grad_clip
            if clip > 0:
                nn.utils.clip_grad_norm_(self.network.parameters(), clip)
            self.optimizer.step()
            self.scheduler.step()
            losses.append(parts)
            bar.set_postfix(loss=f"{parts['total']:.3f}")
        bar.close()
        mean = {k: float(np.mean([p[k] for p in losses])) for k in losses[0]}
        self.epoch += 1
        self.history["epoch"].append(self.epoch)
        self.history["lr"].append(self.optimizer.param_groups[0]["lr"])
        self.history["train_loss"].append(mean)
        self.history["epoch_time"].append(time.time() - t0)
        msg = (f"epoch {self.epoch}/{self.opt.epochs} loss {mean['total']:.4f} (" +
               ", ".join(f"{k} {v:.3f}" for k, v in mean.items() if k != "total") +
               f") lr {self.history['lr'][-1]:.2e} {time.time() - t0:.1f} s")
        last = self.epoch == self.opt.epochs
        metrics = {}
        if self.is_main and (self.epoch % self.opt.val_every == 0 or last):
            metrics = self.validate(final=last)  # the last epoch's validation is the final one (written once)
            value = metrics[self.best_metric_key]
            self.history["val_epoch"].append(self.epoch)
            self.history["val_metric"].append(value)
            msg += f"; val {self.best_metric_key} {value:.4f}"
            if value > self.best:
                self.best = value
                msg += " (new best)"
                self.save_checkpoint("checkpoint_best.pth")
        self.log(msg)
        self.save_checkpoint("checkpoint_latest.pth")
        if self.is_main:
            self.plot_progress()
        if self.distributed:
            torch.distributed.barrier()
        return metrics if last else {}

    def plot_progress(self) -> None:
        """``progress.png``: losses, validation metric and learning rate per epoch."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        h = self.history
        fig, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
        for key in h["train_loss"][0] if h["train_loss"] else []:
            axes[0].plot(h["epoch"], [p[key] for p in h["train_loss"]], label=key)
        axes[0].set_ylabel("training loss")
        axes[0].legend(fontsize=8)
        axes[1].plot(h["val_epoch"], h["val_metric"], "o-", color="tab:green")
        axes[1].set_ylabel(f"validation {self.best_metric_key}")
        axes[2].plot(h["epoch"], h["lr"], color="tab:red")
        axes[2].set_ylabel("learning rate")
        axes[2].set_xlabel("epoch")
        fig.tight_layout()
        tmp = self.output_folder / ".progress.tmp.png"
        fig.savefig(tmp, dpi=80)
        plt.close(fig)
        os.replace(tmp, self.output_folder / "progress.png")
