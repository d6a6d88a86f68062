"""Organ-DETR trainer (installed as ``autoorgan.trainers.organdetr``): whole-volume batches, Dense Query Matching
(or Hungarian, ``--matcher hungarian``), the set loss with multi-scale segmentation, validation mAP.

Configuration-specific options (``TrainOptions.extra``): ``matcher`` (``dqm`` | ``hungarian``, default from the
plans), ``seg_loss`` (bool, default True; False reproduces the paper's ablation without the multi-scale
segmentation framework). Non-default choices are appended to the trainer name (``OrganDETRTrainer_hungarian``) so
ablations land in their own results folders.
"""
from __future__ import annotations

import numpy as np

from autoorgan.dataloading import SampleStream, WholeVolumeCases, collate
from autoorgan.dataset.raw import foreground_labels
from autoorgan.errors import UserError
from autoorgan.evaluation.detection import CaseDetections, detection_metrics
from autoorgan.fileio import write_json_atomic
from autoorgan.inference.detect import detect_case
from autoorgan.inference.export import case_box_record, geometry_from_props, preprocessed_to_original
from autoorgan.losses.detection import OrganDETRLoss
from autoorgan.matching import DenseQueryMatcher, HungarianMatcher
from autoorgan.networks.organdetr import OrganDETR
from autoorgan.trainers.base import TrainerBase

MATCHERS = ("dqm", "hungarian")


class OrganDETRTrainer(TrainerBase):
    configuration = "organdetr"
    best_metric_key = "mAP"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        od = self.cfg["organdetr"]
        self.matcher_name = self.opt.extra.get("matcher") or od.get("matcher", "dqm")
        if self.matcher_name not in MATCHERS:
            raise UserError(f"unknown matcher {self.matcher_name!r}; choose {' or '.join(MATCHERS)}")
        self.opt.extra["matcher"] = self.matcher_name
        self.opt.extra.setdefault("seg_loss", True)
        self.labels = foreground_labels(self.dataset_json)  # name -> value
        self.label_values = sorted(self.labels.values())
        self.input_shape = tuple(int(v) for v in self.cfg["input_shape"])
        self.train_cases = WholeVolumeCases(self.data_folder, self.train_ids, self.input_shape, self.label_values,
                                            tuple(self.cfg.get("mirror_axes", ())))
        self.val_cases = WholeVolumeCases(self.data_folder, self.val_ids, self.input_shape, self.label_values)

    def default_trainer_name(self) -> str:
        name = type(self).__name__
        if self.opt.extra.get("matcher") and self.opt.extra["matcher"] != self.cfg["organdetr"].get("matcher", "dqm"):
            name += f"_{self.opt.extra['matcher']}"
        if self.opt.extra.get("seg_loss") is False:
            name += "_noseg"
        return name

    def build_network(self):
        return OrganDETR.from_plans(self.cfg, len(self.dataset_json["channel_names"]))

    def build_loss(self):
        od = self.cfg["organdetr"]
        w = od["loss_weights"]
        costs = dict(w_class=w["cls"], w_bbox=w["bbox_l1"], w_giou=w["giou"])
        if self.matcher_name == "dqm":
            matcher = DenseQueryMatcher(lam=od["lambda"], rho=od["rho"], **costs)
        else:
            matcher = HungarianMatcher(**costs)
        return OrganDETRLoss(matcher, w, use_seg=bool(self.opt.extra["seg_loss"]))

    def make_training_stream(self, num_samples: int):
        return SampleStream(self.train_cases, self.opt.seed, num_samples)

    collate_fn = staticmethod(collate)

    def compute_loss(self, batch):
        image = batch["image"].to(self.device, non_blocking=True)
        labels = batch["labels"].to(self.device, non_blocking=True)
        out = self.network(image)
        return self.loss(out, batch["targets"], labels)

    # ---- validation --------------------------------------------------------------------------------------------
    def predict_validation(self) -> list[tuple[str, dict, dict, tuple]]:
        """Per validation case: (id, predictions {class: (box, score)} in the preprocessed frame, properties,
        preprocessed shape)."""
        model = self.module
        was_training = model.training
        model.eval()
        out = []
        try:
            for ident in self.val_ids:
                data, _, props = self.val_cases.load(ident)
                pred = detect_case(model, data, self.input_shape, self.device)
                out.append((ident, pred, props, tuple(data.shape[1:])))
        finally:
            model.train(was_training)
        return out

    def validate(self, final: bool = False) -> dict:
        preds = self.predict_validation()
        classes = {k: name for k, name in enumerate(sorted(self.labels, key=self.labels.get))}
        cases = []
        for ident, pred, props, _ in preds:
            ao = props["autoorgan"]
            ref = {self.label_values.index(int(lab)): np.asarray(box, np.float64) for lab, box in ao["boxes"].items()}
            annotated = {self.label_values.index(int(lab)) for lab in ao["annotated_labels"]}
            cases.append(CaseDetections(ref, pred, annotated, ident))
        metrics = detection_metrics(cases, classes)
        if final:
            self.write_validation(preds, metrics)
        return metrics

    def write_validation(self, preds, metrics: dict) -> None:
        folder = self.output_folder / "validation"
        folder.mkdir(parents=True, exist_ok=True)
        names = {v: k for k, v in self.labels.items()}
        tb = self.plans["transpose_backward"]
        for ident, pred, props, shape in preds:
            organs = {self.label_values[k]: (preprocessed_to_original(box, props, shape, tb), score)
                      for k, (box, score) in pred.items()}
            write_json_atomic(case_box_record(ident, organs, names, geometry_from_props(props, tb)),
                              folder / f"{ident}_boxes.json")
        summary = {"metrics": metrics, "matcher": self.matcher_name, "checkpoint": "final",
                   "frame": "boxes compared in the preprocessed array (IoU is preserved by crop, resampling and "
                            "transpose); CASE_boxes.json files are in the original image frame",
                   "num_cases": len(preds)}
        write_json_atomic(summary, folder / "summary.json")
        self.log(f"validation: mAP {metrics['mAP']:.4f}, mAR {metrics['mAR']:.4f}, AP50 {metrics['AP50']:.4f}, "
                 f"AP75 {metrics['AP75']:.4f} -> {folder / 'summary.json'}")


