"""Thin trainer base (``autoorgan.trainers.base``): loop, folders, folds, AdamW with :mod:`autoorgan.training.schedule`
(a time budget anneals at the deadline), checkpoints, exact resume (``--c``), logging, ``progress.png``, device, DDP,
validation through the predictor. A configuration supplies ``build_loss()``, ``make_training_stream(n)``,
``collate_fn``, ``compute_loss(batch)``; its network is its registry entry's. Results layout: docs/training.md."""
from __future__ import annotations

import copy
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from autoorgan.configurations import get_configuration as registered
from autoorgan.configurations import network_class
from autoorgan.dataset.raw import foreground_labels
from autoorgan.inference.predictor import PREDICTOR_CLASSES
from autoorgan.planning.plans import PLANS_NAME, get_configuration, load_plans
from autoorgan.training.options import TrainOptions, check_resumable
from autoorgan.training.progress import plot_progress
from autoorgan.training.schedule import EpochBatches, TimeBudget, lr_factor, make_loader
from autoorgan.training.splits import get_split
from autoorgan.training.validation import validate
from autoorgan.utils.checkpoints import (
    atomic_torch_save,
    load_checkpoint,
    load_network_state,
    restore_rng_states,
    rng_states,
    seed_everything,
)
from autoorgan.utils.device import select_device
from autoorgan.utils.errors import UserError
from autoorgan.utils.fileio import load_json, write_json_atomic
from autoorgan.utils.paths import model_folder, preprocessed_root

HISTORY_KEYS = ("epoch", "lr", "train_loss", "val_epoch", "val_metric", "epoch_time")


class TrainerBase:
    configuration: str = ""         # registry name (autoorgan.configurations)
    best_metric_key: str = "mAP"
    lr_schedule: str = "cosine"     # or "poly"
    default_grad_clip: float = 0.1  # gradient norm clip (DETR: 0.1; nnU-Net: 12)
    default_lr: float = 2e-4        # AdamW learning rate without --lr (DETR's 1e-4 scaled for batch 2-4)
    memory_format: torch.memory_format | None = None  # the network's layout (None: PyTorch's default)

    def __init__(self, dataset_name: str, fold: int | str, options: TrainOptions, device: str = "cpu",
                 trainer_name: str | None = None, plans_name: str = PLANS_NAME):
        self.dataset_name, self.fold, self.opt = dataset_name, fold, options
        self.opt.lr = self.default_lr if options.lr is None else options.lr  # stored, so --c checks the value
        self.entry = registered(self.configuration)
        self.section = self.entry.plans_section
        self.device = select_device(device)
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.is_main = self.rank == 0
        self.pre_folder = preprocessed_root() / dataset_name
        self.plans = load_plans(self.pre_folder, plans_name)
        self.plans_name = plans_name
        self.cfg = get_configuration(self.plans, self.section)
        self.dataset_json = load_json(self.pre_folder / "dataset.json")
        # a non-default --seed trains in a folder of its own (<Trainer>_seed2): runs of one fold with different seeds,
        # e.g. side by side on a small CPU and ensembled by autoorgan_predict -tr A B, never share a folder
        seed = "" if options.seed == TrainOptions.seed else f"_seed{options.seed}"
        self.trainer_name = trainer_name or self.default_trainer_name() + seed
        self.model_folder = model_folder(dataset_name, self.trainer_name, plans_name, self.section)
        self.output_folder = self.model_folder / f"fold_{fold}"
        self.data_folder = self.pre_folder / self.cfg["data_identifier"]
        if not self.data_folder.is_dir() or not any(self.data_folder.glob("*.pkl")):
            raise UserError(f"no preprocessed {self.section} data in {self.data_folder}; run "
                            f"autoorgan_plan_and_preprocess -d {dataset_name} -c {self.section} first")
        ids = sorted(p.stem for p in self.data_folder.glob("*.pkl"))
        self.train_ids, self.val_ids = get_split(self.pre_folder, ids, fold)
        self.batch_size = int(options.batch_size or self.cfg["batch_size"])
        if self.batch_size % self.world:
            raise UserError(f"batch size {self.batch_size} is not divisible by the {self.world} processes")
        self.epoch, self.planned_epochs, self.time_planned = 0, options.epochs, False
        self.budget, self.time_spent = TimeBudget(None, 0.0), 0.0  # --max_minutes (set by run)
        self.history: dict[str, list] = {k: [] for k in HISTORY_KEYS}
        self.best = -math.inf
        self.network: nn.Module | None = None

    def default_trainer_name(self) -> str:
        return type(self).__name__

    def build_network(self) -> nn.Module:
        return network_class(self.entry.network).from_plans(self.cfg, len(self.dataset_json["channel_names"]),
                                                            len(foreground_labels(self.dataset_json)))

    def build_loss(self):
        raise NotImplementedError

    def param_groups(self, net: nn.Module) -> list[dict]:  # optimizer parameter groups (one by default)
        return [{"params": list(net.parameters())}]

    def make_training_stream(self, num_samples: int) -> torch.utils.data.Dataset:
        """The run's samples by global index ``0 .. num_samples - 1`` (each a pure function of seed and index)."""
        raise NotImplementedError

    def training_loader(self) -> torch.utils.data.DataLoader:
        """One loader for the whole run (workers persist across epochs); set ``batch_sampler.epoch`` per epoch."""
        if getattr(self, "_loader", None) is None:
            stream = self.make_training_stream(self.opt.epochs * self.opt.iters_per_epoch * self.batch_size)
            self._loader = make_loader(stream, EpochBatches(self.opt.iters_per_epoch, self.batch_size, self.rank,
                                                            self.world), self.opt.num_workers, type(self).collate_fn)
        return self._loader

    collate_fn = None  # a plain function (it is pickled into loader workers)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def validate(self, final: bool = False) -> dict:
        """Metrics on the fold's validation cases in the original image frame (must contain ``best_metric_key``);
        ``final``: also write the cases' prediction files and ``validation/summary.json``. ``--no_val``: none."""
        if self.opt.no_val:
            return {}
        predictor = PREDICTOR_CLASSES[self.entry.output](self.model_plans, self.dataset_json, self.section,
                                                         [self.module], self.device)
        folder = self.output_folder / "validation" if final else None
        metrics = validate(predictor, self.data_folder, self.val_ids, self.pre_folder, folder,
                           {"trainer": self.trainer_name, "options": asdict(self.opt)})
        if final:
            self.log(f"validation: {self.best_metric_key} {metrics[self.best_metric_key]:.4f} -> {folder}")
        return metrics

    @property
    def model_plans(self) -> dict:
        """The plans as copied into the model folder: they name the network this trainer builds."""
        plans = copy.deepcopy(self.plans)
        plans["configurations"][self.section].setdefault("architecture", {})["network_class_name"] = \
            self.entry.network
        return plans

    @property
    def module(self) -> nn.Module:  # the network without the DDP wrapper
        return self.network.module if hasattr(self.network, "module") else self.network

    def initialize(self) -> None:
        if self.distributed and not torch.distributed.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend)
        seed_everything(self.opt.seed)
        net = self.build_network().to(self.device)
        if self.memory_format is not None:
            net = net.to(memory_format=self.memory_format)
        self.optimizer = torch.optim.AdamW(self.param_groups(net), lr=self.opt.lr, weight_decay=self.opt.weight_decay)
        n_it = self.opt.iters_per_epoch  # the schedule follows planned_epochs (a time budget re-plans it)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda it: lr_factor(
            it, self.planned_epochs * n_it, min(self.opt.warmup_iters, self.planned_epochs * n_it // 10),
            self.lr_schedule))
        if self.distributed:
            net = nn.parallel.DistributedDataParallel(net, find_unused_parameters=True, device_ids=(
                [self.device.index] if self.device.type == "cuda" else None))
        self.network = net
        self.loss = self.build_loss()
        if self.is_main:
            self.output_folder.mkdir(parents=True, exist_ok=True)
            for stale in self.output_folder.glob(".*.tmp*"):  # left by a kill during a checkpoint write
                stale.unlink(missing_ok=True)
            write_json_atomic(self.model_plans, self.model_folder / "plans.json")
            write_json_atomic(self.dataset_json, self.model_folder / "dataset.json")

    def log(self, msg: str) -> None:
        if self.is_main:
            with open(self.output_folder / "training_log.txt", "a") as fh:
                fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {msg}\n")
            tqdm.write(msg, file=sys.stderr)

    def checkpoint_state(self) -> dict:
        return {"network": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "best": self.best,
                "history": self.history, "options": asdict(self.opt), "trainer_name": self.trainer_name,
                "configuration": self.configuration, "plans_section": self.section, "dataset_name": self.dataset_name,
                "plans_name": self.plans_name, "rng": rng_states(), "planned_epochs": self.planned_epochs,
                "time_planned": self.time_planned, "time_spent": time.time() - self.budget.start}

    def save_checkpoint(self, name: str) -> None:
        if self.is_main:
            atomic_torch_save(self.checkpoint_state(), self.output_folder / name)

    def load_checkpoint(self, path: Path) -> None:
        ck = load_checkpoint(path, "delete it to start over")
        load_network_state(self.module, ck["network"], path, "delete it to start over")
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.epoch, self.best, self.history = ck["epoch"], ck["best"], ck["history"]
        if ck.get("time_planned"):  # continue the time budget's plan and what is left of the budget
            self.planned_epochs, self.time_planned = min(int(ck["planned_epochs"]), self.opt.epochs), True
            self.time_spent = float(ck.get("time_spent", 0.0))
        restore_rng_states(ck["rng"])

    def run(self, continue_training: bool = False) -> dict:
        """Train (or continue), then validate; returns the final validation summary."""
        latest, final = (self.output_folder / f"checkpoint_{n}.pth" for n in ("latest", "final"))
        if not continue_training and (latest.is_file() or final.is_file()):
            raise UserError(f"{self.output_folder} already holds a training run; continue it with --c or delete "
                            "the folder")
        if continue_training:
            check_resumable(self.opt, self.output_folder)
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
        summary: dict = {}
        self.budget = TimeBudget(self.opt.max_minutes, time.time() - self.time_spent)
        while self.epoch < self.planned_epochs:
            summary = self.train_epoch() or summary
            if self.budget.expired(time.time()) and self.epoch < self.planned_epochs:
                self.log(f"time budget of {self.opt.max_minutes:g} min reached after epoch {self.epoch}; stopping")
                if self.is_main:
                    summary = self.validate(final=True)
                    self.log("final model" + self.record_validation(summary))
                break
        if self.is_main:
            atomic_torch_save(self.checkpoint_state(), final)
            latest.unlink(missing_ok=True)
            if not summary and not self.opt.no_val:  # the time plan ended the run, or a finished one continued
                summary = self.validate(final=True)
                self.log("final model" + self.record_validation(summary))
            plot_progress(self.history, self.best_metric_key, self.output_folder / "progress.png")
        if self.distributed:
            torch.distributed.barrier()
        return summary

    def train_epoch(self) -> dict:
        """One epoch; returns the final validation metrics after the last epoch (else an empty dict)."""
        e, n_it = self.epoch, self.opt.iters_per_epoch
        loader = self.training_loader()
        loader.batch_sampler.epoch = e
        self.network.train()
        t0, losses = time.time(), []
        bar = tqdm(loader, total=n_it, desc=f"epoch {e + 1}/{self.planned_epochs}", disable=not self.is_main,
                   leave=False, file=sys.stderr, dynamic_ncols=True)
        for i, batch in enumerate(bar):
            if i == 1:  # the first iteration pays start-up costs: the steady rate is timed from the second
                t1 = time.time()
            self.optimizer.zero_grad(set_to_none=True)
            loss, parts = self.compute_loss(batch)
            if not torch.isfinite(loss):
                raise UserError(f"training diverged: the loss is {float(loss.detach())} in epoch {e + 1}; lower the "
                                f"learning rate (--lr) and start again (delete {self.output_folder} or use -tr)")
            loss.backward()
            clip = self.default_grad_clip if self.opt.grad_clip is None else self.opt.grad_clip
            if clip > 0:
                nn.utils.clip_grad_norm_(self.network.parameters(), clip)
            self.optimizer.step()
            self.scheduler.step()
            losses.append(parts)
            bar.set_postfix(loss=f"{parts['total']:.3f}")
        bar.close()
        self.iteration_seconds = (time.time() - t1) / (n_it - 1) if n_it > 1 else time.time() - t0
        mean = {k: float(np.mean([p[k] for p in losses])) for k in losses[0]}
        self.epoch += 1
        for key, value in (("epoch", self.epoch), ("lr", self.optimizer.param_groups[0]["lr"]), ("train_loss", mean),
                           ("epoch_time", time.time() - t0)):
            self.history[key].append(value)
        if self.budget.active:  # before deciding whether this epoch is the last
            planned, self.time_planned = self.planned_epochs, True
            self.planned_epochs = self.budget.plan(time.time(), time.time() - t0, self.iteration_seconds * n_it,
                                                   self.epoch, self.opt.epochs)
            if planned != self.planned_epochs:
                self.log(f"time budget {self.opt.max_minutes:g} min: {self.planned_epochs} epochs planned (lr -> 0)")
        msg = (f"epoch {self.epoch}/{self.planned_epochs} loss {mean['total']:.4f} (" +
               ", ".join(f"{k} {v:.3f}" for k, v in mean.items() if k != "total") +
               f") lr {self.history['lr'][-1]:.2e} {time.time() - t0:.1f} s")
        last = self.epoch == self.planned_epochs
        metrics = {}
        if self.is_main and (self.epoch % self.opt.val_every == 0 or last):
            metrics = self.validate(final=last)  # the last epoch's validation is the final one (written once)
            msg += self.record_validation(metrics)
        self.log(msg)
        self.save_checkpoint("checkpoint_latest.pth")
        if self.distributed:
            torch.distributed.barrier()
        return metrics if last else {}

    def record_validation(self, metrics: dict) -> str:
        """History, best checkpoint and ``progress.png`` after a validation; returns the log text."""
        if not metrics:
            return ""
        value = metrics[self.best_metric_key]
        self.history["val_epoch"].append(self.epoch)
        self.history["val_metric"].append(value)
        msg = f"; val {self.best_metric_key} {value:.4f}"
        if value > self.best:
            self.best = value
            msg += " (new best)"
            self.save_checkpoint("checkpoint_best.pth")
        plot_progress(self.history, self.best_metric_key, self.output_folder / "progress.png")
        return msg
