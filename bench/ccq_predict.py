"""Benchmark: sliding-window prediction of ``ccq`` (and ``dodnet``) on one preprocessed case against nnU-Net v2's
``nnUNetPredictor`` with the same patch size and network stages (nnU-Net's PlainConvUNet from the same plans
``arch_kwargs``), on the same case, in the same run; each in its own process so peak memory is its own.

    python bench/ccq_predict.py -d 501 [--case ID] [--configuration ccq] [--device cpu]

Untrained weights (timing does not depend on them). Prints seconds and peak RSS per method and the ratios to
nnU-Net. Needs ``autoorgan_plan_and_preprocess -d D -c ccq`` first.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def child(which: str, dataset: str, case: str | None, configuration: str, device: str) -> None:
    import numpy as np
    import torch

    from autoorgan.dataset.raw import foreground_labels
    from autoorgan.utils.paths import find_dataset_name, preprocessed_root
    name = find_dataset_name(dataset)
    pre = preprocessed_root() / name
    plans = json.loads((pre / "autoorganPlans.json").read_text())
    ds = json.loads((pre / "dataset.json").read_text())
    cfg = plans["configurations"][configuration]
    folder = pre / cfg["data_identifier"]
    case = case or sorted(p.stem for p in folder.glob("*.pkl"))[0]
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    data = np.asarray(nnUNetDatasetBlosc2(str(folder), [case]).load_case(case)[0])
    patch = [int(p) for p in cfg["patch_size"]]
    m = len(foreground_labels(ds))
    dev = torch.device(device)
    torch.manual_seed(0)
    t = time.perf_counter()
    if which in ("ccq", "dodnet"):
        from autoorgan.inference.sliding import sliding_window_probs
        from autoorgan.networks.ccq import CCQ, DoDNet
        net = (CCQ if which == "ccq" else DoDNet).from_plans(cfg, data.shape[0], m).to(dev).eval()
        out = sliding_window_probs(net, data, patch, dev, m)
    else:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
        pm = PlansManager(plans)
        cm = pm.get_configuration(configuration)
        net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                     cm.network_arch_init_kwargs_req_import, data.shape[0], m + 1, allow_init=True,
                                     deep_supervision=False)
        pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                               perform_everything_on_device=dev.type == "cuda", device=dev, verbose=False,
                               allow_tqdm=False)
        pred.manual_initialization(net, pm, cm, None, ds, "nnUNetTrainer", None)
        out = pred.predict_sliding_window_return_logits(torch.from_numpy(data))
    print(json.dumps({"seconds": time.perf_counter() - t, "case": case, "shape": list(data.shape[1:]),
                      "patch": patch, "out": list(out.shape)}))


def main() -> None:
    from predict import run_measured  # bench/predict.py: wall time and peak RSS of a child process

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", required=True)
    p.add_argument("--case", default=None)
    p.add_argument("--configuration", default="ccq")
    p.add_argument("--device", default="cpu")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.d, args.case, args.configuration, args.device)
        return
    res = {}
    for which in ("nnunet", "ccq", "dodnet"):
        cmd = [sys.executable, __file__, "-d", args.d, "--configuration", args.configuration, "--device",
               args.device, "--child", which] + (["--case", args.case] if args.case else [])
        _, peak_gb, out = run_measured(cmd, dict(os.environ))
        last = [line for line in out.splitlines() if line.startswith("{")][-1]
        res[which] = {**json.loads(last), "peak_gb": peak_gb}
        r = res[which]
        print(f"{which:7s}: {r['seconds']:.1f} s sliding window, peak RSS {r['peak_gb']:.2f} GB "
              f"(case {r['case']} {r['shape']}, patch {r['patch']})")
    for which in ("ccq", "dodnet"):
        print(f"{which} / nnU-Net: time {res[which]['seconds'] / res['nnunet']['seconds']:.2f}x, "
              f"memory {res[which]['peak_gb'] / res['nnunet']['peak_gb']:.2f}x")


if __name__ == "__main__":
    main()
