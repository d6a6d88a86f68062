"""``autoorgan_merge_datasets -d 901 902 903 -o 910``: one partially annotated dataset from several."""
from __future__ import annotations

import argparse

from autoorgan.utils.errors import OneLineArgumentParser, UserError, cli_entry


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        description="Merge raw datasets (each labelling some organs) into one partially annotated dataset for "
                    "autoorgan_train ... ccq. Images are not copied (dataset.json's 'dataset' key points at them); "
                    "organs are matched by label name; label maps whose values change are rewritten.",
        epilog="Case ids become SOURCE_CASE. See docs/dataset_format.md (partial annotation).")
    p.add_argument("-d", nargs="+", required=True, metavar="ID", help="source dataset ids or names (two or more)")
    p.add_argument("-o", required=True, metavar="ID", help="id of the merged dataset, e.g. 910")
    p.add_argument("--name", default="Merged", help="name of the merged dataset (default Merged)")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from autoorgan.dataset.merge import merge_datasets
    from autoorgan.utils.paths import dataset_folder_name, find_dataset_name, parse_dataset_id, raw_root
    if len(args.d) < 2:
        raise UserError("give at least two datasets to merge (-d 901 902)")
    sources = [raw_root() / find_dataset_name(d) for d in args.d]
    target = raw_root() / dataset_folder_name(parse_dataset_id(args.o), args.name)
    if any(raw_root().glob(f"Dataset{parse_dataset_id(args.o):03d}_*")):
        raise UserError(f"dataset id {args.o} is taken in {raw_root()}; choose another -o")
    out = merge_datasets(sources, target, args.name)
    print(f"merged {len(sources)} datasets into {out}; next: autoorgan_plan_and_preprocess -d {args.o}")


if __name__ == "__main__":
    main()
