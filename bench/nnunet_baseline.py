"""nnU-Net baseline for the partial-label comparison (issue 5): nnunetv2's own ``nnUNetTrainer``, shortened, trained
on the *same* preprocessed data, plans configuration and split as ``autoorgan_train D ccq F``; unannotated organs
are background for it (what nnU-Net does with partial labels). Optimizer: nnU-Net's own AdamW variant
(``nnUNetTrainerAdam``) at 3e-3 by default, as our segmentation trainers; ``--optimizer sgd`` for nnU-Net's default
SGD, which needs far more than a CPU hour's ~700 iterations to leave the all-background state (docs/ccq.md).

    python bench/nnunet_baseline.py 501 0 --epochs 10 --iters 50 [--configuration ccq]
    python bench/nnunet_baseline.py 501 0 --epochs 100000 --iters 25 --max_minutes 60   # a wall-clock budget

Fair to nnU-Net under a short budget: its network is its own ``PlainConvUNet`` with the section's stages, widths
and kernels; with ``--max_minutes`` its poly schedule is sized from the measured epoch time so that the learning
rate anneals at the deadline (nnU-Net sizes it for ``--epochs``; cut off early it would stop at a high rate); no
mirroring by default (nnU-Net's ``nnUNetTrainerNoMirroring``: mirroring swaps left/right organs; ``--mirror`` for
nnU-Net's default).

nnU-Net finds only trainers inside its package, so this script builds the trainer class directly. Results land in
``$autoorgan_results/DatasetXXX/nnUNetTrainerShortAdamW__autoorganPlans__<configuration>/fold_F``
(``nnUNetTrainerShort__...`` with ``--optimizer sgd``; nnU-Net's layout, with its own validation in
``validation/``). Evaluate with ``autoorgan_evaluate`` to exclude
unannotated organs.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def write_boxes_from_exports(folder: Path, dataset_json: dict) -> None:
    """``CASE_boxes.json`` beside each of nnU-Net's exported label maps, made as autoorgan makes them for its
    segmentation configurations (:mod:`autoorgan.inference.mask_boxes`: the box of each organ's largest component,
    scored by the organ's mean softmax probability over it), so ``autoorgan_evaluate`` scores nnU-Net as a detector
    too. nnU-Net's ``CASE.npz`` (``probabilities [C, n0, n1, n2]``, label value = channel, on the exported grid)
    and ``CASE.pkl`` are removed afterwards (tens of MB per case)."""
    import numpy as np
    import SimpleITK as sitk

    from autoorgan.boxes import Geometry
    from autoorgan.inference.export import case_box_record
    from autoorgan.inference.mask_boxes import boxes_from_label_map, component_scores
    from autoorgan.utils.fileio import write_json_atomic
    names = {int(v): k for k, v in dataset_json["labels"].items() if int(v) > 0}
    labels = sorted(names)
    for npz in sorted(folder.glob("*.npz")):
        case = npz.stem
        image = sitk.ReadImage(str(folder / f"{case}{dataset_json['file_ending']}"))
        label_map = sitk.GetArrayFromImage(image)
        probs = np.load(npz)["probabilities"]
        if probs.shape[1:] != label_map.shape:
            raise SystemExit(f"{npz}: probabilities {probs.shape} do not lie on the label map's grid "
                             f"{label_map.shape}")
        boxes = boxes_from_label_map(label_map, labels)
        scores = component_scores(label_map, probs[labels], labels)
        record = case_box_record(case, {k: (np.asarray(b, np.float64), scores[k]) for k, b in boxes.items()},
                                 names, Geometry.from_sitk(image))
        write_json_atomic(record, folder / f"{case}_boxes.json")
        npz.unlink()
        npz.with_suffix(".pkl").unlink(missing_ok=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset")
    p.add_argument("fold", type=int)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--configuration", default="ccq")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no_boxes", action="store_true",
                   help="do not write CASE_boxes.json (boxes from the exported masks) beside nnU-Net's validation")
    p.add_argument("--mirror", action="store_true",
                   help="nnU-Net's default mirroring (training augmentation and test-time). Off by default: "
                        "mirroring swaps left/right organs (parotids), so the baseline is nnU-Net's own "
                        "nnUNetTrainerNoMirroring, as our configurations do not mirror either")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="adamw",
                   help="adamw (default): nnU-Net's own nnUNetTrainerAdam recipe (AdamW with amsgrad, poly) at the "
                        "learning rate autoorgan's segmentation trainers use; sgd: nnU-Net's default (SGD, Nesterov "
                        "momentum 0.99, lr 1e-2, poly), which on OpenKBP's CPU plan still predicted background only "
                        "after 700 iterations (pseudo Dice 0 in all 28 epochs; AdamW: 0.72 spinal cord by then)")
    p.add_argument("--lr", type=float, default=None,
                   help="initial learning rate (default: nnU-Net's 1e-2 for sgd; 3e-3 for adamw, as autoorgan_train "
                        "ccq/dodnet/masked_sigmoid)")
    p.add_argument("--max_minutes", type=float, default=None,
                   help="wall-clock budget, planned as autoorgan_train plans it: after every epoch the poly "
                        "schedule's length is re-planned from the median epoch time so that the learning rate reaches "
                        "~0 at the deadline (--epochs is then an upper bound)")
    p.add_argument("--patch_size", type=int, nargs=3, default=None, metavar=("P0", "P1", "P2"),
                   help="patch size instead of the plans' (e.g. masked_sigmoid's CPU recipe, plans "
                        "configurations.ccq.masked_sigmoid.patch_size), for nnU-Net with the same patches")
    p.add_argument("--oversample_foreground", type=float, default=None, metavar="P",
                   help="nnU-Net's oversample_foreground_percent (its default 0.33; 1: every patch centred on a "
                        "foreground voxel of a class the case has, nnU-Net's own sampler)")
    args = p.parse_args()
    import torch

    from autoorgan.training.schedule import TimeBudget
    from autoorgan.utils.paths import find_dataset_name, nnunet_paths, preprocessed_root
    name = find_dataset_name(args.dataset)
    with nnunet_paths():
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import (
            nnUNetTrainerNoMirroring,
        )
        base = nnUNetTrainer if args.mirror else nnUNetTrainerNoMirroring

        class Budget(Exception):
            pass

        budget = TimeBudget(args.max_minutes, time.time())  # the trainers' budget planner, for nnU-Net's epochs

        class nnUNetTrainerShort(base):  # type: ignore[misc, valid-type]
            def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                         device: torch.device = torch.device("cuda")):  # nnU-Net reads this signature
                super().__init__(plans, configuration, fold, dataset_json, device)
                self.num_epochs = args.epochs
                self.num_iterations_per_epoch = args.iters
                self.num_val_iterations_per_epoch = 5
                if args.lr is not None or args.optimizer == "adamw":
                    self.initial_lr = args.lr if args.lr is not None else 3e-3
                if args.oversample_foreground is not None:
                    self.oversample_foreground_percent = args.oversample_foreground

            def configure_optimizers(self):
                if args.optimizer == "sgd":
                    return super().configure_optimizers()
                from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
                optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr,
                                              weight_decay=self.weight_decay, amsgrad=True)  # as nnUNetTrainerAdam
                return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

            def on_epoch_start(self):
                super().on_epoch_start()
                self.epoch_started = time.time()

            def on_epoch_end(self):
                super().on_epoch_end()  # current_epoch = epochs done
                if not budget.active or self.current_epoch >= self.num_epochs:
                    return
                now = time.time()
                wall = now - self.epoch_started
                planned = budget.plan(now, wall, wall, self.current_epoch, self.num_epochs)
                if planned <= self.current_epoch or budget.expired(now):
                    raise Budget
                # nnU-Net plans its poly schedule for num_epochs; under a time budget it follows the plan, so the
                # learning rate anneals at the deadline instead of being cut at a high value
                self.lr_scheduler.max_steps = planned
                self.print_to_log_file(f"time budget: schedule sized to {planned} epochs")

        trainer_name = "nnUNetTrainerShort" + ("AdamW" if args.optimizer == "adamw" else "")
        if args.oversample_foreground is not None:
            trainer_name += f"_fg{round(100 * args.oversample_foreground)}"
        if args.patch_size:
            trainer_name += "_p" + "x".join(map(str, args.patch_size))
        # its own results folder (nnU-Net names it after the trainer class)
        nnUNetTrainerShort.__name__ = nnUNetTrainerShort.__qualname__ = trainer_name
        plans = json.loads((preprocessed_root() / name / "autoorganPlans.json").read_text())
        ds = json.loads((preprocessed_root() / name / "dataset.json").read_text())
        ds.pop("annotated_labels", None)  # nnU-Net does not know it: unannotated organs are background
        # nnU-Net infers its dataset class from the file endings in the data folder, and ours also holds a JSON
        # stamp: give it a view of symlinks to the .b2nd/.pkl files only
        cfg = plans["configurations"][args.configuration]
        src = preprocessed_root() / name / cfg["data_identifier"]
        view = src.with_name(src.name + "_nnunet_view")
        view.mkdir(exist_ok=True)
        for f in src.iterdir():
            if f.suffix in (".b2nd", ".pkl") and not (view / f.name).exists():
                (view / f.name).symlink_to(f)
        cfg["data_identifier"] = view.name
        # the section names our network; nnU-Net builds its own U-Net from the same stages, widths and kernels
        cfg["architecture"]["network_class_name"] = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
        if args.patch_size:
            cfg["patch_size"] = list(args.patch_size)
        plans["continue_training"] = False  # nnunetv2 2.8 reads this from the plans (its run_training sets it)
        trainer = nnUNetTrainerShort(plans, args.configuration, args.fold, ds, device=torch.device(args.device))
        trainer.num_workers = int(os.environ.get("nnUNet_n_proc_DA", "1"))
        try:
            trainer.run_training()
        except Budget:
            trainer.print_to_log_file(f"time budget of {args.max_minutes} min reached; stopping")
            trainer.on_train_end()
        try:
            trainer.perform_actual_validation(not args.no_boxes)  # probabilities for the box scores
        except FileNotFoundError as e:
            # nnU-Net scores its exports against preprocessed/gt_segmentations, which we do not write: its metrics
            # would count unannotated organs as background anyway. The exports are complete at this point.
            if "gt_segmentations" not in str(e):
                raise
        val = Path(trainer.output_folder) / "validation"
        if not args.no_boxes:
            write_boxes_from_exports(val, ds)
        print(f"nnU-Net baseline done: {trainer.output_folder}\nevaluate its validation exports (unannotated organs "
              f"left out): autoorgan_evaluate -ref $autoorgan_raw/{name}/labelsTr -pred {val} -d {args.dataset}")


if __name__ == "__main__":
    main()
