"""nnU-Net baseline for the partial-label comparison (issue 5): nnunetv2's own ``nnUNetTrainer``, shortened, trained
on the *same* preprocessed data, plans configuration and split as ``autoorgan_train D ccq F``; unannotated organs
are background for it (what nnU-Net does with partial labels).

    python bench/nnunet_baseline.py 501 0 --epochs 10 --iters 50 [--configuration ccq]

nnU-Net finds only trainers inside its package, so this script builds the trainer class directly. Results land in
``$autoorgan_results/DatasetXXX/nnUNetTrainerShort__autoorganPlans__<configuration>/fold_F`` (nnU-Net's layout,
with its own validation in ``validation/``). Evaluate with ``autoorgan_evaluate`` to exclude unannotated organs.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset")
    p.add_argument("fold", type=int)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--configuration", default="ccq")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max_minutes", type=float, default=None, help="stop after the first epoch past this budget")
    args = p.parse_args()
    import torch

    from autoorgan.utils.paths import find_dataset_name, nnunet_paths, preprocessed_root
    name = find_dataset_name(args.dataset)
    with nnunet_paths():
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        class Budget(Exception):
            pass

        deadline = time.time() + 60 * args.max_minutes if args.max_minutes else None

        class nnUNetTrainerShort(nnUNetTrainer):
            def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                         device: torch.device = torch.device("cuda")):  # nnU-Net reads this signature
                super().__init__(plans, configuration, fold, dataset_json, device)
                self.num_epochs = args.epochs
                self.num_iterations_per_epoch = args.iters
                self.num_val_iterations_per_epoch = 5

            def on_epoch_end(self):
                super().on_epoch_end()
                if deadline is not None and time.time() > deadline and self.current_epoch < self.num_epochs:
                    raise Budget

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
        plans["continue_training"] = False  # nnunetv2 2.8 reads this from the plans (its run_training sets it)
        trainer = nnUNetTrainerShort(plans, args.configuration, args.fold, ds, device=torch.device(args.device))
        trainer.num_workers = int(os.environ.get("nnUNet_n_proc_DA", "1"))
        try:
            trainer.run_training()
        except Budget:
            trainer.print_to_log_file(f"time budget of {args.max_minutes} min reached; stopping")
            trainer.on_train_end()
        try:
            trainer.perform_actual_validation(False)
        except FileNotFoundError as e:
            # nnU-Net scores its exports against preprocessed/gt_segmentations, which we do not write: its metrics
            # would count unannotated organs as background anyway. The exports are complete at this point.
            if "gt_segmentations" not in str(e):
                raise
        val = Path(trainer.output_folder) / "validation"
        print(f"nnU-Net baseline done: {trainer.output_folder}\nevaluate its validation exports (unannotated organs "
              f"left out): autoorgan_evaluate -ref $autoorgan_raw/{name}/labelsTr -pred {val} -d {args.dataset}")


if __name__ == "__main__":
    main()
