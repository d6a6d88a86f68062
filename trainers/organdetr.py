"""Organ-DETR trainer (installed as ``autoorgan.trainers.organdetr``): whole-volume batches, Dense Query Matching
(or Hungarian, ``--matcher hungarian``), the set loss with multi-scale segmentation; validation (boxes in the original
image frame, 3D COCO metrics) goes through the predictor (trainer base).

Configuration-specific options (``TrainOptions.extra``): ``matcher`` (``dqm`` | ``hungarian``, default from the
plans), ``seg_loss`` (bool, default True; False reproduces the paper's ablation without the multi-scale
segmentation framework), ``query_anchors`` (bool, default True: queries start at the plans' organ prior boxes;
False: learned reference boxes from a random init), ``iou_head`` (bool, default True: boxes ranked by class
probability x predicted IoU; False: by class probability), ``recipe`` (``default`` | ``paper``). Non-default choices are
appended to the trainer name (``OrganDETRTrainer_hungarian``, ``OrganDETRTrainer_noanchors``,
``OrganDETRTrainer_paper``) so ablations land in their own results folders.

The default recipe (docs/training.md): exact box targets and isotropic fitting with zoom augmentation
(:mod:`autoorgan.training.whole_volume`), class-balanced cases, and 0.1x the learning rate for the parts that move
sampling locations and reference boxes (the deformable offsets and the reference-box head, which Deformable DETR
trains at 0.1x, and, our choice, the query embeddings that feed the reference boxes). ``paper`` restores the paper's
set-up: quantised targets from the augmented label map, per-axis fitting, rotation, uniform cases, one learning
rate, and the paper's heads (hidden / 4) and dropout (MSA 0.3, decoder 0.1) in place of the planned ones.
"""
from __future__ import annotations

from autoorgan.dataset.raw import foreground_labels
from autoorgan.losses.detection import MATCHERS, build_criterion
from autoorgan.trainers.base import TrainerBase
from autoorgan.training.whole_volume import RECIPES, SampleStream, WholeVolumeCases, collate
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
        self.recipe = self.opt.extra.setdefault("recipe", "default")
        if self.recipe not in RECIPES:
            raise UserError(f"unknown recipe {self.recipe!r}; choose {' or '.join(RECIPES)}")
        od = self.plans["configurations"][self.section]
        od.setdefault("organdetr", {})["fit"] = "isotropic" if self.recipe == "default" else "per_axis"
        kw = od["architecture"]["arch_kwargs"]  # changes here are copied into the model folder's plans
        if self.recipe == "paper":  # the paper's heads, dropout and learned reference boxes
            kw.update(num_heads=max(1, kw["hidden_dim"] // 4), msa_dropout=0.3, decoder_dropout=0.1)
        if self.recipe == "paper" or self.opt.extra.get("query_anchors") is False:
            kw.pop("query_anchors", None)
        if self.recipe == "paper" or self.opt.extra.get("iou_head") is False:
            kw.pop("iou_head", None)
        label_values = sorted(foreground_labels(self.dataset_json).values())
        self.input_shape = tuple(int(v) for v in self.cfg["input_shape"])
        self.train_cases = WholeVolumeCases(self.data_folder, self.train_ids, self.input_shape, label_values,
                                            tuple(self.cfg.get("mirror_axes", ())), self.recipe)
        if self.recipe == "default" and "boxes_exact" not in self.train_cases.properties(self.train_ids[0]):
            raise UserError(f"the preprocessed data in {self.data_folder} predates exact boxes; rerun "
                            f"autoorgan_plan_and_preprocess -d {self.dataset_name} -c organdetr (or train with "
                            "--recipe paper)")

    @property
    def planned_matcher(self) -> str:
        return self.cfg["organdetr"].get("matcher", "dqm")

    def default_trainer_name(self) -> str:
        name = type(self).__name__
        if self.opt.extra.get("matcher") and self.opt.extra["matcher"] != self.planned_matcher:
            name += f"_{self.opt.extra['matcher']}"
        if self.opt.extra.get("seg_loss") is False:
            name += "_noseg"
        if self.opt.extra.get("query_anchors") is False:
            name += "_noanchors"
        if self.opt.extra.get("iou_head") is False:
            name += "_noiou"
        if self.opt.extra.get("recipe", "default") != "default":
            name += f"_{self.opt.extra['recipe']}"
        return name

    def param_groups(self, net) -> list[dict]:
        """Default recipe: 0.1x the learning rate for the sampling offsets, the reference-box head and the query
        embeddings; the paper recipe: one group."""
        if self.recipe == "paper":
            return super().param_groups(net)
        slow = ("cross_attn.offsets", "decoder.ref_head", "decoder.query_embed")
        named = list(net.named_parameters())
        return [{"params": [p for n, p in named if not any(s in n for s in slow)]},
                {"params": [p for n, p in named if any(s in n for s in slow)], "lr": self.opt.lr * 0.1}]

    def build_loss(self):
        return build_criterion(self.cfg["organdetr"], self.matcher_name, bool(self.opt.extra["seg_loss"]))

    def make_training_stream(self, num_samples: int):
        return SampleStream(self.train_cases, self.opt.seed, num_samples)

    collate_fn = staticmethod(collate)

    def compute_loss(self, batch):
        image = batch["image"].to(self.device, non_blocking=True)
        labels = batch["labels"].to(self.device, non_blocking=True)
        return self.loss(self.network(image), batch["targets"], labels)
