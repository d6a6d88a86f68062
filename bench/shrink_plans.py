"""Shrink a configuration of an autoorgan plans file for CPU experiments (patch, widths, batch), in place.

    python bench/shrink_plans.py PLANS.json -c ccq --patch 64 64 48 --features 8 16 32 64 128 --batch 2 \
        [--train_classes_per_patch 2]

Used for the OpenKBP ccq / dodnet / nnU-Net comparison on 2 CPU cores (issue 5): all three then train the same
network size on the same patches. The stages' strides and kernel sizes are kept; only their number must match
``--features``. The original file is kept as PLANS.json.orig.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("plans")
    p.add_argument("-c", default="ccq")
    p.add_argument("--patch", nargs=3, type=int, required=True)
    p.add_argument("--features", nargs="+", type=int, required=True)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--train_classes_per_patch", type=int, default=None,
                   help="ccq: classes decoded per training patch (plans made before this setting train all)")
    args = p.parse_args()
    path = Path(args.plans)
    if not Path(f"{path}.orig").exists():
        shutil.copy(path, f"{path}.orig")
    plans = json.loads(Path(f"{path}.orig").read_text())  # always from the planner's file
    cfg = plans["configurations"][args.c]
    arch = cfg["architecture"]["arch_kwargs"]
    if len(args.features) != arch["n_stages"]:
        raise SystemExit(f"--features needs {arch['n_stages']} numbers (one per stage)")
    arch["features_per_stage"] = args.features
    cfg["patch_size"] = args.patch
    cfg["batch_size"] = args.batch
    if args.train_classes_per_patch is not None:
        cfg.setdefault("ccq", {})["train_classes_per_patch"] = args.train_classes_per_patch
    cfg.setdefault("_why", {})["patch_size"] = f"shrunk for CPU by bench/shrink_plans.py to {args.patch}"
    path.write_text(json.dumps(plans, indent=1))
    print(f"{path}: {args.c} patch {args.patch}, features {args.features}, batch {args.batch}")


if __name__ == "__main__":
    main()
