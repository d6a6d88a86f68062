"""Benchmark: one Organ-DETR training step (forward, set loss with DQM, backward, AdamW) for a dataset's plan.

Prints seconds per iteration, peak memory, FLOPs per iteration (torch.utils.flop_counter) and the model FLOP
utilization: achieved FLOP/s divided by this machine's fp32 matmul peak measured in the same run (a 2048^3 matmul
with all threads). Then a profile of where the time goes (torch.profiler, top operators by self CPU time).

    python bench/train_step.py [--plans PATH/autoorganPlans.json] [--iters 10] [--device cpu]

Default plans: $autoorgan_preprocessed/Dataset501_OpenKBP/autoorganPlans.json (run
``autoorgan_convert_contoured_json -i ../shared/data/Dataset501_OpenKBP`` and
``autoorgan_plan_and_preprocess -d 501 -device cpu --no_pp`` first). Inputs are synthetic (random intensities,
cuboid organs at random places) with the plan's input shape and batch size: the step does not depend on data.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch


def matmul_peak_flops(device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * repeats / (time.perf_counter() - t)


def synthetic_batch(cfg: dict, batch: int, channels: int, num_classes: int, seed: int = 0):
    from autoorgan.boxes import voxel_to_normalized
    rng = np.random.default_rng(seed)
    shape = tuple(cfg["input_shape"])
    image = torch.from_numpy(rng.normal(size=(batch, channels, *shape)).astype(np.float32))
    labels = torch.zeros(batch, *shape, dtype=torch.long)
    targets = []
    for b in range(batch):
        boxes, classes = [], []
        for k in range(num_classes):
            size = rng.integers(2, np.maximum(3, np.asarray(shape) // 3))
            lo = rng.integers(0, np.asarray(shape) - size)
            labels[b, lo[0]:lo[0] + size[0], lo[1]:lo[1] + size[1], lo[2]:lo[2] + size[2]] = k + 1
            boxes.append([*lo, *(lo + size)])
            classes.append(k)
        targets.append({"labels": torch.tensor(classes), "annotated": torch.ones(num_classes, dtype=torch.bool),
                        "boxes": torch.as_tensor(voxel_to_normalized(np.asarray(boxes, float), shape),
                                                 dtype=torch.float32)})
    return image, labels, targets


def main() -> None:
    from autoorgan.losses.detection import build_criterion
    from autoorgan.networks.organdetr import OrganDETR
    from autoorgan.utils.fileio import load_json
    from autoorgan.utils.paths import preprocessed_root

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--plans", type=Path, default=None)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no_profile", action="store_true")
    args = p.parse_args()
    path = args.plans or preprocessed_root() / "Dataset501_OpenKBP" / "autoorganPlans.json"
    if not path.is_file():
        sys.exit(f"no plans at {path}: plan OpenKBP first (see this script's docstring) or pass --plans")
    plans = load_json(path)
    cfg = plans["configurations"]["organdetr"]
    od = cfg["organdetr"]
    device = torch.device(args.device)
    channels = len(load_json(path.parent / "dataset.json")["channel_names"]) if \
        (path.parent / "dataset.json").is_file() else 1
    torch.manual_seed(0)
    model = OrganDETR.from_plans(cfg, channels, od["num_organ_classes"]).to(device)
    loss_fn = build_criterion(od, od.get("matcher", "dqm"))  # the trainer's loss, from the plans
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    image, labels, targets = synthetic_batch(cfg, cfg["batch_size"], channels, od["num_organ_classes"])
    image, labels = image.to(device), labels.to(device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss, _ = loss_fn(model(image), targets, labels)
        loss.backward()
        opt.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        step()
    sync()
    times = []
    for _ in range(args.iters):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    sec = statistics.median(times)
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    peak = matmul_peak_flops(device)
    if device.type == "cuda":
        mem = f"{torch.cuda.max_memory_allocated() / 2 ** 30:.2f} GiB GPU (max allocated)"
    else:
        mem = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f} GiB (max RSS of this process)"
    print(f"plans: {path}")
    print(f"input {cfg['input_shape']} x batch {cfg['batch_size']}, {od['num_queries']} queries, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, device {device}, "
          f"{torch.get_num_threads()} threads")
    print(f"seconds per iteration (median of {args.iters}): {sec:.3f}")
    print(f"peak memory: {mem}")
    print(f"FLOPs per iteration: {flops / 1e9:.2f} GFLOP -> {flops / sec / 1e9:.2f} GFLOP/s")
    print(f"fp32 matmul peak measured now: {peak / 1e9:.1f} GFLOP/s")
    print(f"model FLOP utilization: {flops / sec / peak:.1%} (target >= 20% on CPU)")
    if not args.no_profile:
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            for _ in range(3):
                step()
            sync()
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=15))


if __name__ == "__main__":
    main()
