"""Benchmark: ``autoorgan_predict`` (organdetr) on one synthetic 512 x 512 x 300 CT against nnU-Net v2's sliding
window with its default ``3d_fullres`` network for the same data, on this machine's CPU, in the same run.

    python bench/predict.py [--work /tmp/autoorgan_bench_predict] [--nnunet_tiles 2] [--plan_device cpu]

1. Two phantom cases are resampled onto a 512 x 512 x 300 grid of 0.8 x 0.8 x 1.5 mm (int16 HU), written as
   dataset 990, fingerprinted and planned by ``autoorgan_plan_and_preprocess -c organdetr --no_pp`` (the plan a
   user of this machine gets; ``--plan_device cuda`` for the GPU plan) and by nnU-Net's ``ExperimentPlanner``.
2. A model folder with untrained weights (timing does not depend on them) is written; ``autoorgan_predict`` runs on
   one scan as a separate process: wall time and peak RSS (``wait4``) cover reading, preprocessing, the network,
   export of boxes/Slicer markups and interpreter start-up.
3. nnU-Net: ``nnUNetPredictor.predict_sliding_window_return_logits`` (no mirroring, Gaussian weighting, step 0.5)
   on a volume holding ``--nnunet_tiles`` tiles; seconds per tile x the tile count nnU-Net's
   ``compute_steps_for_sliding_window`` gives for the whole preprocessed scan = the estimate. It leaves out
   nnU-Net's reading, preprocessing and export (so it favours nnU-Net). The ratio is printed.
4. The network is exported to ONNX (``autoorgan_export_onnx``) and step 2 runs again with ``--backend onnx``.

Targets (issue 4): >= 50x faster than nnU-Net without mirroring, < 30 s wall, < 2.5 GB peak for the whole call.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHAPE_ITK = (512, 512, 300)
SPACING_ITK = (0.8, 0.8, 1.5)
DATASET_ID = 990


def make_ct(index: int):
    """A phantom case resampled to SHAPE_ITK x SPACING_ITK (identity direction), image int16 and labels."""
    import SimpleITK as sitk

    from autoorgan.dataset.phantom import make_case
    img, seg, _ = make_case(7, index)
    centre = img.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in img.GetSize()])
    origin = [c - sp * (n - 1) / 2 for c, sp, n in zip(centre, SPACING_ITK, SHAPE_ITK)]
    out = []
    for im, interp, bg in ((img, sitk.sitkLinear, -1000), (seg, sitk.sitkNearestNeighbor, 0)):
        r = sitk.Resample(im, SHAPE_ITK, sitk.Transform(), interp, origin, SPACING_ITK, (1, 0, 0, 0, 1, 0, 0, 0, 1),
                          bg, im.GetPixelID())
        out.append(r)
    return out


def write_dataset(raw: Path) -> Path:
    import SimpleITK as sitk

    from autoorgan.dataset.phantom import LABELS
    folder = raw / f"Dataset{DATASET_ID}_BenchCT"
    if (folder / "dataset.json").is_file():
        return folder
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(exist_ok=True)
    for i in range(2):
        img, seg = make_ct(i)
        sitk.WriteImage(img, str(folder / "imagesTr" / f"ct_{i:03d}_0000.nii.gz"))
        sitk.WriteImage(seg, str(folder / "labelsTr" / f"ct_{i:03d}.nii.gz"))
    ds = {"channel_names": {"0": "CT"}, "labels": dict(LABELS),
          "numTraining": 2, "file_ending": ".nii.gz", "name": "BenchCT"}
    (folder / "dataset.json").write_text(json.dumps(ds, indent=1))
    return folder


def run_measured(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """(wall s, peak RSS GB, output) of a child process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{out[-3000:]}")
    return wall, usage.ru_maxrss * 1024 / 1e9, out


def nnunet_seconds_per_tile(pre_root: Path, dataset: str, n_tiles: int) -> tuple[float, list[int], int]:
    """nnU-Net 3d_fullres: (seconds per tile, patch size, tiles for the whole scan)."""
    import torch
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from autoorgan.utils.paths import nnunet_paths
    with nnunet_paths():
        planner = ExperimentPlanner(dataset, plans_name="nnUNetPlansBench")
        plans = planner.plan_experiment()
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    ds = json.loads((pre_root / dataset / "dataset.json").read_text())
    net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, 1, len(ds["labels"]), allow_init=True,
                                 deep_supervision=False)
    pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                           perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                           allow_tqdm=False)
    pred.manual_initialization(net, pm, cm, None, ds, "nnUNetTrainer", None)
    patch = list(cm.patch_size)
    shape_arr = [SHAPE_ITK[::-1][i] for i in pm.transpose_forward]
    spacing_arr = [SPACING_ITK[::-1][i] for i in pm.transpose_forward]
    full = compute_new_shape(shape_arr, spacing_arr, cm.spacing)
    steps = compute_steps_for_sliding_window(full, patch, 0.5)
    tiles = int(np.prod([len(s) for s in steps]))
    small = list(patch)
    small[-1] = int(patch[-1] * (1 + 0.5 * (n_tiles - 1)))  # n_tiles tiles along the last axis
    x = torch.randn(1, *small)
    with torch.no_grad():
        net(torch.randn(1, 1, *patch))  # warm-up
        t = time.perf_counter()
        pred.predict_sliding_window_return_logits(x)
        dt = time.perf_counter() - t
    got = int(np.prod([len(s) for s in compute_steps_for_sliding_window(small, patch, 0.5)]))
    return dt / got, patch, tiles


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/autoorgan_bench_predict", help="scratch folder (reused between runs)")
    p.add_argument("--nnunet_tiles", type=int, default=2, help="nnU-Net tiles actually timed (default 2)")
    p.add_argument("--plan_device", choices=("cpu", "cuda"), default="cpu", help="organdetr plan (default cpu)")
    args = p.parse_args()
    work = Path(args.work)
    roots = {k: work / k for k in ("raw", "preprocessed", "results")}
    env = dict(os.environ, **{f"autoorgan_{k}": str(v) for k, v in roots.items()})
    os.environ.update({f"autoorgan_{k}": str(v) for k, v in roots.items()})
    bin_dir = Path(sys.executable).parent
    t = time.perf_counter()
    folder = write_dataset(roots["raw"])
    name = folder.name
    plans_path = roots["preprocessed"] / name / "autoorganPlans.json"
    if not plans_path.is_file() or json.loads(plans_path.read_text())["configurations"]["organdetr"][
            "organdetr"]["planned_for"] != args.plan_device:
        subprocess.run([str(bin_dir / "autoorgan_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "organdetr",
                        "--no_pp", "-device", args.plan_device, "--quiet", "-np", "2"], env=env, check=True)
    print(f"set-up (dataset + fingerprint + plans, cached in {work}): {time.perf_counter() - t:.0f} s")
    plans = json.loads(plans_path.read_text())
    cfg = plans["configurations"]["organdetr"]
    model = roots["results"] / name / "OrganDETRTrainer__autoorganPlans__organdetr"
    shutil.rmtree(model, ignore_errors=True)
    (model / "fold_0").mkdir(parents=True)
    (model / "plans.json").write_text(json.dumps(plans))
    shutil.copy(folder / "dataset.json", model / "dataset.json")
    import torch

    from autoorgan.networks.organdetr import OrganDETR
    net = OrganDETR.from_plans(cfg, 1, cfg["organdetr"]["num_organ_classes"])
    torch.save({"network": net.state_dict()}, model / "fold_0" / "checkpoint_final.pth")
    inp = work / "input"
    inp.mkdir(exist_ok=True)
    if not (inp / "scan_0000.nii.gz").exists():
        shutil.copy(folder / "imagesTr" / "ct_000_0000.nii.gz", inp / "scan_0000.nii.gz")
    out = work / "output"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(bin_dir / "autoorgan_predict"), "-i", str(inp), "-o", str(out), "-d", str(DATASET_ID), "-f", "0",
           "-device", "cpu", "--quiet"]
    wall, rss, log = run_measured(cmd, env)
    print(f"autoorgan_predict organdetr ({args.plan_device} plan: spacing {cfg['spacing']} mm, input "
          f"{cfg['input_shape']}, {sum(v.numel() for v in net.state_dict().values()) / 1e6:.2f} M params) on "
          f"{SHAPE_ITK[0]}x{SHAPE_ITK[1]}x{SHAPE_ITK[2]} @ {SPACING_ITK} mm, whole process: {wall:.1f} s wall, "
          f"peak RSS {rss:.2f} GB")
    print("  " + log.strip().splitlines()[-1])
    t = time.perf_counter()
    subprocess.run([str(bin_dir / "autoorgan_export_onnx"), "-m", str(model), "-f", "0"], env=env, check=True,
                   capture_output=True)
    export_s = time.perf_counter() - t
    shutil.rmtree(out, ignore_errors=True)
    wall_onnx, rss_onnx, _ = run_measured(cmd + ["--backend", "onnx"], env)
    print(f"the same with --backend onnx (onnxruntime; export took {export_s:.0f} s once): {wall_onnx:.1f} s wall, "
          f"peak RSS {rss_onnx:.2f} GB (PyTorch backend: {wall:.1f} s, {rss:.2f} GB)")
    sec_tile, patch, tiles = nnunet_seconds_per_tile(roots["preprocessed"], name, args.nnunet_tiles)
    nn_total = sec_tile * tiles
    print(f"nnU-Net 3d_fullres (patch {patch}, untrained, no mirroring, step 0.5): {sec_tile:.2f} s per tile "
          f"(timed on {args.nnunet_tiles} tiles) x {tiles} tiles = {nn_total:.0f} s estimated for the sliding window "
          "alone (reading, preprocessing, export not counted)")
    print(f"ratio nnU-Net / autoorgan: {nn_total / wall:.1f}x (target >= 50x); autoorgan wall {wall:.1f} s "
          f"(target < 30 s), peak {rss:.2f} GB (target < 2.5 GB); threads: torch {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
