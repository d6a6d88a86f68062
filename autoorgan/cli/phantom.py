"""``autoorgan_make_phantom_dataset``: write the synthetic phantom dataset (the embedded default)."""
from __future__ import annotations

import argparse

from autoorgan.utils.errors import OneLineArgumentParser, cli_entry, positive_int
from autoorgan.utils.paths import raw_root


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        description="Write a synthetic CT-like abdominal phantom dataset (7 organs, varied geometry, some "
                    "non-identity directions and missing organs) in nnU-Net's raw layout under $autoorgan_raw. "
                    "Deterministic per --seed.")
    p.add_argument("-d", type=int, default=900, help="dataset id (default 900)")
    p.add_argument("--cases", type=positive_int, default=40, help="training cases (default 40)")
    p.add_argument("--test_cases", type=int, default=8, help="held-out cases in imagesTs/labelsTs (default 8)")
    p.add_argument("--partial", action="store_true",
                   help="split the training cases into 3 member datasets that each annotate a different subset "
                        "of organs (dataset.json 'annotated_labels')")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--spacing_scale", type=float, default=1.0,
                   help="multiply every spacing by this (>1: smaller, faster volumes; default 1)")
    p.add_argument("--name", default=None, help="dataset name (default Phantom or PhantomPartial)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset with this id")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from autoorgan.dataset.phantom import write_phantom_dataset
    folder = write_phantom_dataset(raw_root(), args.d, args.cases, args.test_cases, args.partial, args.seed,
                                   args.spacing_scale, args.name, args.overwrite, progress=not args.quiet)
    print(f"phantom dataset written to {folder}")


if __name__ == "__main__":
    main()
