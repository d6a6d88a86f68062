"""Why does a segmentation model (ccq, dodnet, masked_sigmoid) not learn a class? Diagnostics on a trained fold.

    python bench/seg_diagnostics.py MODEL_FOLDER [--fold 0] [--checkpoint checkpoint_final.pth] [--batches 12]

On training patches drawn as in training (nnU-Net's loader, class-aware oversampling, augmentation) it prints, per
class, the mean predicted probability inside the organ and outside it (patches where the organ is present and
annotated), and the root-mean-square gradient norm of the partial Dice + BCE loss per top-level module (for CCQ:
the transformers, class tokens, gate, query-to-grid map, decoder, head). A branch whose gradients are orders of
magnitude below the decoder's is not being trained. Reads ``$autoorgan_preprocessed`` (the model's dataset).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_folder")
    p.add_argument("--fold", default="0")
    p.add_argument("--checkpoint", default="checkpoint_final.pth")
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(1)

    from autoorgan.configurations import network_class
    from autoorgan.dataset.raw import annotated_labels, foreground_labels
    from autoorgan.losses.partial_sigmoid import partial_dice_bce
    from autoorgan.training.patches import PatchStream, binary_targets, collate_patches
    from autoorgan.utils.checkpoints import load_checkpoint
    from autoorgan.utils.paths import preprocessed_root
    folder = Path(args.model_folder)
    plans = json.loads((folder / "plans.json").read_text())
    ds = json.loads((folder / "dataset.json").read_text())
    section = "ccq"
    cfg = plans["configurations"][section]
    labels = sorted(foreground_labels(ds).values())
    net = network_class(cfg["architecture"]["network_class_name"]).from_plans(cfg, len(ds["channel_names"]),
                                                                               len(labels))
    ck = load_checkpoint(folder / f"fold_{args.fold}" / args.checkpoint, "check the model folder")
    net.load_state_dict(ck["network"])
    net.train()
    data = preprocessed_root() / plans["dataset_name"] / cfg["data_identifier"]
    ids = sorted(f.stem for f in data.glob("*.pkl"))
    stream = PatchStream(data, ids, plans, section, ds, args.seed, 2 * args.batches)
    inside, outside, count = np.zeros(len(labels)), np.zeros(len(labels)), np.zeros(len(labels))
    grads: dict[str, float] = {}
    for i in range(args.batches):
        batch = collate_patches([stream[2 * i], stream[2 * i + 1]])
        target = binary_targets(batch["seg"], labels)                                  # [B, K, ...]
        annotated = torch.tensor([[v in set(annotated_labels(ds, c)) for v in labels] for c in batch["case_id"]])
        net.zero_grad()
        logits = net(batch["image"])                                                   # [B, K, ...], all classes
        loss, _ = partial_dice_bce(logits, target, annotated)
        loss.backward()
        for name, prm in net.named_parameters():
            if prm.grad is not None:
                parts = name.split(".")
                key = ".".join(parts[:2]) if parts[0] in ("unet", "head") and len(parts) > 2 else parts[0]
                grads[key] = grads.get(key, 0.0) + float(prm.grad.norm()) ** 2
        with torch.no_grad():
            prob = torch.sigmoid(logits)
            for b in range(prob.shape[0]):
                for k in range(len(labels)):
                    t = target[b, k] > 0
                    if annotated[b, k] and t.any():
                        inside[k] += float(prob[b, k][t].mean())
                        outside[k] += float(prob[b, k][~t].mean())
                        count[k] += 1
    names = {v: k for k, v in foreground_labels(ds).items()}
    print(f"{folder.name} fold {args.fold} ({args.checkpoint}), {args.batches} batches of 2 training patches")
    print("class: mean probability inside the organ / outside (patches where it is present and annotated)")
    for k, lab in enumerate(labels):
        n = max(count[k], 1)
        print(f"  {names[lab]:<16} {inside[k] / n:.3f} / {outside[k] / n:.3f}   ({int(count[k])} patches)")
    print("RMS gradient norm per module:")
    for key, value in sorted(grads.items(), key=lambda kv: -kv[1]):
        print(f"  {key:<20} {np.sqrt(value / args.batches):.3g}")


if __name__ == "__main__":
    main()
