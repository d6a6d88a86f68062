"""``autoorgan_evaluate -ref REF -pred PRED -d D``: box (3D COCO) and mask (Dice, HD95) metrics."""
from __future__ import annotations

import argparse
from pathlib import Path

from autoorgan.utils.errors import OneLineArgumentParser, UserError, cli_entry


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        description="Evaluate predictions against references. Boxes (CASE_boxes.json): COCO-style 3D mAP over IoU "
                    ".50:.05:.95 (101-point), mAR, AP at .1/.5/.75, nnDetection's mAP .10:.50, per-organ AP and "
                    "centre distance in mm, one detection per organ per case. Masks (label maps): Dice and HD95 in mm "
                    "per organ. Organs a case does not annotate (partial annotation in dataset.json) are left out.",
        epilog="References are label maps CASE<file_ending> (e.g. labelsTs) or CASE_boxes.json files. "
               "See docs/prediction.md (autoorgan_evaluate).")
    p.add_argument("-ref", required=True, help="reference folder (label maps or CASE_boxes.json)")
    p.add_argument("-pred", required=True, help="prediction folder (autoorgan_predict output, or label maps)")
    p.add_argument("-d", required=True, metavar="DATASET",
                   help="dataset id or name (its dataset.json gives labels, file ending and annotated organs)")
    p.add_argument("-o", default=None, help="summary JSON (default PRED/summary.json)")
    p.add_argument("--quiet", action="store_true", help="do not print the table")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from autoorgan.evaluation.folders import evaluate_folders, format_table
    from autoorgan.utils.fileio import load_json, write_json_atomic
    from autoorgan.utils.paths import find_dataset_name, preprocessed_root, raw_root
    name = find_dataset_name(args.d)
    for root in (raw_root(), preprocessed_root()):
        if (root / name / "dataset.json").is_file():
            dataset_json = load_json(root / name / "dataset.json")
            break
    else:
        raise UserError(f"no dataset.json for {name} in {raw_root()} or {preprocessed_root()}")
    summary = evaluate_folders(Path(args.ref), Path(args.pred), dataset_json)
    out = Path(args.o) if args.o else Path(args.pred) / "summary.json"
    write_json_atomic(summary, out)
    if not args.quiet:
        print(format_table(summary))
    print(f"summary written to {out}")


if __name__ == "__main__":
    main()
