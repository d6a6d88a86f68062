"""``autoorgan_demo``: the README's main job on the embedded phantom dataset (reruns reuse what exists)."""
from __future__ import annotations

import argparse
import json
import sys

from autoorgan.utils.errors import OneLineArgumentParser, cli_entry, positive_int
from autoorgan.utils.paths import preprocessed_root, raw_root, results_root


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(description="Run the whole pipeline on a synthetic phantom dataset: make it (if "
                                            "absent), fingerprint, plan and preprocess it, then train Organ-DETR "
                                            "(fold 0) for a few minutes, predict the held-out scans and evaluate them. "
                                            "Rerunning reuses what exists and continues "
                                            "an interrupted training.")
    p.add_argument("-d", type=int, default=900, help="dataset id of the phantom (default 900)")
    p.add_argument("--cases", type=positive_int, default=40, help="training cases of a new phantom (default 40)")
    p.add_argument("-np", type=positive_int, default=2, help="worker processes (default 2)")
    p.add_argument("--epochs", type=positive_int, default=20,
                   help="training epochs (default 20, a few minutes on 2 cores)")
    p.add_argument("--iters_per_epoch", type=positive_int, default=25, help="iterations per epoch (default 25)")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from autoorgan.cli import plan_and_preprocess as pp
    from autoorgan.dataset.phantom import write_phantom_dataset
    exists = raw_root().is_dir() and any(raw_root().glob(f"Dataset{args.d:03d}_*"))
    if not exists:
        folder = write_phantom_dataset(raw_root(), args.d, num_cases=args.cases)
        print(f"[1/4] phantom dataset written to {folder}")
    else:
        print(f"[1/4] phantom dataset {args.d} exists in {raw_root()}; reusing it")
    print("[2/4] fingerprint, plans, preprocessing")
    pp.main(["-d", str(args.d), "-np", str(args.np)])
    print(f"preprocessed data and plans are in {preprocessed_root()}")
    print(f"[3/4] training Organ-DETR, fold 0 ({args.epochs} epochs x {args.iters_per_epoch} iterations)")
    from autoorgan.cli import train
    from autoorgan.utils.paths import find_dataset_name
    name = find_dataset_name(str(args.d))
    targs = train.build_parser().parse_args([name, "organdetr", "0", "--epochs", str(args.epochs),
                                             "--iters_per_epoch", str(args.iters_per_epoch), "--lr", "1e-3",
                                             "--val_every", "5", "--warmup_iters", "50"])
    from autoorgan.configurations import get_configuration
    from autoorgan.planning.plans import PLANS_NAME
    from autoorgan.utils.paths import model_folder
    entry = get_configuration("organdetr")
    fold_dir = model_folder(name, entry.trainer_name, PLANS_NAME, entry.plans_section) / "fold_0"
    if (fold_dir / "checkpoint_final.pth").is_file():
        print(f"trained model found in {fold_dir}; reusing it (delete the folder to train again)")
        summary = json.loads((fold_dir / "validation" / "summary.json").read_text())
    else:
        targs.c = (fold_dir / "checkpoint_latest.pth").is_file()
        summary = train.run(targs)
    m = summary.get("metrics", summary)
    print(f"validation (fold 0): mAP {m['mAP']:.3f}, AP50 {m['AP50']:.3f}, AP75 {m['AP75']:.3f}, mAR {m['mAR']:.3f}")
    print(f"model, progress.png and per-case validation boxes: {fold_dir}")
    raw_folder = raw_root() / name
    if not any((raw_folder / "imagesTs").glob("*")):
        print("no held-out images (imagesTs) in the phantom; skipping prediction", file=sys.stderr)
        return
    out = results_root() / name / "demo_predictions_imagesTs"
    print(f"[4/4] predicting the held-out phantom scans ({raw_folder / 'imagesTs'}) and evaluating")
    from autoorgan.cli import evaluate, predict
    predict.main(["-i", str(raw_folder / "imagesTs"), "-o", str(out), "-d", name, "-c", "organdetr", "-f", "0",
                  "--continue_prediction", "--save_png"])
    evaluate.main(["-ref", str(raw_folder / "labelsTs"), "-pred", str(out), "-d", name])
    print(f"outputs: {out} (CASE_boxes.json, CASE.mrk.json for 3D Slicer, CASE_boxes.png, summary.json)")


if __name__ == "__main__":
    main()
