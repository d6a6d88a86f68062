"""Benchmark: one training step of the segmentation configurations (masked_sigmoid, ccq, dodnet) in PyTorch's default
layout and in the channels-last layout the trainers use (``autoorgan.utils.device.conv_memory_format``).

A step is what the trainer does per batch: forward (all classes; ccq: ``train_classes_per_patch`` classes per
patch), the partial-label Dice + BCE (masked_sigmoid: with deep supervision when its recipe says so), backward,
gradient clipping, AdamW. Inputs are synthetic (random intensities and organs) with the plans' batch size and the
recipe's patch (masked_sigmoid: its ``masked_sigmoid.patch_size``; others: the planned patch or ``--patch_size``).

    python bench/seg_step.py [--plans PATH/autoorganPlans.json] [--configurations masked_sigmoid ccq dodnet]
                             [--patch_size 48 48 32] [--iters 10] [--threads 1] [--device cpu]

Default plans: $autoorgan_preprocessed/Dataset501_OpenKBP/autoorganPlans.json. Run it alone: two processes with
OpenMP threads on 2 cores slow each other down.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch


def time_steps(name: str, cfg: dict, patch: list[int], layout: torch.memory_format, device: torch.device,
               iters: int) -> float:
    """Median seconds per training step of configuration ``name`` with the network and input in ``layout``."""
    from autoorgan.configurations import get_configuration, network_class
    from autoorgan.losses.partial_sigmoid import deep_supervised, partial_dice_bce
    classes = cfg["ccq"]["classes"]
    torch.manual_seed(0)
    net = network_class(get_configuration(name).network).from_plans(cfg, 1, len(classes)).to(device)
    net = net.to(memory_format=layout)
    b = int(cfg["batch_size"])
    image = torch.randn(b, 1, *patch, device=device).to(memory_format=layout)
    per_patch = len(classes) if name != "ccq" else int(cfg["ccq"].get("train_classes_per_patch") or len(classes))
    targets = (torch.rand(b, per_patch, *patch, device=device) > 0.9).float()
    annotated = torch.ones(b, per_patch, dtype=torch.bool, device=device)
    chosen = torch.arange(per_patch, device=device).expand(b, -1) if name == "ccq" else None
    deep = name == "masked_sigmoid" and cfg.get("masked_sigmoid", {}).get("deep_supervision", True)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if deep:
            loss, _ = deep_supervised(partial_dice_bce, net(image, deep=True), targets, annotated)
        else:
            loss, _ = partial_dice_bce(net(image, chosen), targets, annotated)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        step()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    from autoorgan.utils.device import conv_memory_format
    from autoorgan.utils.fileio import load_json
    from autoorgan.utils.paths import preprocessed_root

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--plans", type=Path, default=None)
    p.add_argument("--configurations", nargs="+", default=["masked_sigmoid", "ccq", "dodnet"])
    p.add_argument("--patch_size", type=int, nargs=3, default=None)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    path = args.plans or preprocessed_root() / "Dataset501_OpenKBP" / "autoorganPlans.json"
    if not path.is_file():
        sys.exit(f"no plans at {path}: plan a dataset with autoorgan_plan_and_preprocess -c ccq, or pass --plans")
    cfg = load_json(path)["configurations"]["ccq"]
    device = torch.device(args.device)
    print(f"plans: {path}; device {device}, {torch.get_num_threads()} thread(s), batch {cfg['batch_size']}")
    for name in args.configurations:
        planned = cfg.get("masked_sigmoid", {}).get("patch_size") if name == "masked_sigmoid" else None
        patch = [int(v) for v in (args.patch_size or planned or cfg["patch_size"])]
        default = time_steps(name, cfg, patch, torch.contiguous_format, device, args.iters)
        fast = time_steps(name, cfg, patch, conv_memory_format(device), device, args.iters)
        print(f"{name:15s} patch {'x'.join(map(str, patch))}: {default:.3f} s/step default layout, {fast:.3f} s/step "
              f"trainer's layout ({conv_memory_format(device)}), x{default / fast:.2f}")


if __name__ == "__main__":
    main()
