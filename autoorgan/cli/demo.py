"""``autoorgan_demo``: the README's main job on the embedded phantom dataset (reruns reuse what exists)."""
from __future__ import annotations

import argparse
import sys

from autoorgan.errors import cli_entry
from autoorgan.paths import preprocessed_root, raw_root


@cli_entry
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Run the whole pipeline on a synthetic phantom dataset: make it (if "
                                            "absent), fingerprint, plan and preprocess it. Rerunning reuses what "
                                            "exists.")
    p.add_argument("-d", type=int, default=900, help="dataset id of the phantom (default 900)")
    p.add_argument("--cases", type=int, default=40, help="training cases of a new phantom (default 40)")
    p.add_argument("-np", type=int, default=2, help="worker processes (default 2)")
    args = p.parse_args(argv)
    from autoorgan.cli import plan_and_preprocess as pp
    from autoorgan.dataset.phantom import write_phantom_dataset
    exists = raw_root().is_dir() and any(raw_root().glob(f"Dataset{args.d:03d}_*"))
    if not exists:
        folder = write_phantom_dataset(raw_root(), args.d, num_cases=args.cases)
        print(f"[1/2] phantom dataset written to {folder}")
    else:
        print(f"[1/2] phantom dataset {args.d} exists in {raw_root()}; reusing it")
    print("[2/2] fingerprint, plans, preprocessing")
    pp.main(["-d", str(args.d), "-np", str(args.np)])
    print(f"preprocessed data and plans are in {preprocessed_root()}")
    print("training not available yet: the Organ-DETR trainer (autoorgan_train) is the next milestone",
          file=sys.stderr)


if __name__ == "__main__":
    main()
