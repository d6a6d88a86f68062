"""Patch samples for the segmentation configurations (ccq, dodnet): nnU-Net's patch loader and augmentation.

Each training sample is one patch cropped the way nnunetv2's ``nnUNetDataLoader`` crops (its ``get_bbox`` and
``crop_and_pad_nd``), with **class-aware** foreground oversampling: with probability 33 % (nnU-Net's; the trainers'
``--oversample_foreground``) an organ class is drawn
uniformly among the classes that occur in some case, then a case containing it, and the patch is centred on one of
its voxels (nnU-Net draws the case first and then one of its classes, which starves organs annotated in few cases);
classes a case does not annotate are 0 in its label map, so oversampling only ever targets **annotated** organs.
Otherwise a random case and a random patch. Patches are augmented by nnU-Net's training transforms
(batchgeneratorsv2: rotation, scaling, noise, blur, brightness, contrast, low resolution, gamma; mirroring only
along the plans' ``mirror_axes``, none by default because left and right organs would swap; with ``lateral_pairs``
half the patches are mirrored along the patient's left-right axis and those label pairs swapped, so a mirrored
left parotid is trained as a right one). Sample ``g`` of a run is a pure function of ``(seed, g)`` (the random
generators are seeded per sample and restored afterwards), which gives exact resume as for Organ-DETR.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from autoorgan.planning.laterality import case_lateral_axis, swap_label_map

OVERSAMPLE_FOREGROUND = 0.33


class PatchStream(torch.utils.data.Dataset):
    """``num_samples`` patches ``{"image" [C, *patch], "seg" [1, *patch], "case_id"}`` by global index."""

    def __init__(self, folder: Path, identifiers: Sequence[str], plans: dict, configuration: str,
                 dataset_json: dict, seed: int, num_samples: int, mirror_axes: Sequence[int] = (),
                 oversample_foreground: float = OVERSAMPLE_FOREGROUND,
                 lateral_pairs: Sequence[Sequence[int]] | None = None):
        self.args = (str(folder), list(identifiers), plans, configuration, dataset_json, tuple(mirror_axes))
        self.seed, self.num_samples = int(seed), int(num_samples)
        self.oversample = float(oversample_foreground)
        # None: no left-right mirroring; else half the patches mirrored along the patient's left-right axis with
        # these (left, right) label pairs swapped (the sample says so: "mirrored", for the annotated classes)
        self.lateral_pairs = None if lateral_pairs is None else [tuple(int(v) for v in p) for p in lateral_pairs]
        self.transpose_forward = list(plans["transpose_forward"])
        self.lateral_axis = plans["configurations"][configuration].get("lateral_axis")   # None: older plans
        self._loader = None

    def _build(self):
        from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
        from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
        from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
        folder, ids, plans, configuration, dataset_json, mirror_axes = self.args
        pm = PlansManager(plans)
        cm = pm.get_configuration(configuration)
        lm = pm.get_label_manager(dataset_json)
        patch = list(cm.patch_size)
        rot = (-30. / 360 * 2. * np.pi, 30. / 360 * 2. * np.pi)
        initial = get_patch_size(patch, rot, rot, rot, (0.85, 1.25))
        tr = nnUNetTrainer.get_training_transforms(patch, rot, None, mirror_axes, False, cm.use_mask_for_norm,
                                                   False, lm.foreground_labels, None, None)
        self._data = nnUNetDatasetBlosc2(folder, ids)
        self._loader = nnUNetDataLoader(self._data, 1, initial, patch, lm, OVERSAMPLE_FOREGROUND,
                                        probabilistic_oversampling=True, transforms=tr)
        self._ids = list(ids)
        self._class_cases: dict[int, list[str]] = {}
        import pickle
        for ident in ids:
            with open(Path(folder) / f"{ident}.pkl", "rb") as fh:
                locs = pickle.load(fh).get("class_locations", {})
            for c, where in locs.items():
                if len(where):
                    self._class_cases.setdefault(int(c), []).append(ident)
        self._classes = sorted(self._class_cases)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, g: int) -> dict:
        if self._loader is None:
            self._build()
        from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
        rng = np.random.default_rng([self.seed, int(g)])
        force = bool(self._classes) and rng.random() < self.oversample
        if force:
            cls = self._classes[int(rng.integers(len(self._classes)))]
            ident = self._class_cases[cls][int(rng.integers(len(self._class_cases[cls])))]
        else:
            cls, ident = None, self._ids[int(rng.integers(len(self._ids)))]
        state = (np.random.get_state(), torch.get_rng_state(), random.getstate())
        s = int(rng.integers(2 ** 31))
        np.random.seed(s)
        torch.manual_seed(s)
        random.seed(s)
        try:
            data, seg, _, props = self._data.load_case(ident)
            lbs, ubs = self._loader.get_bbox(data.shape[1:], force, props["class_locations"], overwrite_class=cls)
            bbox = [[a, b] for a, b in zip(lbs, ubs)]
            image = torch.from_numpy(crop_and_pad_nd(data, bbox, 0)).float()
            labels = torch.from_numpy(crop_and_pad_nd(seg, bbox, -1, cast_cropped_to=np.int16)).to(torch.int16)
            out = self._loader.transforms(image=image, segmentation=labels)
        finally:
            np.random.set_state(state[0])
            torch.set_rng_state(state[1])
            random.setstate(state[2])
        image, seg, mirrored = out["image"], out["segmentation"], False
        if self.lateral_pairs is not None and rng.random() < 0.5:
            axis = case_lateral_axis(self.lateral_axis, props.get("sitk_stuff", {}).get("direction"),
                                     self.transpose_forward)
            if axis is not None:   # image [C, *patch], seg [1, *patch]: the same array axes as the case
                image = torch.flip(torch.as_tensor(image), (axis + 1,))
                seg = swap_label_map(torch.flip(torch.as_tensor(seg), (axis + 1,)), self.lateral_pairs)
                mirrored = True
        return {"image": image, "seg": seg, "case_id": ident, "index": int(g),
                "forced_class": -1 if cls is None else int(cls), "mirrored": mirrored}


def collate_patches(items: list[dict]) -> dict:
    return {"image": torch.stack([torch.as_tensor(i["image"]) for i in items]),
            "seg": torch.stack([torch.as_tensor(i["seg"]) for i in items]),
            "case_id": [i["case_id"] for i in items],
            "index": [int(i.get("index", -1)) for i in items],
            "forced_class": [int(i.get("forced_class", -1)) for i in items],
            "mirrored": [bool(i.get("mirrored", False)) for i in items]}


def choose_classes(label_values: Sequence[int], annotated: set[int], present: set[int], k: int,
                   rng: np.random.Generator, prefer: int | None = None) -> tuple[list[int], list[bool]]:
    """The ``k`` classes one patch is trained on (CCQ: one decoder pass per class, so not all ``K`` of them).

    Returns (indices into ``label_values`` ``[k]``, annotated flags ``[k]``). Only **annotated** classes are chosen:
    first one annotated class present in the patch (``prefer`` -- the class the patch was centred on -- if it is
    present, else a random present one), then the others uniformly among the remaining annotated classes, present
    or not (absent ones teach "nothing here" through BCE). Where the case annotates fewer than ``k`` classes the rest
    are filled with unannotated classes flagged ``False`` (the loss ignores them). The CCQ paper's training items are
    (image, one task) pairs, i.e. ``k = 1``.
    """
    values = list(label_values)
    ann = [v for v in values if v in annotated]
    chosen: list[int] = []
    pres = [v for v in ann if v in present]
    if pres and k > 0:
        chosen.append(prefer if prefer in pres else pres[int(rng.integers(len(pres)))])
    rest = [v for v in ann if v not in chosen]
    take = min(k - len(chosen), len(rest))
    if take > 0:
        chosen += [rest[int(i)] for i in rng.choice(len(rest), size=take, replace=False)]
    flags = [True] * len(chosen)
    fill = [v for v in values if v not in chosen]
    while len(chosen) < k:
        chosen.append(fill[len(chosen) % len(fill)] if fill else values[0])
        flags.append(False)
    return [values.index(v) for v in chosen], flags


def binary_targets(seg: torch.Tensor, label_values: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Label maps ``[B, 1, ...]`` -> per-class binary targets ``[B, K, ...]`` (float) for ``label_values``: a list
    ``[K]`` (the same classes for every patch) or a tensor ``[B, K]`` (label values per patch)."""
    values = torch.as_tensor(label_values, device=seg.device)
    values = values.view(1, -1) if values.ndim == 1 else values           # [1 or B, K]
    values = values.view(*values.shape, *([1] * (seg.ndim - 2)))
    return (seg.long() == values).float()
