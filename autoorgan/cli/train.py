"""``autoorgan_train DATASET CONFIGURATION FOLD``: train one fold of a configuration from its plans."""
from __future__ import annotations

import argparse
import os

from autoorgan.configurations import CONFIGURATIONS, get_configuration
from autoorgan.utils.errors import OneLineArgumentParser, UserError, cli_entry
from autoorgan.utils.paths import find_dataset_name


def build_parser() -> argparse.ArgumentParser:
    from autoorgan.training.options import TrainOptions
    d = TrainOptions()
    p = OneLineArgumentParser(
        description="Train one fold of a configuration on a preprocessed dataset. Results go to "
                    "$autoorgan_results/DatasetXXX/<Trainer>__autoorganPlans__<configuration>/fold_F (checkpoints, "
                    "training_log.txt, progress.png, validation/summary.json). Multi-GPU/multi-process: launch "
                    "with torchrun --nproc_per_node N $(which autoorgan_train) ...",
        epilog="Continue an interrupted run with the same command plus --c. See docs/training.md.")
    p.add_argument("dataset", help="dataset id or name, e.g. 3 or Dataset003_Liver")
    p.add_argument("configuration", help="configuration: " + "; ".join(f"{c.name} ({c.description})"
                                                                     for c in CONFIGURATIONS.values()))
    p.add_argument("fold", help="fold 0-4 (splits_final.json) or 'all'")
    p.add_argument("-device", default=None, choices=("cpu", "cuda", "mps"),
                   help="device (default: cuda when available, else cpu)")
    p.add_argument("--c", action="store_true", help="continue from the latest checkpoint of this fold")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs (default {d.epochs})")
    p.add_argument("--iters_per_epoch", type=int, default=d.iters_per_epoch,
                   help=f"iterations per epoch (default {d.iters_per_epoch})")
    p.add_argument("--val_every", type=int, default=d.val_every,
                   help=f"validate every N epochs; the best checkpoint follows validation mAP (default {d.val_every})")
    p.add_argument("--lr", type=float, default=None,
                   help="AdamW learning rate (default: the configuration's, organdetr 2e-4, ccq/dodnet/masked_sigmoid "
                        "3e-3)")
    p.add_argument("--warmup_iters", type=int, default=d.warmup_iters,
                   help=f"linear warm-up iterations, at most 10%% of training (default {d.warmup_iters})")
    p.add_argument("--batch_size", type=int, default=None, help="batch size (default: from the plans)")
    p.add_argument("--max_minutes", type=float, default=None,
                   help="wall-clock budget in minutes: the epochs that fit are planned (again after every epoch) so "
                        "the learning rate anneals at the deadline, which is also a hard stop; --c continues with "
                        "what is left of it")
    p.add_argument("--seed", type=int, default=d.seed,
                   help=f"random seed (default {d.seed}); another seed trains in <Trainer>_seedN, so two seeds of one "
                        "fold can run side by side and be ensembled (autoorgan_predict -tr A B)")
    p.add_argument("-num_workers", type=int, default=None,
                   help="data loader worker processes (default: 2, or 0 with one CPU core)")
    p.add_argument("--matcher", choices=("dqm", "hungarian"), default=None,
                   help="organdetr: query matching (default from the plans: dqm)")
    p.add_argument("--no_seg_loss", action="store_true",
                   help="organdetr: drop the multi-scale segmentation loss (paper ablation)")
    p.add_argument("--no_query_anchors", action="store_true",
                   help="organdetr: reference boxes learned from a random init (Deformable DETR, the paper) instead "
                        "of starting each query at its organ's prior box from the plans (ablation)")
    p.add_argument("--no_iou_head", action="store_true",
                   help="organdetr: choose and score each organ's box by its class probability alone (the paper) "
                        "instead of probability x the IoU the network predicts for the box (ablation)")
    p.add_argument("--recipe", choices=("default", "paper"), default=None,
                   help="organdetr: 'paper' reproduces the paper's set-up (quantised targets, per-axis fit, rotation, "
                        "one learning rate, the paper's heads and dropout); default: docs/training.md")
    p.add_argument("--oversample_foreground", type=float, default=None, metavar="P",
                   help="ccq, dodnet, masked_sigmoid: fraction of patches centred on an organ (an organ drawn "
                        "uniformly, then a case annotating it; default: ccq/dodnet 0.33 as nnU-Net, masked_sigmoid "
                        "the plans' recipe, 1 on a CPU plan)")
    p.add_argument("--patch_size", type=int, nargs=3, default=None, metavar=("P0", "P1", "P2"),
                   help="ccq, dodnet, masked_sigmoid: training and prediction patch (preprocessed axis order; "
                        "multiples of the network's total strides) instead of the planned one (masked_sigmoid: its "
                        "recipe's, organ-sized on a CPU plan); results in <Trainer>_pP0xP1xP2")
    p.add_argument("--classes_per_patch", type=int, default=None, metavar="K",
                   help="ccq: classes decoded per training patch (one present in it, the others at random among the "
                        "case's annotated classes; default: the plans' ccq.train_classes_per_patch, 2); K = the "
                        "number of organs trains all of them, as dodnet does; results in CCQTrainer_kK")
    p.add_argument("--base_width", type=int, default=None, metavar="W",
                   help="ccq, dodnet, masked_sigmoid: the network's stage widths W, 2W, 4W, ... (at most 320, "
                        "nnU-Net's) instead of the plans' (CPU plan: 8-128, GPU plan: 32-320); a wider network "
                        "takes longer per step; results in <Trainer>_wW")
    ds = p.add_mutually_exclusive_group()
    ds.add_argument("--deep_supervision", action="store_true",
                    help="masked_sigmoid: the loss also on every lower decoder stage (nnU-Net's deep supervision; "
                         "the default of the plans' masked_sigmoid recipe)")
    ds.add_argument("--no_deep_supervision", action="store_true",
                    help="masked_sigmoid: the loss on the full-resolution output only (ablation); results in "
                         "MaskedSigmoidTrainer_nods")
    lm = p.add_mutually_exclusive_group()
    lm.add_argument("--lateral_mirror", action="store_true",
                    help="ccq, dodnet, masked_sigmoid: mirror half the training patches along the patient's "
                         "left-right axis, swapping the plans' lateral_pairs (e.g. left/right parotid), so each "
                         "organ is also learned from its partner's side; results in <Trainer>_lm")
    lm.add_argument("--no_lateral_mirror", action="store_true",
                    help="ccq, dodnet, masked_sigmoid: no such mirroring where the recipe has it (ablation); "
                         "results in <Trainer>_nolm")
    p.add_argument("-tr", dest="trainer_name", default=None,
                   help="name of the results folder's trainer part (default: derived from the options)")
    p.add_argument("--val_only", action="store_true",
                   help="only run the final validation with checkpoint_final.pth")
    p.add_argument("--no_val", action="store_true",
                   help="no validation during or after training (e.g. when you predict the validation cases "
                        "yourself); progress.png then shows losses only")
    return p


def check_options(args: argparse.Namespace) -> None:
    """Numbers that cannot train anything: one line saying which and what is allowed."""
    import math
    rules = [("--epochs", args.epochs, args.epochs >= 1, "at least 1"),
             ("--iters_per_epoch", args.iters_per_epoch, args.iters_per_epoch >= 1, "at least 1"),
             ("--val_every", args.val_every, args.val_every >= 1, "at least 1"),
             ("--lr", args.lr, args.lr is None or (math.isfinite(args.lr) and 0 < args.lr <= 1), "a number in (0, 1]"),
             ("--warmup_iters", args.warmup_iters, args.warmup_iters >= 0, "0 or more"),
             ("--batch_size", args.batch_size, args.batch_size is None or args.batch_size >= 1, "at least 1"),
             ("--max_minutes", args.max_minutes,
              args.max_minutes is None or (math.isfinite(args.max_minutes) and args.max_minutes > 0), "above 0"),
             ("-num_workers", args.num_workers, args.num_workers is None or args.num_workers >= 0, "0 or more"),
             ("--seed", args.seed, args.seed >= 0, "0 or more"),
             ("--oversample_foreground", args.oversample_foreground,
              args.oversample_foreground is None or 0 <= args.oversample_foreground <= 1, "in [0, 1]"),
             ("--base_width", args.base_width, args.base_width is None or 1 <= args.base_width <= 320,
              "in [1, 320]"),
             ("--classes_per_patch", args.classes_per_patch,
              args.classes_per_patch is None or args.classes_per_patch >= 1, "at least 1")]
    for name, value, ok, allowed in rules:
        if not ok:
            raise UserError(f"{name} {value} is not allowed: it must be {allowed}")


def run(args: argparse.Namespace) -> dict:
    import contextlib

    import torch

    from autoorgan.training.options import TrainOptions
    from autoorgan.utils.locks import folder_lock
    entry = get_configuration(args.configuration)
    check_options(args)
    extra = {}
    if args.matcher:
        extra["matcher"] = args.matcher
    if args.no_seg_loss:
        extra["seg_loss"] = False
    if args.no_query_anchors:
        extra["query_anchors"] = False
    if args.no_iou_head:
        extra["iou_head"] = False
    if args.recipe:
        extra["recipe"] = args.recipe
    patch_options = {"--oversample_foreground": args.oversample_foreground,
                     "--patch_size": list(args.patch_size) if args.patch_size else None}
    for flag, value in patch_options.items():
        if value is None:
            continue
        _masks_only(entry, f"{flag} is", "patch-based segmentation")
        extra[flag.lstrip("-")] = value
    if args.base_width is not None:
        _masks_only(entry, "--base_width is")
        extra["base_width"] = int(args.base_width)
    if args.deep_supervision or args.no_deep_supervision:
        flag = "--deep_supervision" if args.deep_supervision else "--no_deep_supervision"
        if entry.name != "masked_sigmoid":
            raise UserError(f"{flag} is for masked_sigmoid (nnU-Net's U-Net); ccq and dodnet have no per-stage "
                            "outputs")
        extra["deep_supervision"] = bool(args.deep_supervision)
    if args.lateral_mirror or args.no_lateral_mirror:
        _masks_only(entry, "--lateral_mirror and --no_lateral_mirror are")
        extra["lateral_mirror"] = bool(args.lateral_mirror)
    if args.classes_per_patch is not None:
        if entry.name != "ccq":
            raise UserError("--classes_per_patch is for ccq (dodnet and masked_sigmoid train every annotated class "
                            "of each patch)")
        extra["classes_per_patch"] = int(args.classes_per_patch)
    workers = args.num_workers if args.num_workers is not None else (2 if (os.cpu_count() or 1) > 1 else 0)
    opt = TrainOptions(epochs=args.epochs, iters_per_epoch=args.iters_per_epoch, val_every=args.val_every,
                       lr=args.lr, warmup_iters=args.warmup_iters, batch_size=args.batch_size, seed=args.seed,
                       max_minutes=args.max_minutes, num_workers=workers, no_val=args.no_val, extra=extra)
    fold = args.fold if args.fold == "all" else _int_fold(args.fold)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    trainer = entry.trainer_class()(find_dataset_name(args.dataset), fold, opt, device,
                                    trainer_name=args.trainer_name)
    # one training per fold folder at a time (rank 0 holds the lock for its DDP siblings)
    lock = folder_lock(trainer.output_folder, "training") if trainer.is_main else contextlib.nullcontext()
    with lock:
        if args.val_only:
            path = trainer.output_folder / "checkpoint_final.pth"
            if not path.is_file():
                raise UserError(f"no checkpoint_final.pth in {trainer.output_folder}; train this fold first")
            trainer.initialize()
            trainer.load_checkpoint(path)
            return trainer.validate(final=True)
        return trainer.run(continue_training=args.c)


def _masks_only(entry, subject: str, kind: str = "segmentation") -> None:
    """An option of the label-map configurations given to a box configuration: one line saying so."""
    if entry.output != "masks":
        raise UserError(f"{subject} for the {kind} configurations (ccq, dodnet, masked_sigmoid), not organdetr")


def _int_fold(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UserError(f"fold must be a number (0-4) or 'all', got {text!r}") from None


@cli_entry(interrupted="the last finished epoch is saved: rerun the same command with --c to continue")
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    summary = run(args)
    if summary:
        m = summary.get("metrics", summary)
        print(" ".join(f"{k} {m[k]:.4f}" for k in ("mAP", "mAR", "AP50", "AP75", "mean_Dice", "mean_HD95") if k in m))
