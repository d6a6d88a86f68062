"""Planner of the ``ccq`` configuration (patch-based partially labeled segmentation, CCQ paper).

Spacing, patch size, batch size and the U-Net topology come from nnunetv2's 3d_fullres planning unchanged; we add
the number of class queries (paper: N_q = 32) and the member datasets / annotation sets with their classes.
"""
from __future__ import annotations

import numpy as np

from autoorgan.dataset.raw import annotated_labels, annotation_sets, foreground_labels
from autoorgan.planners.base import AutoOrganPlannerBase
from autoorgan.planning.laterality import lateral_pairs, plan_lateral_axis

NUM_CLASS_QUERIES = 32  # CCQ paper, N_q
# CPU plan (-device cpu, or no GPU visible): nnU-Net's planner with narrower stages and a smaller memory budget, so a
# training step of batch 2 takes about a second on 2 cores instead of a minute (nnU-Net's GPU plan: width 32-320,
# 8 GB; on OpenKBP patch 128x112x64, batch 6). Wider CPU networks did not pay at equal wall clock: masked_sigmoid on
# OpenKBP, 60 minutes, widths 12-192 and 16-256 (autoorgan_train --base_width) reached mean Dice 0.709 and 0.706 against
# 0.711 / 0.714 with 8-128 (docs/ccq.md)
CPU_BASE_FEATURES, CPU_MAX_FEATURES, CPU_MEMORY_TARGET_GB = 8, 128, 0.25
TRAIN_CLASSES_PER_PATCH = 2  # classes decoded per training patch (one present in it + one other annotated)
# masked_sigmoid on a CPU plan: organ-centred patches that hold the largest organ whole (its 95th-percentile box), every
# patch on an organ, deep supervision. On OpenKBP (30 min, 2 cores) this recipe reached mean Dice 0.644 with
# each organ's largest component against 0.093 for nnU-Net's patch and sampling, which a CPU steps through 4x slower
# (docs/ccq.md)
ORGAN_PATCH_PERCENTILE = "p95"
CPU_OVERSAMPLE_FOREGROUND = 1.0


class CCQPlanner(AutoOrganPlannerBase):
    configuration_name = "ccq"

    def annotation_members(self) -> list[dict]:
        """Groups of cases that annotate the same labels (the member datasets of a merged dataset)."""
        ds = self.dataset_json
        names = {v: k for k, v in foreground_labels(ds).items()}
        set_names = {tuple(v): k for k, v in annotation_sets(ds).items()}
        groups: dict[tuple, list[str]] = {}
        for case in self.dataset:
            groups.setdefault(tuple(annotated_labels(ds, case)), []).append(case)
        out = []
        for labels, cases in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            out.append({"name": set_names.get(labels, "+".join(names[v] for v in labels)),
                        "labels": [names[v] for v in labels], "num_cases": len(cases)})
        return out

    def plan_configuration(self, data_identifier: str) -> dict:
        on_cpu = self.device != "cuda"
        if on_cpu:
            self.UNet_base_num_features, self.UNet_max_features_3d = CPU_BASE_FEATURES, CPU_MAX_FEATURES
            self.UNet_vram_target_GB = float(self.options.get("cpu_memory_target_in_gb", CPU_MEMORY_TARGET_GB))
        spacing = self.fullres_spacing_transposed()
        median_shape = self.median_shape_at(spacing)
        n_vox = float(np.prod(median_shape, dtype=np.float64) * self.dataset_json["numTraining"])
        plan = self.get_plans_for_configuration(spacing, median_shape, data_identifier, n_vox, {})
        members = self.annotation_members()
        plan["batch_dice"] = False
        # nnU-Net's U-Net topology (arch_kwargs) is the encoder/decoder; the network built is CCQ (DoDNet's trainer
        # writes its own name into its model folder's plans)
        plan["architecture"]["network_class_name"] = "autoorgan.networks.ccq.CCQ"
        plan["planned_for"] = "cpu" if on_cpu else "cuda"
        plan["ccq"] = {"num_class_queries": NUM_CLASS_QUERIES, "members": members,
                       "classes": list(foreground_labels(self.dataset_json)),
                       "combine_threshold": 0.5, "train_classes_per_patch": TRAIN_CLASSES_PER_PATCH,
                       "dynamic_head": True, "bottleneck_skip": True}
        plan["masked_sigmoid"] = self.masked_sigmoid_recipe(plan, on_cpu)
        pairs = lateral_pairs(foreground_labels(self.dataset_json))
        plan["lateral_pairs"] = [list(p) for p in pairs]
        plan["lateral_axis"], lateral_why = plan_lateral_axis(self.autoorgan_fingerprint.get("cases", {}), pairs,
                                                              self.determine_transpose()[0])
        plan["_why"] = {
            "spacing": "nnU-Net 3d_fullres target spacing (median spacing; 10th percentile on a strongly "
                       "anisotropic axis)",
            "patch_size": f"nnU-Net 3d_fullres patch size for a {self.UNet_vram_target_GB:g} GB memory target and "
                          f"median shape {median_shape.tolist()} at that spacing" +
                          (f" (CPU plan: stage widths {CPU_BASE_FEATURES}-{CPU_MAX_FEATURES} instead of 32-320 and "
                           "a small budget, so that a training step of batch 2 takes about a second on 2 CPU cores; "
                           "plan with -device cuda for a GPU)" if on_cpu else ""),
            "batch_size": "nnU-Net 3d_fullres batch size (memory target, at most 5% of the dataset per step)",
            "num_class_queries": "CCQ paper: N_q = 32 learned semantic concepts",
            "members": f"{len(members)} group(s) of cases by annotated labels; each case's loss uses only its "
                       "annotated classes",
            "train_classes_per_patch": "CCQ decodes every class separately; training decodes 2 annotated classes "
                                       "per patch (one present in it, one other at random; the paper trains on "
                                       "(image, one task) pairs), inference all of them. DoDNet trains all classes",
            "lateral_pairs": "left/right organs by their label names (Left*/Right*, *_left/*_right, *_L/*_R): "
                             "test-time mirroring (autoorgan_predict --tta) flips the scan along the patient's "
                             "left-right axis and swaps these labels' probabilities, and autoorgan_train "
                             "--lateral_mirror mirrors training patches so; list other pairs here by hand",
            "lateral_axis": lateral_why,
            "combine_threshold": "inference: a voxel takes the most probable class if that probability is > 0.5",
            "dynamic_head": "DoDNet's task-conditioned head ends the decoder, as in the CCQ authors' code (CCQ is "
                            "built on DoDNet); false: one static head for all classes (ablation)",
            "bottleneck_skip": "true: the encoder's last map joins the class queries' map Q_d through an attentive "
                               "skip (eq. 5) like every other encoder stage; the paper's decoder starts from Q_d "
                               "alone (set false to reproduce it), which left the query branch ~1e-6 of the "
                               "decoder's gradient and OpenKBP mean Dice at 0.089 vs 0.237 with the skip (docs/ccq.md)",
        }
        return plan

    def organ_patch_size(self, spacing_transposed: np.ndarray, strides: np.ndarray) -> tuple[list[int], str] | None:
        """Smallest patch (multiples of the network's total ``strides`` per axis, preprocessed axis order) that holds
        the largest organ's 95th-percentile box; the largest organ is the one with the largest median box volume
        (fingerprint, mm). Returns the patch and the organ's name; None when no case contains an organ."""
        classes = self.autoorgan_fingerprint.get("classes", {})
        present = {k: v for k, v in classes.items() if v.get("num_cases_present")}
        if not present:
            return None
        name = max(present, key=lambda k: float(np.prod(present[k]["box_extent_mm"]["median"])))
        transpose_forward, _ = self.determine_transpose()
        extent_mm = np.asarray(present[name]["box_extent_mm"][ORGAN_PATCH_PERCENTILE], np.float64)[transpose_forward]
        patch = np.ceil(extent_mm / spacing_transposed / strides) * strides
        return [int(v) for v in np.maximum(patch, strides)], name

    def masked_sigmoid_recipe(self, plan: dict, on_cpu: bool) -> dict:
        """The masked_sigmoid configuration's training recipe (its trainer's defaults; command-line options
        override them): patch, fraction of organ-centred patches (absent: the trainer's, nnU-Net's 33 %), deep
        supervision, and the post-processing its predictions get, each with its reason."""
        strides = np.prod(np.asarray(plan["architecture"]["arch_kwargs"]["strides"], np.int64), axis=0)
        planned = np.asarray(plan["patch_size"], np.int64)
        organ_patch = self.organ_patch_size(np.asarray(plan["spacing"], np.float64), strides) if on_cpu else None
        if organ_patch is None:
            # the organ-centred fraction is the trainer's default (nnU-Net's 33 %)
            return {"patch_size": planned.tolist(), "deep_supervision": True, "components": "all",
                    "_why": {"patch_size": "the planned nnU-Net patch" + (" (GPU plan)" if not on_cpu else ""),
                             "deep_supervision": "nnU-Net's deep supervision",
                             "components": "label maps as predicted (patches off organs are trained too); "
                                           "autoorgan_predict --components largest|located to compare"}}
        organ_size, organ = organ_patch
        patch = np.minimum(organ_size, planned)
        return {"patch_size": patch.tolist(), "oversample_foreground": CPU_OVERSAMPLE_FOREGROUND,
                "deep_supervision": True, "components": "located",
                "_why": {
                    "patch_size": f"CPU plan: the smallest patch (multiples of the total strides {strides.tolist()}) "
                                  f"that holds the largest organ ({organ}, by median box volume) whole in 95 % of "
                                  f"cases: {organ_size}, at most the planned {planned.tolist()}; a step takes a "
                                  "fraction of the planned patch's time, so a CPU hour sees several times more organs",
                    "oversample_foreground": "CPU plan: every patch centred on an organ (an organ drawn uniformly, "
                                             "then a case annotating it), so the thin, rarely annotated organs are "
                                             "seen as often as the others",
                    "components": "prediction keeps one component per organ, the one nearest where the organ "
                                  "lies in the training cases: a model that never saw a patch without organs leaves "
                                  "islands far from them, and an organ-sized patch cannot tell left from right "
                                  "(OpenKBP, 30 min: mean Dice 0.489 as predicted, 0.578 largest component, 0.694 "
                                  "located; HD95 149 / 42 / 10 mm; autoorgan_predict --components all|largest)",
                    "deep_supervision": "nnU-Net's deep supervision; without it the thinnest organs (OpenKBP "
                                        "Esophagus, Larynx) were not learned in 30 CPU minutes (docs/ccq.md)"}}
