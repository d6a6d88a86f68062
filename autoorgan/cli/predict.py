"""``autoorgan_predict`` and ``autoorgan_predict_from_modelfolder``: organ boxes for a folder of new scans."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from autoorgan.inference.mask_boxes import COMPONENT_RULES
from autoorgan.utils.errors import OneLineArgumentParser, UserError, cli_entry

INTERRUPTED = "finished cases are kept: rerun the same command with --continue_prediction to do the rest"
EPILOG = ("Inputs: CASE_0000.nii.gz-style channel files, plain CASE.nii.gz/.nii/.nrrd/.mha files (one-channel "
          "models) or one DICOM series per sub-folder. Outputs per case: CASE_boxes.json (boxes in the input "
          "image's voxel indices and in LPS world mm), CASE.mrk.json (3D Slicer ROIs; drag it into Slicer with the "
          "image), optionally CASE_boxmask.nii.gz / CASE_boxes.png, and DICOM SEG / RTSTRUCT (--output_type). A "
          "case that fails is reported and the others "
          "go on; the exit status is 1 when any failed. See docs/prediction.md.")


def _parser(description: str) -> argparse.ArgumentParser:
    """The options both prediction commands share."""
    p = OneLineArgumentParser(description=description, epilog=EPILOG)
    p.add_argument("-i", required=True, metavar="IN", help="input folder")
    p.add_argument("-o", required=True, metavar="OUT", help="output folder (created)")
    p.add_argument("-f", nargs="+", default=None, metavar="FOLD",
                   help="folds to ensemble, e.g. 0 or 0 1 2 3 4; all = the model trained on all cases (fold_all) "
                        "(default: every trained fold)")
    p.add_argument("-chk", default="final", choices=("final", "best", "latest"),
                   help="checkpoint_{final,best,latest}.pth (default final)")
    p.add_argument("-device", default=None, choices=("cpu", "cuda", "mps"),
                   help="device (default: cuda when available, else cpu)")
    p.add_argument("--backend", default="torch", choices=("torch", "onnx"),
                   help="torch (default) or onnx: each fold's network.onnx (autoorgan_export_onnx) run by onnxruntime, "
                        "with the same preprocessing and outputs")
    p.add_argument("--tta", action="store_true",
                   help="test-time mirroring (off by default). Label maps (ccq, dodnet, masked_sigmoid): one more pass "
                        "with the scan mirrored along the patient's left-right axis, its probabilities flipped back "
                        "with the plans' lateral_pairs (e.g. left/right parotid) swapped, and averaged (twice the "
                        "time). Boxes (organdetr): mirroring along the plans' mirror_axes, averaged in box space (the "
                        "default plans have none, because left/right organs would swap)")
    p.add_argument("--save_box_masks", action="store_true", help="also write CASE_boxmask.nii.gz (boxes as labels)")
    p.add_argument("--save_png", action="store_true", help="also write CASE_boxes.png (three slices per organ)")
    p.add_argument("--output_type", nargs="+", default=["nifti"], choices=("nifti", "dicom_seg", "rtstruct"),
                   metavar="TYPE",
                   help="nifti (label map CASE<file_ending>, segmentation models; default), dicom_seg (CASE_seg.dcm, a "
                        "DICOM SEG made with highdicom), rtstruct (CASE_rtstruct.dcm, made with rt-utils); several "
                        "allowed. The DICOM ones reference the case's input DICOM series (or --dicom_reference); for "
                        "organdetr they hold the boxes as filled regions")
    p.add_argument("--dicom_reference", default=None, metavar="REF",
                   help="for inputs given as image files: REF/CASE/ is the DICOM series CASE was made from (same grid)")
    p.add_argument("--continue_prediction", action="store_true",
                   help="skip cases already finished (their last file, CASE_boxes.json or the label map, "
                        "exists): resume an interrupted run")
    p.add_argument("--refine_with_masks", default=None, metavar="MASKS",
                   help="boxes (organdetr) only: refine each organ's box with the label map MASKS/CASE<file_ending> "
                        "of the same scan (from autoorgan_predict -c dodnet|masked_sigmoid|ccq or nnUNetv2_predict): "
                        "the organ's largest component near the coarse box becomes its box where both agree "
                        "(docs/prediction.md)")
    p.add_argument("--components", choices=COMPONENT_RULES, default=None,
                   help="label maps (ccq, dodnet, masked_sigmoid) only: which connected components of each organ to "
                        "keep. all: every one; largest: the largest (nnU-Net's post-processing); located: the one "
                        "nearest where the organ lies in the training cases (relative to the body; tells left from "
                        "right parotid), among those at least 10 %% of the largest. Default: what the model was "
                        "trained for (masked_sigmoid on a CPU plan: located; otherwise all)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _run(args, model_folders: list[Path]) -> None:
    from autoorgan.inference.predictor import load_ensemble, predict_folder
    predictor = load_ensemble(model_folders, args.f, f"checkpoint_{args.chk}.pth", args.device, args.tta,
                              args.backend)
    if args.refine_with_masks is not None:
        if predictor.output != "boxes":
            raise UserError("--refine_with_masks refines boxes: use it with a box configuration (organdetr)")
        if not Path(args.refine_with_masks).is_dir():
            raise UserError(f"--refine_with_masks {args.refine_with_masks} is not a folder (it holds one label map "
                            "CASE<file_ending> per scan)")
        predictor.refine_masks = Path(args.refine_with_masks)
    if args.components is not None:
        if predictor.output != "masks":
            raise UserError("--components is for label maps: use it with ccq, dodnet or masked_sigmoid")
        predictor.components = args.components
    if args.tta and predictor.output == "boxes" and not predictor.mirror_axes:
        print("autoorgan: --tta has no effect: the plans train without mirroring (mirror_axes empty)",
              file=sys.stderr)
    if args.tta and predictor.output == "masks" and predictor.cfg.get("lateral_axis") is None:
        print("autoorgan: --tta has no effect: the model's plans have no lateral_axis (planned before it existed, "
              "or the dataset's left/right organs lie apart along no one axis; see the plans' _why)", file=sys.stderr)
    res = predict_folder(predictor, args.i, args.o, args.continue_prediction, args.save_box_masks, args.save_png,
                         progress=not args.quiet, output_types=args.output_type,
                         dicom_reference=Path(args.dicom_reference) if args.dicom_reference else None)
    n = len(res.done) + len(res.skipped)
    used = " and ".join(f"fold(s) {', '.join(folds)} of {folder}" for folder, folds in predictor.members)
    print(f"predicted {len(res.done)} case(s)" + (f", {len(res.skipped)} already done" if res.skipped else "") +
          f" with {used} in {res.seconds:.1f} s -> {args.o}")
    if res.failed:
        print(f"autoorgan: {len(res.failed)} of {n + len(res.failed)} case(s) failed: "
              f"{', '.join(sorted(res.failed))} (reasons above and in {args.o}/prediction_info.json)",
              file=sys.stderr)
        sys.exit(1)


def build_parser() -> argparse.ArgumentParser:
    p = _parser("Predict organ boxes (organdetr) or label maps (ccq, dodnet) for a folder of scans with a model "
                "trained by autoorgan_train.")
    p.add_argument("-d", required=True, metavar="DATASET", help="dataset id or name the model was trained on")
    p.add_argument("-c", default="organdetr", metavar="CONFIG",
                   help="organdetr (boxes, default), ccq or dodnet (label maps CASE<file_ending>)")
    p.add_argument("-tr", default=None, nargs="+", metavar="TRAINER",
                   help="trainer folder name (default: the configuration's trainer, e.g. OrganDETRTrainer); several "
                        "names ensemble those model folders (e.g. one fold trained with two seeds side by side), "
                        "averaged like folds; they must share plans and dataset.json, and -f applies to each")
    p.add_argument("-p", default=None, metavar="PLANS", help="plans name (default autoorganPlans)")
    return p


@cli_entry(interrupted=INTERRUPTED)
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from autoorgan.configurations import get_configuration
    from autoorgan.planning.plans import PLANS_NAME
    from autoorgan.utils.paths import find_dataset_name, model_folder, results_root
    entry = get_configuration(args.c)
    try:
        name = find_dataset_name(args.d, results_root())
    except UserError:
        raise UserError(f"no trained models for dataset {args.d} in {results_root()} (autoorgan_results); train one "
                        f"with autoorgan_train {args.d} {args.c} FOLD") from None
    folders = [model_folder(name, trainer, args.p or PLANS_NAME, entry.plans_section)
               for trainer in (args.tr or [entry.trainer_name])]
    for folder in folders:
        if not folder.is_dir():
            others = sorted(p.name for p in (results_root() / name).glob(f"*__{entry.plans_section}")) \
                if (results_root() / name).is_dir() else []
            raise UserError(f"no trained {args.c} model in {folder}" +
                            (f" (found: {', '.join(others)}; pick one with -tr)" if others else
                             f"; train it with autoorgan_train {args.d} {args.c} FOLD"))
    _run(args, folders)


def build_parser_from_modelfolder() -> argparse.ArgumentParser:
    p = _parser("Predict with the model in a given model folder (the folder holding plans.json, dataset.json and "
                "fold_F/).")
    p.add_argument("-m", required=True, nargs="+", metavar="MODEL_DIR",
                   help="model folder; several are ensembled (averaged like folds; same plans and dataset.json)")
    return p


@cli_entry(interrupted=INTERRUPTED)
def main_from_modelfolder(argv: list[str] | None = None) -> None:
    args = build_parser_from_modelfolder().parse_args(argv)
    _run(args, [Path(m) for m in args.m])


if __name__ == "__main__":
    main()
