"""CCQ and DoDNet trainers (installed as ``autoorgan.trainers.ccq``): patches, partial-label Dice + BCE, poly LR.

Both share everything but the network: nnU-Net patch sampling and augmentation (:mod:`autoorgan.patch_sampling`),
every class predicted for every patch and the loss taken only over the classes the patch's case annotates
(:func:`autoorgan.losses.partial_binary.partial_dice_bce`), AdamW with warm-up + poly decay, validation by
sliding-window prediction of each validation case (preprocessed grid) with Dice per organ over the cases that
annotate it; the final validation adds HD95 (mm, preprocessed spacing) and writes ``validation/summary.json``.
"""
from __future__ import annotations

import numpy as np
import torch

from autoorgan.dataset.raw import foreground_labels
from autoorgan.evaluation.segmentation import case_mask_metrics, summarize_masks
from autoorgan.fileio import write_json_atomic
from autoorgan.inference.segment import combine_classes
from autoorgan.inference.sliding import sliding_window_probs
from autoorgan.losses.partial_binary import partial_dice_bce
from autoorgan.networks.ccq import CCQ, DoDNet
from autoorgan.patch_sampling import PatchStream, binary_targets, choose_classes, collate_patches
from autoorgan.trainers.base import TrainerBase


class CCQTrainer(TrainerBase):
    configuration = "ccq"
    best_metric_key = "mean_Dice"
    lr_schedule = "poly"
    default_grad_clip = 12.0  # nnU-Net's
    network_class = CCQ
    all_classes_in_training = False  # True: every patch trains all K classes (DoDNet: its per-class head is cheap)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        labels = foreground_labels(self.dataset_json)
        self.label_values = sorted(labels.values())
        self.names = {v: k for k, v in labels.items()}
        self.patch_size = [int(p) for p in self.cfg["patch_size"]]
        ccq = self.cfg.get("ccq", {})
        self.threshold = float(ccq.get("combine_threshold", 0.5))
        k = ccq.get("train_classes_per_patch")
        self.classes_per_patch = None if (self.all_classes_in_training or k is None) else \
            max(1, min(int(k), len(self.label_values)))
        self.annotated = {}
        for ident in self.train_ids + self.val_ids:
            props = self._props(ident)
            self.annotated[ident] = set(props["autoorgan"]["annotated_labels"])

    def _props(self, ident: str) -> dict:
        import pickle
        with open(self.data_folder / f"{ident}.pkl", "rb") as fh:
            return pickle.load(fh)

    def build_network(self):
        return self.network_class.from_plans(self.cfg, len(self.dataset_json["channel_names"]),
                                             len(self.label_values))

    def build_loss(self):
        return partial_dice_bce

    def make_training_stream(self, num_samples: int):
        return PatchStream(self.data_folder, self.train_ids, self.plans, self.configuration, self.dataset_json,
                           self.opt.seed, num_samples, tuple(self.cfg.get("mirror_axes", ())))

    collate_fn = staticmethod(collate_patches)

    def compute_loss(self, batch):
        image = batch["image"].to(self.device, non_blocking=True)
        seg = batch["seg"].to(self.device)
        if self.classes_per_patch is None:
            targets = binary_targets(seg, self.label_values)
            annotated = torch.tensor([[v in self.annotated[c] for v in self.label_values] for c in batch["case_id"]],
                                     device=self.device)
            return self.loss(self.network(image), targets, annotated)
        chosen, flags = [], []
        for i, case in enumerate(batch["case_id"]):
            present = set(torch.unique(seg[i]).tolist())
            # a pure function of the sample: exact resume, whatever the batch composition
            rng = np.random.default_rng([self.opt.seed, int(batch["index"][i]), 1])
            idx, ann = choose_classes(self.label_values, self.annotated[case], present, self.classes_per_patch,
                                      rng, prefer=batch["forced_class"][i])
            chosen.append(idx)
            flags.append(ann)
        classes = torch.tensor(chosen, device=self.device)                       # [B, k] label indices
        values = torch.tensor(self.label_values, device=self.device)[classes]   # [B, k] label values
        annotated = torch.tensor(flags, device=self.device)
        return self.loss(self.network(image, classes), binary_targets(seg, values), annotated)

    # ---- validation --------------------------------------------------------------------------------------------
    def predict_case(self, data: np.ndarray) -> np.ndarray:
        probs = sliding_window_probs(self.module, data, self.patch_size, self.device, len(self.label_values))
        return combine_classes(probs, self.label_values, self.threshold)

    def validate(self, final: bool = False) -> dict:
        from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
        model = self.module
        was = model.training
        model.eval()
        ds = nnUNetDatasetBlosc2(str(self.data_folder), self.val_ids)
        spacing = self.cfg["spacing"]
        per_case = {}
        try:
            for ident in self.val_ids:
                data, seg, _, props = ds.load_case(ident)
                pred = self.predict_case(np.asarray(data))
                ref = np.asarray(seg[0])
                per_case[ident] = case_mask_metrics(ref, pred, self.label_values, spacing, self.annotated[ident],
                                                    with_hd95=final)
        finally:
            model.train(was)
        summary = summarize_masks(per_case, self.names)
        out = {"mean_Dice": summary["mean_Dice"], "mean_HD95": summary["mean_HD95"],
               "per_class": summary["per_class"]}
        if final:
            folder = self.output_folder / "validation"
            folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic({"metrics": out, "num_cases": len(per_case),
                               "frame": "preprocessed grid (planned spacing); HD95 in mm",
                               "per_case": {c: {self.names[k]: v for k, v in m.items()} for c, m in per_case.items()}},
                              folder / "summary.json")
            self.log(f"validation: mean Dice {out['mean_Dice']:.4f}, mean HD95 {out['mean_HD95']:.2f} mm -> "
                     f"{folder / 'summary.json'}")
        return out


class DoDNetTrainer(CCQTrainer):
    """The DoDNet-style baseline of the CCQ paper's comparison (dynamic head), same data, loss and schedule."""

    configuration = "ccq"   # same plans and preprocessed data as ccq
    network_class = DoDNet
    all_classes_in_training = True
