"""``autoorgan_convert_MSD_dataset`` and ``autoorgan_convert_contoured_json``."""
from __future__ import annotations

import argparse

from autoorgan.utils.errors import OneLineArgumentParser, cli_entry, positive_int
from autoorgan.utils.paths import raw_root


def build_parser_msd() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(description="Convert a Medical Segmentation Decathlon task folder (TaskXX_Name) "
                                            "into nnU-Net v2's raw layout under $autoorgan_raw (uses nnunetv2's "
                                            "converter; 4D images are split into _XXXX channel files).")
    p.add_argument("-i", required=True, help="the MSD task folder, e.g. Task04_Hippocampus")
    p.add_argument("-d", type=int, default=None, help="dataset id (default: the task number)")
    p.add_argument("-np", type=positive_int, default=2, help="worker processes (default 2)")
    return p


@cli_entry
def main_msd(argv: list[str] | None = None) -> None:
    args = build_parser_msd().parse_args(argv)
    from autoorgan.dataset.convert import convert_msd
    print(f"converted to {convert_msd(args.i, raw_root(), args.d, args.np)}")


def build_parser_contoured() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(description="Record which organs were annotated in which case (partial "
                                            "annotation) from a {\"contoured\": {case: [organ, ...]}} file, as "
                                            "dataset.json's 'annotated_labels' key. A dataset outside "
                                            "$autoorgan_raw is linked into it (images are not copied).")
    p.add_argument("-i", required=True, help="dataset folder, e.g. ../shared/data/Dataset501_OpenKBP")
    p.add_argument("-j", default=None, help="the per-case organ list (default: contoured.json in the dataset)")
    p.add_argument("-d", type=int, default=None, help="dataset id of the linked copy (default: the source's)")
    return p


@cli_entry
def main_contoured(argv: list[str] | None = None) -> None:
    args = build_parser_contoured().parse_args(argv)
    from autoorgan.dataset.convert import add_contoured_labels
    print(f"annotated_labels written for {add_contoured_labels(args.i, raw_root(), args.j, args.d)}")


if __name__ == "__main__":
    main_msd()
