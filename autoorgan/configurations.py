"""The configurations autoorgan can plan, train and predict with: one registry, asked by every command.

A configuration is what a user names on the command line (``autoorgan_train 3 organdetr 0``). Each one says which
section of the plans it trains on (``dodnet`` trains on the ``ccq`` plans, as the CCQ paper compares them on the same
data), which planner writes that section, which trainer and network it uses and what its predictions are (boxes or
label maps). Classes are named as ``module:attribute`` strings and imported on first use, so asking the registry
costs no import of torch or nnunetv2.

Model folders follow nnU-Net: ``<Trainer>__<plans name>__<plans section>``; the trainer writes the network it built
into the model folder's ``plans.json`` (``architecture.network_class_name``) and the predictor builds that network,
looked up in :data:`NETWORKS` (an allow-list: a plans file never names code to import).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from autoorgan.utils.errors import UserError


@dataclass(frozen=True)
class Configuration:
    name: str          # what users type (-c / the train command's second argument)
    plans_section: str  # the section of autoorganPlans.json it trains on
    trainer: str       # "module:Class" of the trainer
    network: str       # key of NETWORKS
    output: str        # "boxes" (CASE_boxes.json) or "masks" (label maps CASE<file_ending>)
    description: str

    @property
    def trainer_name(self) -> str:
        """Default trainer part of the model folder name."""
        return self.trainer.split(":")[1]

    def trainer_class(self) -> Any:
        return load_class(self.trainer)

    def predictor_class(self) -> Any:
        return load_class(PREDICTORS[self.output])


CONFIGURATIONS: dict[str, Configuration] = {c.name: c for c in (
    Configuration("organdetr", "organdetr", "autoorgan.trainers.organdetr:OrganDETRTrainer",
                  "autoorgan.networks.organdetr.OrganDETR", "boxes",
                  "Organ-DETR: whole-volume organ detection (boxes)"),
    Configuration("ccq", "ccq", "autoorgan.trainers.ccq:CCQTrainer", "autoorgan.networks.ccq.CCQ", "masks",
                  "CCQ: partially labeled multi-organ segmentation with class-conditioned queries"),
    Configuration("dodnet", "ccq", "autoorgan.trainers.ccq:DoDNetTrainer", "autoorgan.networks.ccq.DoDNet", "masks",
                  "DoDNet baseline of the CCQ paper (dynamic head), on the ccq plans"),
    Configuration("masked_sigmoid", "ccq", "autoorgan.trainers.ccq:MaskedSigmoidTrainer",
                  "autoorgan.networks.unet.SigmoidUNet", "masks",
                  "masked-sigmoid baseline (MultiTalent-style): nnU-Net's plain U-Net, one sigmoid output per class, "
                  "the loss only on annotated classes; on the ccq plans"),
)}

# plans sections and the planner that writes each (plans written by autoorgan_plan_experiment -c SECTION)
PLANNERS = {"organdetr": "autoorgan.planners.organdetr_planner:OrganDETRPlanner",
            "ccq": "autoorgan.planners.ccq_planner:CCQPlanner"}
PLANS_SECTIONS = tuple(PLANNERS)

PREDICTORS = {"boxes": "autoorgan.inference.predictor:OrganDETRPredictor",
              "masks": "autoorgan.inference.predictor:SegmentationPredictor"}

# every network a plans file may name (architecture.network_class_name) -> "module:Class"
NETWORKS = {"autoorgan.networks.organdetr.OrganDETR": "autoorgan.networks.organdetr:OrganDETR",
            "autoorgan.networks.ccq.CCQ": "autoorgan.networks.ccq:CCQ",
            "autoorgan.networks.ccq.DoDNet": "autoorgan.networks.ccq:DoDNet",
            "autoorgan.networks.unet.SigmoidUNet": "autoorgan.networks.unet:SigmoidUNet"}


def load_class(spec: str) -> Any:
    """``"module:Class"`` -> the class (imported now)."""
    module, attr = spec.split(":")
    return getattr(importlib.import_module(module), attr)


def get_configuration(name: str) -> Configuration:
    """The registered configuration ``name``; a one-line UserError listing the choices otherwise."""
    if name not in CONFIGURATIONS:
        raise UserError(f"no configuration {name!r}; choose one of {', '.join(CONFIGURATIONS)}")
    return CONFIGURATIONS[name]


def configurations_of_section(section: str) -> list[Configuration]:
    return [c for c in CONFIGURATIONS.values() if c.plans_section == section]


def network_class(name: str) -> Any:
    """The network class a plans file names (``architecture.network_class_name``); only registered networks."""
    if name not in NETWORKS:
        raise UserError(f"the plans name the network {name!r}, which autoorgan does not provide "
                        f"({', '.join(NETWORKS)}); were they written by another program or edited?")
    return load_class(NETWORKS[name])
