"""Organ-DETR trainer (installed as ``autoorgan.trainers.organdetr``): whole-volume batches, Dense Query Matching
(or Hungarian, ``--matcher hungarian``), the set loss with multi-scale segmentation; validation (boxes in the original
image frame, 3D COCO metrics) goes through the predictor (trainer base).

Configuration-specific options (``TrainOptions.extra``): ``matcher`` (``dqm`` | ``hungarian``, default from the
plans), ``seg_loss`` (bool, default True; False reproduces the paper's ablation without the multi-scale
segmentation framework). Non-default choices are appended to the trainer name (``OrganDETRTrainer_hungarian``) so
ablations land in their own results folders.
"""
from __future__ import annotations

from autoorgan.dataset.raw import foreground_labels
from autoorgan.losses.detection import MATCHERS, build_criterion
from autoorgan.trainers.base import TrainerBase
from autoorgan.training.whole_volume import SampleStream, WholeVolumeCases, collate
from autoorgan.utils.errors import UserError


class OrganDETRTrainer(TrainerBase):
    configuration = "organdetr"
    best_metric_key = "mAP"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.matcher_name = self.opt.extra.get("matcher") or self.planned_matcher
        if self.matcher_name not in MATCHERS:
            raise UserError(f"unknown matcher {self.matcher_name!r}; choose {' or '.join(MATCHERS)}")
        self.opt.extra["matcher"] = self.matcher_name
        self.opt.extra.setdefault("seg_loss", True)
        label_values = sorted(foreground_labels(self.dataset_json).values())
        self.input_shape = tuple(int(v) for v in self.cfg["input_shape"])
        self.train_cases = WholeVolumeCases(self.data_folder, self.train_ids, self.input_shape, label_values,
                                            tuple(self.cfg.get("mirror_axes", ())))

    @property
    def planned_matcher(self) -> str:
        return self.cfg["organdetr"].get("matcher", "dqm")

    def default_trainer_name(self) -> str:
        name = type(self).__name__
        if self.opt.extra.get("matcher") and self.opt.extra["matcher"] != self.planned_matcher:
            name += f"_{self.opt.extra['matcher']}"
        if self.opt.extra.get("seg_loss") is False:
            name += "_noseg"
        return name

    def build_loss(self):
        return build_criterion(self.cfg["organdetr"], self.matcher_name, bool(self.opt.extra["seg_loss"]))

    def make_training_stream(self, num_samples: int):
        return SampleStream(self.train_cases, self.opt.seed, num_samples)

    collate_fn = staticmethod(collate)

    def compute_loss(self, batch):
        image = batch["image"].to(self.device, non_blocking=True)
        labels = batch["labels"].to(self.device, non_blocking=True)
        return self.loss(self.network(image), batch["targets"], labels)
