"""Score every component rule on one prediction: label maps predicted with ``autoorgan_predict --components all``
(or nnU-Net's exports), reduced afterwards by ``reduce_components`` (the function the predictor calls) with each
rule, each scored by ``autoorgan_evaluate``.

    python bench/components.py -d 501 -pred FOLDER -ref REFERENCES [--fold 0] [--rules all largest located]

The organ locations are measured as the trainer measures them (``organ_locations`` on the fold's training cases of
the dataset's fingerprint); the body box of each case is the fingerprint's, the box preprocessing crops to, so the
reduction equals what ``autoorgan_predict --components RULE`` writes. Reduced label maps go to ``FOLDER_<rule>``;
the mean Dice / HD95 (mm) and the per-organ Dice of each rule are printed.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", required=True, help="dataset id")
    p.add_argument("-pred", required=True, help="label maps predicted with --components all")
    p.add_argument("-ref", required=True, help="reference label maps of the same cases")
    p.add_argument("--fold", type=int, default=0, help="the fold whose training cases give the locations")
    p.add_argument("--rules", nargs="+", default=["all", "largest", "located"])
    args = p.parse_args()
    import SimpleITK as sitk

    from autoorgan.dataset.raw import foreground_labels
    from autoorgan.inference.mask_boxes import organ_locations, reduce_components
    from autoorgan.utils.paths import find_dataset_name, preprocessed_root
    pre = preprocessed_root() / find_dataset_name(args.d)
    fingerprint = json.loads((pre / "dataset_fingerprint.json").read_text())["autoorgan"]["cases"]
    train = json.loads((pre / "splits_final.json").read_text())[args.fold]["train"]
    ds = json.loads((pre / "dataset.json").read_text())
    labels = sorted(foreground_labels(ds).values())
    locations = organ_locations([(fingerprint[c]["boxes"], fingerprint[c]["body_bbox"], fingerprint[c]["spacing"])
                                 for c in train if c in fingerprint], labels)
    src = Path(args.pred)
    ending = ds["file_ending"]
    for rule in args.rules:
        dst = src.with_name(f"{src.name}_{rule}")
        dst.mkdir(exist_ok=True)
        for f in sorted(src.glob(f"*{ending}")):
            case = f.name[:-len(ending)]
            image = sitk.ReadImage(str(f))
            fp = fingerprint[case]
            out = reduce_components(sitk.GetArrayFromImage(image), labels, rule, fp["body_bbox"], fp["spacing"],
                                    locations)
            reduced = sitk.GetImageFromArray(out)
            reduced.CopyInformation(image)
            sitk.WriteImage(reduced, str(dst / f.name), useCompression=True)
        subprocess.run([str(Path(sys.executable).with_name("autoorgan_evaluate")), "-ref", args.ref, "-pred",
                        str(dst), "-d", args.d, "--quiet"], check=True, capture_output=True)
        masks = json.loads((dst / "summary.json").read_text())["masks"]
        organs = "  ".join(f"{k} {v['Dice']:.3f}" for k, v in masks["per_class"].items())
        print(f"{rule:<8} mean Dice {masks['mean_Dice']:.3f}  HD95 {masks['mean_HD95']:.1f} mm  {organs}")


if __name__ == "__main__":
    main()
