"""Planner of the ``organdetr`` configuration (whole-volume 3D organ detection, Organ-DETR paper).

Organ-DETR sees the whole body-cropped volume at once, so instead of a patch size we plan one fixed input shape:

1. Start from nnU-Net's 3d_fullres target spacing.
2. The input must hold the median body extent (mm). If that does not fit the voxel budget given by the memory
   target, coarsen the spacing (finest axes first, as nnU-Net does for 3d_lowres) until it does.
3. Round the shape up to a multiple of the backbone's total stride.

Each query starts at an organ: query ``i`` is anchored at the prior box of organ class ``i mod M`` (the median box of
that organ over the fingerprinted cases, in the network input as inference fits a case), so every organ has ``rho``
queries that start where it usually lies instead of reference boxes from a random init (``query_anchors``).

Queries follow Dense Query Matching: M = number of organ classes, N = rho * M queries, and lambda chosen so that
eta = ceil(lambda * rho) lies in [1, 5] (paper: lambda = 0.2, rho = 10, so eta = 2). Every number is written with
its reason in ``_why``.
"""
from __future__ import annotations

import numpy as np

from autoorgan.dataset.raw import foreground_labels
from autoorgan.matching.dqm import dqm_eta
from autoorgan.planners.base import AutoOrganPlannerBase
from autoorgan.preprocessing.fit import plan_fit
from autoorgan.utils.errors import UserError

PAPER_RHO, PAPER_LAMBDA = 10, 0.2
ETA_RANGE = (1, 5)
BACKBONE_STRIDE = 16          # 4 downsamplings; MSA uses the levels at strides 4, 8 and 16
BYTES_PER_VOXEL_PER_WIDTH = 60  # training memory per input voxel and per backbone base width (empirical budget)
CPU_MEMORY_TARGET_GB = 0.25
COARSEN_FACTOR = 1.03
HEAD_DIM = 16  # channels per attention head (the paper's code: hidden / 4 = 4 channels per head on the CPU plan)


def choose_lambda(rho: int, lambda_match: float | None = None) -> tuple[float, int, str]:
    """lambda, eta = ceil(lambda * rho) and the reason. A given lambda must give eta in [1, 5]."""
    if rho < 2:
        raise UserError(f"rho must be at least 2 (queries per organ); got {rho}")
    if lambda_match is not None:
        eta = dqm_eta(lambda_match, rho)
        if not ETA_RANGE[0] <= eta <= ETA_RANGE[1]:
            raise UserError(f"lambda {lambda_match} with rho {rho} gives eta = ceil(lambda*rho) = {eta}, outside "
                            f"[1, 5] (the paper's rule of thumb); choose lambda in (0, {5 / rho:.3g}]")
        return lambda_match, eta, "given on the command line"
    lam = PAPER_LAMBDA
    eta = dqm_eta(lam, rho)
    if eta > ETA_RANGE[1]:
        lam, why = ETA_RANGE[1] / rho, f"paper's 0.2 would give eta > 5 with rho {rho}; lowered to 5/rho"
    elif eta < ETA_RANGE[0]:
        lam, why = ETA_RANGE[0] / rho, f"paper's 0.2 would give eta < 1 with rho {rho}; raised to 1/rho"
    else:
        why = "paper default (lambda = 0.2)"
    return lam, dqm_eta(lam, rho), why


def organ_anchor_boxes(autoorgan_fingerprint: dict, label_values: list[int], transpose_forward: list[int],
                       spacing: np.ndarray, input_shape: np.ndarray) -> tuple[list[list[float]], list[int]]:
    """Prior box of every organ class in the network input: ``[M, 6]`` normalized ``[c0, c1, c2, s0, s1, s2]``
    (array axes after ``transpose_forward``, fractions of ``input_shape``), the per-coordinate median over the
    fingerprinted cases that contain the organ, each case placed as inference places it (body crop at ``spacing``,
    scaled by one factor to fit if larger, centred). An organ present in no case gets the centre and size 0.2.
    Also returns the number of cases behind each prior."""
    tf = list(transpose_forward)
    target = np.asarray(input_shape, np.float64)
    per_class: list[list[np.ndarray]] = [[] for _ in label_values]
    for case in autoorgan_fingerprint["cases"].values():
        body = np.asarray(case["body_bbox"], np.float64)
        sp = np.asarray(case["spacing"], np.float64)
        extent_mm = ((body[3:] - body[:3]) * sp)[tf]
        _, fit = plan_fit(np.maximum(np.round(extent_mm / spacing), 1).astype(int), target.astype(int))
        for k, value in enumerate(label_values):
            box = case["boxes"].get(str(value))
            if box is None:
                continue
            mm = (np.asarray(box, np.float64) - np.tile(body[:3], 2)) * np.tile(sp, 2)
            b = fit.box_to_input(np.concatenate([mm[:3][tf], mm[3:][tf]]) / np.tile(spacing, 2))
            lo, hi = b[:3], b[3:]
            per_class[k].append(np.concatenate([(lo + hi) / 2, hi - lo]) / np.tile(target, 2))
    out = []
    for boxes in per_class:
        prior = np.median(np.stack(boxes), 0) if boxes else np.asarray([0.5, 0.5, 0.5, 0.2, 0.2, 0.2])
        out.append(np.clip(prior, 1e-3, 1 - 1e-3).round(4).tolist())
    return out, [len(b) for b in per_class]


class OrganDETRPlanner(AutoOrganPlannerBase):
    configuration_name = "organdetr"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rho = int(self.options.get("rho", PAPER_RHO))
        self.lambda_match = self.options.get("lambda_match")
        self.memory_gb = float(self.UNet_vram_target_GB if self.device == "cuda" else
                               self.options.get("cpu_memory_target_in_gb", CPU_MEMORY_TARGET_GB))

    def fit_input_shape(self, spacing: np.ndarray, extent_mm: np.ndarray, voxel_budget: float
                        ) -> tuple[np.ndarray, np.ndarray, int]:
        """Coarsen ``spacing`` until the extent, rounded up to the stride, fits ``voxel_budget``.
        Returns (spacing, shape, number of coarsening steps)."""
        spacing = spacing.astype(np.float64).copy()
        steps = 0
        while True:
            shape = np.ceil(extent_mm / spacing / BACKBONE_STRIDE).astype(int) * BACKBONE_STRIDE
            shape = np.maximum(shape, 2 * BACKBONE_STRIDE)
            if np.prod(shape, dtype=np.float64) <= voxel_budget or steps > 500:
                return spacing, shape, steps
            fine = spacing < spacing.max() / 2
            spacing[fine if fine.any() else slice(None)] *= COARSEN_FACTOR
            steps += 1

    def plan_configuration(self, data_identifier: str) -> dict:
        fp = self.autoorgan_fingerprint
        transpose_forward, _ = self.determine_transpose()
        fullres = self.fullres_spacing_transposed()
        extent_mm = np.asarray(fp["body_extent_mm"]["median"], dtype=np.float64)[transpose_forward]
        on_gpu = self.device == "cuda"
        base_width = 32 if on_gpu else 16
        batch_size = 2
        budget = self.memory_gb * 1e9 / (batch_size * base_width * BYTES_PER_VOXEL_PER_WIDTH)
        spacing, shape, steps = self.fit_input_shape(fullres, extent_mm, budget)
        hidden = 256 if on_gpu else 64
        heads = max(1, hidden // HEAD_DIM)
        num_classes = len(foreground_labels(self.dataset_json))
        lam, eta, lam_why = choose_lambda(self.rho, self.lambda_match)
        num_queries = self.rho * num_classes
        normalization, mask_for_norm = self.determine_normalization_scheme_and_whether_mask_is_used_for_norm()
        res_data, res_data_kw, res_seg, res_seg_kw = self.determine_resampling()
        res_prob, res_prob_kw = self.determine_segmentation_softmax_export_fn()
        widths = [min(base_width * 2 ** i, 320) for i in range(5)]
        median_shape = self.median_shape_at(spacing)
        anchors, anchor_cases = organ_anchor_boxes(fp, sorted(foreground_labels(self.dataset_json).values()),
                                                   transpose_forward, spacing, shape)
        plan = {
            "data_identifier": data_identifier,
            "preprocessor_name": self.preprocessor_name,
            "batch_size": batch_size,
            "patch_size": shape.tolist(),
            "input_shape": shape.tolist(),
            "median_image_size_in_voxels": median_shape.tolist(),
            "spacing": spacing.round(6).tolist(),
            "normalization_schemes": normalization,
            "use_mask_for_norm": mask_for_norm,
            "resampling_fn_data": res_data.__name__, "resampling_fn_seg": res_seg.__name__,
            "resampling_fn_data_kwargs": res_data_kw, "resampling_fn_seg_kwargs": res_seg_kw,
            "resampling_fn_probabilities": res_prob.__name__, "resampling_fn_probabilities_kwargs": res_prob_kw,
            "batch_dice": False,
            "architecture": {
                "network_class_name": "autoorgan.networks.organdetr.OrganDETR",
                "arch_kwargs": {
                    "backbone": "fpn", "backbone_widths": widths, "backbone_strides": [1, 2, 2, 2, 2],
                    "msa_levels": 3, "msa_patch_size": 2, "msa_depth": 2, "msa_dropout": 0.0,
                    "decoder_dropout": 0.0, "hidden_dim": hidden, "num_heads": heads,
                    "decoder_layers": 6 if on_gpu else 3, "decoder_points": 4, "num_queries": num_queries,
                    "num_classes": num_classes, "query_anchors": anchors, "iou_head": True,
                },
                "_kw_requires_import": [],
            },
            "organdetr": {
                "num_organ_classes": num_classes, "rho": self.rho, "lambda": lam, "eta": eta,
                "num_queries": num_queries, "matcher": "dqm", "fit": "isotropic",
                "loss_weights": {"cls": 2.0, "bbox_l1": 5.0, "giou": 2.0, "seg": 2.0, "no_object": 0.1, "iou": 1.0},
                "memory_target_gb": self.memory_gb, "planned_for": self.device,
            },
        }
        plan["_why"] = {
            "spacing": (f"nnU-Net 3d_fullres spacing {fullres.round(3).tolist()}" +
                        (f", coarsened {steps} times by {COARSEN_FACTOR} (finest axes first) so that the median body "
                         f"fits the budget" if steps else ", kept: the median body fits the budget")),
            "input_shape": (f"median body extent {extent_mm.round(1).tolist()} mm at that spacing, rounded up to a "
                            f"multiple of the backbone stride {BACKBONE_STRIDE}; the whole body-cropped volume is the "
                            "input (no patches): larger cases are cropped around the organs in training and "
                            "resampled to fit at inference"),
            "voxel_budget": (f"{self.memory_gb:g} GB {'GPU' if on_gpu else 'CPU'} memory target / (batch "
                             f"{batch_size} x base width {base_width} x {BYTES_PER_VOXEL_PER_WIDTH} B) = "
                             f"{budget / 1e6:.2f} M voxels"),
            "batch_size": "2 whole volumes per step (paper setting for the detectors compared)",
            "backbone_widths": f"{'GPU' if on_gpu else 'CPU'} plan: base width {base_width}, doubled per stage, "
                               "capped at 320 as nnU-Net",
            "hidden_dim": f"{'GPU' if on_gpu else 'CPU'} plan; heads = hidden/{HEAD_DIM} so every head has "
                          f"{HEAD_DIM} channels (the paper's 64 heads of 4 channels make weak attention logits; "
                          "train with --recipe paper for its numbers)",
            "msa": "paper: voxel patch size p = 2, depth 2, MSA on the 3 highest levels; dropout 0 in the MSA and the "
                   "decoder (the paper's 0.3 / 0.1 only slow a model that underfits in a short budget; --recipe paper "
                   "restores them)",
            "fit": "cases larger than the input are scaled by one factor on every axis (anatomy keeps its "
                   "proportions), in training and at inference",
            "num_organ_classes": f"M = {num_classes} foreground labels in dataset.json (each organ at most once per "
                                 f"case; fingerprint: max {fp['organs_per_case']['max']} and median "
                                 f"{fp['organs_per_case']['median']} organs present per case)",
            "rho": "queries per organ class" + (" (paper default 10)" if self.rho == PAPER_RHO else " (given)"),
            "num_queries": f"N = rho * M = {self.rho} * {num_classes}",
            "lambda": lam_why,
            "eta": f"eta = ceil(lambda * rho) = {eta} duplicates of each ground truth in DQM (rule of thumb: 1..5)",
            "query_anchors": (f"prior box of each organ (median over {min(anchor_cases)}-{max(anchor_cases)} cases "
                              "that hold it, placed in the input as inference places a case); query i starts at "
                              "the prior of organ i mod M, so each organ has rho queries where it usually lies "
                              "(random reference boxes started near the border: --no_query_anchors or --recipe "
                              "paper for the learned ones)"),
            "loss_weights": "paper: lambda_cls 2, lambda_bbox 5 (L1) with GIoU 2 as DETR, lambda_seg 2; ours: iou 1 "
                            "(BCE of the IoU head's prediction against each matched box's IoU)",
            "iou_head": "each query also predicts its box's IoU; an organ's box is chosen and scored by class "
                        "probability x predicted IoU, since the class probability alone is ~0.9-1 for every organ "
                        "whatever the box, and AP ranks boxes by score (--no_iou_head or --recipe paper: the "
                        "paper's class probability)",
        }
        return plan
