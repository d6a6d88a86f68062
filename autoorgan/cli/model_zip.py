"""``autoorgan_export_model_to_zip`` / ``autoorgan_install_model_from_zip`` (share a trained model as one file) and
``autoorgan_export_onnx`` (its networks for onnxruntime)."""
from __future__ import annotations

import argparse
from pathlib import Path

from autoorgan.utils.errors import OneLineArgumentParser, UserError, cli_entry


def build_export_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        description="Write a trained model (plans, dataset.json and the chosen folds' weights, no optimizer state) "
                    "into one zip that autoorgan_install_model_from_zip installs on another machine.",
        epilog="Give -d/-c (and -tr/-p) as for autoorgan_predict, or the model folder with -m. See docs/prediction.md.")
    add_model_arguments(p)
    p.add_argument("-o", required=True, metavar="ZIP", help="the zip file to write")
    return p


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """-d/-c/-tr/-p (as autoorgan_predict) or -m, -f, -chk: which trained model and folds."""
    p.add_argument("-d", default=None, metavar="DATASET", help="dataset id or name the model was trained on")
    p.add_argument("-c", default="organdetr", metavar="CONFIG", help="configuration (default organdetr)")
    p.add_argument("-tr", default=None, metavar="TRAINER", help="trainer folder name (default: the configuration's)")
    p.add_argument("-p", default=None, metavar="PLANS", help="plans name (default autoorganPlans)")
    p.add_argument("-m", default=None, metavar="MODEL_DIR", help="the model folder itself (instead of -d/-c)")
    p.add_argument("-f", nargs="+", default=None, metavar="FOLD", help="folds (default: every trained fold)")
    p.add_argument("-chk", default="final", choices=("final", "best", "latest"), help="checkpoint (default final)")


def model_folder_of(args: argparse.Namespace) -> Path:
    """The model folder that -m or -d/-c/-tr/-p name (it must exist)."""
    if args.m:
        folder = Path(args.m)
    elif args.d:
        from autoorgan.configurations import get_configuration
        from autoorgan.planning.plans import PLANS_NAME
        from autoorgan.utils.paths import find_dataset_name, model_folder, results_root
        entry = get_configuration(args.c)
        folder = model_folder(find_dataset_name(args.d, results_root()), args.tr or entry.trainer_name,
                              args.p or PLANS_NAME, entry.plans_section)
    else:
        raise UserError("say which model: -d DATASET [-c CONFIG] or -m MODEL_DIR")
    if not folder.is_dir():
        raise UserError(f"no trained model in {folder}; train it with autoorgan_train, or give -m MODEL_DIR")
    return folder


@cli_entry
def main_export(argv: list[str] | None = None) -> None:
    args = build_export_parser().parse_args(argv)
    from autoorgan.inference.model_zip import export_model_zip
    folder = model_folder_of(args)
    if not str(args.o).endswith(".zip"):
        raise UserError(f"-o {args.o}: the output must be a .zip file")
    manifest = export_model_zip(folder, args.f, f"checkpoint_{args.chk}.pth", Path(args.o))
    size = Path(args.o).stat().st_size / 1024 ** 2
    print(f"wrote {args.o} ({size:.1f} MB): {manifest['dataset']}/{manifest['model_folder']}, fold(s) "
          f"{', '.join(manifest['folds'])}; install it with autoorgan_install_model_from_zip {args.o}")


def build_install_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        description="Install a model zip written by autoorgan_export_model_to_zip into $autoorgan_results. Every "
                    "entry is checked before anything is written; checkpoints are read as weights only (nothing in "
                    "the zip is ever executed).",
        epilog="Then predict with autoorgan_predict -d DATASET -c CONFIG. See docs/prediction.md.")
    p.add_argument("zip", metavar="ZIP", help="the model zip")
    p.add_argument("--overwrite", action="store_true", help="replace an installed model folder of the same name")
    return p


@cli_entry
def main_install(argv: list[str] | None = None) -> None:
    args = build_install_parser().parse_args(argv)
    from autoorgan.inference.model_zip import install_model_zip
    from autoorgan.utils.paths import results_root
    if not Path(args.zip).is_file():
        raise UserError(f"{args.zip} does not exist; give the .zip written by autoorgan_export_model_to_zip")
    target = install_model_zip(Path(args.zip), results_root(), args.overwrite)
    print(f"installed {target}; predict with autoorgan_predict_from_modelfolder -m {target} -i IN -o OUT")


if __name__ == "__main__":
    main_export()


def build_onnx_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        description="Export each fold's network of a trained model to ONNX (fold_F/network.onnx, opset 20, checked "
                    "against PyTorch on a random input) for autoorgan_predict --backend onnx or deployment.",
        epilog="The network takes one fixed input: organdetr the plans' input_shape, segmentation models the "
               "plans' patch_size (all classes). See docs/prediction.md.")
    add_model_arguments(p)
    return p


@cli_entry
def main_onnx(argv: list[str] | None = None) -> None:
    args = build_onnx_parser().parse_args(argv)
    from autoorgan.inference.onnx_backend import export_onnx
    from autoorgan.inference.predictor import load_predictor
    predictor = load_predictor(model_folder_of(args), args.f, f"checkpoint_{args.chk}.pth", "cpu")
    export_onnx(predictor)
    print(f"exported fold(s) {', '.join(predictor.folds)}; predict with autoorgan_predict ... --backend onnx")
