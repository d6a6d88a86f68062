"""CCQ and DoDNet trainers (installed as ``autoorgan.trainers.ccq``): patches, partial-label Dice + BCE, poly LR.

Both share everything but the network: nnU-Net patch sampling and augmentation (:mod:`autoorgan.training.patches`),
the loss taken only over the classes the patch's case annotates (``partial_dice_bce`` of
:mod:`autoorgan.losses.partial_sigmoid`),
AdamW with warm-up + poly decay; validation (label maps in the original image frame, Dice per organ over the cases
that annotate it; the final one adds HD95 in mm) goes through the predictor (trainer base).
"""
from __future__ import annotations

import numpy as np
import torch

from autoorgan.dataset.raw import annotated_labels, foreground_labels
from autoorgan.inference.mask_boxes import organ_locations
from autoorgan.losses.partial_sigmoid import deep_supervised, partial_dice_bce
from autoorgan.planning.laterality import configured_pairs, swap_labels
from autoorgan.trainers.base import TrainerBase
from autoorgan.training.patches import (
    OVERSAMPLE_FOREGROUND,
    PatchStream,
    binary_targets,
    choose_classes,
    collate_patches,
)
from autoorgan.utils.device import conv_memory_format
from autoorgan.utils.errors import UserError
from autoorgan.utils.fileio import load_json

MAX_STAGE_WIDTH = 320  # nnU-Net's cap on a 3D U-Net stage's width


def stage_widths(base: int, n_stages: int) -> list[int]:
    """``--base_width``: the stage widths base, 2 base, 4 base, ... capped at nnU-Net's 320.

    >>> stage_widths(16, 5)
    [16, 32, 64, 128, 256]
    """
    return [min(int(base) * 2 ** i, MAX_STAGE_WIDTH) for i in range(n_stages)]


class CCQTrainer(TrainerBase):
    configuration = "ccq"
    best_metric_key = "mean_Dice"
    lr_schedule = "poly"
    default_grad_clip = 12.0  # nnU-Net's
    default_lr = 3e-3  # AdamW; 2e-4 (Organ-DETR's) left OpenKBP Dice at ~0 after 400 iterations (docs/ccq.md)
    all_classes_in_training = False  # True: every patch trains all K classes (DoDNet: its per-class head is cheap)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.memory_format = conv_memory_format(self.device)
        self.label_values = sorted(foreground_labels(self.dataset_json).values())
        self.annotated = {ident: set(annotated_labels(self.dataset_json, ident)) for ident in self.train_ids}
        self.lateral_pairs = configured_pairs(self.cfg, foreground_labels(self.dataset_json))
        default = self.default_recipe()
        for k in [k for k, v in default.items() if self.opt.extra.get(k, not v) == v]:
            del self.opt.extra[k]   # an option equal to the recipe is no option (--c with or without it is the same)
        self.recipe = self.run_recipe()
        if self.recipe.get("lateral_mirror") and self.cfg.get("lateral_axis") is None:
            raise UserError("--lateral_mirror needs the plans' lateral_axis, which these plans lack (planned before "
                            "it existed, or the left/right organs lie apart along no one axis: see the plans' "
                            "_why); re-plan with autoorgan_plan_and_preprocess")
        k = self.recipe.get("classes_per_patch")
        self.classes_per_patch = None if k is None else max(1, min(int(k), len(self.label_values)))
        section = self.plans["configurations"][self.section]   # the model folder's plans: what prediction uses
        if list(self.recipe["patch_size"]) != list(self.cfg["patch_size"]):
            section["patch_size"] = self.checked_patch_size(self.recipe["patch_size"])   # the same window
        if self.recipe["base_width"] != default["base_width"]:   # the network prediction rebuilds
            arch = section["architecture"]["arch_kwargs"]
            arch["features_per_stage"] = stage_widths(self.recipe["base_width"], len(arch["features_per_stage"]))
        section.pop("keep_largest_component", None)
        section["components"] = self.components()
        section["organ_locations"] = self.organ_locations()

    def components(self) -> str:
        """Which components of each organ prediction keeps by default (``--components``; ccq, dodnet: all)."""
        return "all"

    def organ_locations(self) -> dict:
        """Where each organ lies relative to the body in this fold's training cases (the fingerprint's organ and
        body boxes, raw array frame, mm), for ``--components located``; {} without a fingerprint."""
        path = self.pre_folder / "dataset_fingerprint.json"
        if not path.is_file():
            return {}
        cases = load_json(path).get("autoorgan", {}).get("cases", {})
        return organ_locations([(cases[c]["boxes"], cases[c]["body_bbox"], cases[c]["spacing"])
                                for c in self.train_ids if c in cases], self.label_values)

    def default_recipe(self) -> dict:
        """What the command line's ``--patch_size``, ``--oversample_foreground``, ``--(no_)deep_supervision``,
        ``--(no_)lateral_mirror``, ``--base_width`` and ``--classes_per_patch`` override: ccq and dodnet train the
        planned patch and network with nnU-Net's 33 % organ-centred patches, unmirrored; ccq decodes the plans'
        ``ccq.train_classes_per_patch`` classes per patch (dodnet and masked_sigmoid all of them: no such entry)."""
        recipe = {"patch_size": [int(v) for v in self.cfg["patch_size"]],
                  "oversample_foreground": OVERSAMPLE_FOREGROUND, "deep_supervision": False,
                  "lateral_mirror": False,
                  "base_width": int(self.cfg["architecture"]["arch_kwargs"]["features_per_stage"][0])}
        planned_k = self.cfg.get("ccq", {}).get("train_classes_per_patch")
        if not self.all_classes_in_training and planned_k is not None:
            recipe["classes_per_patch"] = int(planned_k)
        return recipe

    def checked_patch_size(self, patch: list[int]) -> list[int]:
        """``--patch_size``: three sizes, each a multiple of the network's total stride on its axis."""
        strides = np.prod(np.asarray(self.cfg["architecture"]["arch_kwargs"]["strides"], np.int64), axis=0)
        patch = [int(v) for v in patch]
        if len(patch) != 3 or any(v < s or v % s for v, s in zip(patch, strides)):
            raise UserError(f"--patch_size {' '.join(map(str, patch))} does not fit the planned network: give three "
                            f"sizes, multiples of its total strides {strides.tolist()} (planned "
                            f"{self.cfg['patch_size']})")
        return patch

    def build_loss(self):
        return partial_dice_bce

    def make_training_stream(self, num_samples: int):
        return PatchStream(self.data_folder, self.train_ids, self.plans, self.section, self.dataset_json,
                           self.opt.seed, num_samples, tuple(self.cfg.get("mirror_axes", ())),
                           float(self.recipe["oversample_foreground"]),
                           self.lateral_pairs if self.recipe.get("lateral_mirror") else None)

    def run_recipe(self) -> dict:
        """The recipe this run trains: the configuration's, with the command line's options over it."""
        return {k: self.opt.extra.get(k, v) for k, v in self.default_recipe().items()}

    def default_trainer_name(self) -> str:
        """The class name, plus a suffix per option that departs from the configuration's recipe (its own folder)."""
        default, recipe = self.default_recipe(), self.run_recipe()
        name = type(self).__name__
        if recipe["oversample_foreground"] != default["oversample_foreground"]:
            name += f"_fg{round(100 * recipe['oversample_foreground'])}"
        if list(recipe["patch_size"]) != default["patch_size"]:
            name += f"_p{'x'.join(str(int(v)) for v in recipe['patch_size'])}"
        if recipe["deep_supervision"] != default["deep_supervision"]:
            name += "_ds" if recipe["deep_supervision"] else "_nods"
        if recipe.get("classes_per_patch") != default.get("classes_per_patch"):
            name += f"_k{recipe['classes_per_patch']}"
        if recipe.get("lateral_mirror") != default.get("lateral_mirror"):
            name += "_lm" if recipe["lateral_mirror"] else "_nolm"
        if recipe["base_width"] != default["base_width"]:
            name += f"_w{recipe['base_width']}"
        return name

    collate_fn = staticmethod(collate_patches)

    def compute_loss(self, batch):
        image = batch["image"].to(self.device, non_blocking=True, memory_format=self.memory_format)
        seg = batch["seg"].to(self.device)
        mirrored = batch.get("mirrored", [False] * len(batch["case_id"]))
        # a patch mirrored left-right (--lateral_mirror) annotates the partners of its case's lateral organs
        case_annotated = [swap_labels(self.annotated[c], self.lateral_pairs) if m else self.annotated[c]
                          for c, m in zip(batch["case_id"], mirrored)]
        if self.classes_per_patch is None:
            targets = binary_targets(seg, self.label_values)
            annotated = torch.tensor([[v in ann for v in self.label_values] for ann in case_annotated],
                                     device=self.device)
            if self.recipe["deep_supervision"]:   # masked_sigmoid: every decoder stage (nnU-Net's weights)
                return deep_supervised(self.loss, self.network(image, deep=True), targets, annotated)
            return self.loss(self.network(image), targets, annotated)
        chosen, flags = [], []
        for i, ann_case in enumerate(case_annotated):
            present = set(torch.unique(seg[i]).tolist())
            # a pure function of the sample: exact resume, whatever the batch composition
            rng = np.random.default_rng([self.opt.seed, int(batch["index"][i]), 1])
            prefer = batch["forced_class"][i]
            if mirrored[i] and prefer >= 0:
                prefer = next(iter(swap_labels([prefer], self.lateral_pairs)))
            idx, ann = choose_classes(self.label_values, ann_case, present, self.classes_per_patch,
                                      rng, prefer=prefer)
            chosen.append(idx)
            flags.append(ann)
        classes = torch.tensor(chosen, device=self.device)                       # [B, k] label indices
        values = torch.tensor(self.label_values, device=self.device)[classes]   # [B, k] label values
        annotated = torch.tensor(flags, device=self.device)
        return self.loss(self.network(image, classes), binary_targets(seg, values), annotated)


class DoDNetTrainer(CCQTrainer):
    """The DoDNet-style baseline of the CCQ paper's comparison (dynamic head), same data, loss and schedule."""

    configuration = "dodnet"   # on the ccq plans and preprocessed data (registry)
    all_classes_in_training = True


class MaskedSigmoidTrainer(CCQTrainer):
    """The masked-sigmoid baseline (nnU-Net's plain U-Net, one sigmoid output per class), same data and loss;
    every patch trains all of its case's annotated classes (the network computes them all anyway). Its recipe comes
    from the plans' ``masked_sigmoid`` entry (CPU plan: an organ-sized patch, every patch on an organ; see its
    ``_why``). Deep supervision: the loss also on every lower decoder stage, against nearest-downsampled targets,
    weighted 1/2^i and normalised with the lowest stage left out (nnU-Net's)."""

    configuration = "masked_sigmoid"
    all_classes_in_training = True

    def default_recipe(self) -> dict:
        """The plans' recipe; plans written before it existed: the planned patch, 33 %, deep supervision."""
        planned = self.cfg.get("masked_sigmoid", {})
        base = {**super().default_recipe(), "deep_supervision": True}
        return {k: ([int(x) for x in planned[k]] if k == "patch_size" else planned[k]) if k in planned else v
                for k, v in base.items()}

    def components(self) -> str:
        """The plans' recipe says (CPU plan: located; plans from before 'components' had a bool)."""
        planned = self.cfg.get("masked_sigmoid", {})
        return str(planned.get("components", "largest" if planned.get("keep_largest_component") else "all"))
